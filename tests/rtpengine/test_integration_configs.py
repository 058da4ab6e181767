"""The routing script in docs/integrations is checked by the real Kamailio (``kamailio -c``:
modules load, every function and parameter exists, the script parses). Skipped with a reason
when Debian's kamailio package is not installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs" / "integrations"
KAMAILIO = shutil.which("kamailio") or shutil.which("kamailio", path="/usr/sbin:/sbin")
MODULES = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")

needs_kamailio = pytest.mark.skipif(
    KAMAILIO is None or not (MODULES / "http_client.so").exists(),
    reason="kamailio with http_client is not installed (Debian packages kamailio and "
           "kamailio-utils-modules; scripts/test installs them)")


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KAMAILIO, "-c", "-f", str(path)], capture_output=True, text=True,
                          timeout=30, check=False)


@needs_kamailio
def test_kamailio_cfg_passes_kamailio_check():
    result = check(DOCS / "kamailio.cfg")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "config file ok" in (result.stdout + result.stderr).lower()


@needs_kamailio
def test_the_check_catches_a_broken_script(tmp_path):
    """The check above can fail: a misspelt function is refused."""
    text = (DOCS / "kamailio.cfg").read_text().replace("rtpengine_answer(", "rtpengine_answr(")
    broken = tmp_path / "kamailio.cfg"
    broken.write_text(text)
    result = check(broken)
    assert result.returncode != 0 and "rtpengine_answr" in result.stderr


def test_kamailio_doc_includes_the_checked_script():
    """kamailio.md shows the very file that is checked, not a drifting copy."""
    doc = (DOCS / "kamailio.md").read_text()
    assert "kamailio.cfg" in doc
    for line in ("rtpengine_offer(", "http_connect_raw(", '"inbound_tag'):
        assert line in (DOCS / "kamailio.cfg").read_text()
