"""`mediafork demo --rtpengine` (the demo with rtpengine as the platform's media proxy), as
a script would run it; and its clear skip when rtpengine is not installed."""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import sys

import pytest

from mediafork.daemon import demo

from .harness import RTPENGINE


@pytest.mark.timeout(120)
def test_demo_with_rtpengine_passes(tmp_path):
    if RTPENGINE is None:
        pytest.skip("rtpengine is not installed (Debian package rtpengine-daemon)")
    done = subprocess.run(
        [sys.executable, "-m", "mediafork.cli", "demo", "--rtpengine", "--seconds", "1.5"],
        cwd=tmp_path, capture_output=True, text=True, timeout=100,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    pid = int(re.search(r"rtpengine \(pid (\d+)\)", out).group(1))
    assert "result: all checks passed" in out
    # Each party's tone in its own recording, through rtpengine and mediafork.
    for first, second in ((440, 1000), (660, 1500)):
        assert re.search(rf"1\.wav \([\d.]+s, {first} Hz\), 2\.wav \([\d.]+s, {second} Hz\)",
                         out), out
    assert not os.path.exists(f"/proc/{pid}"), "the demo's rtpengine is still running"


def test_demo_with_rtpengine_absent_says_so(monkeypatch):
    monkeypatch.setattr(demo, "find_rtpengine", lambda: None)
    out = io.StringIO()
    assert asyncio.run(demo.run(out=out, rtpengine=True)) == 0
    assert "demo --rtpengine skipped: rtpengine is not installed" in out.getvalue()
