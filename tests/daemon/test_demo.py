"""`mediafork demo` (what scripts/demo runs) end to end, as a script or CI would run it:
output to a pipe, files kept with --keep."""

from __future__ import annotations

import re
import subprocess
import sys
import wave
from pathlib import Path

import pytest


@pytest.mark.timeout(120)
def test_demo_passes_keeps_its_wav_files_and_prints_their_paths(tmp_path):
    keep = tmp_path / "kept"
    done = subprocess.run(
        [sys.executable, "-m", "mediafork.cli", "demo", "--seconds", "1.5", "--keep", str(keep)],
        cwd=tmp_path, capture_output=True, text=True, timeout=100)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "result: all checks passed" in out
    # Not a terminal: plain progress lines, no carriage-return animation.
    assert "\r" not in out
    assert re.search(r"^  live: 3 calls, \d+ packets forked", out, re.M), out
    printed = [Path(p) for p in re.findall(r"(/\S+\.wav) \(", out)]
    assert len(printed) == 5, out  # two tracks, two tracks, one track
    for path in printed:
        assert path.is_relative_to(keep.resolve()) and path.is_file(), path
        with wave.open(str(path)) as wav:
            assert wav.getnframes() > 8000 * 1.0  # over a second of audio at 8 kHz
    assert {p.parent.name for p in printed} == {"plain-both", "secure-both", "inbound-only"}
