"""A release installs and runs: `python -m build` makes an sdist and a wheel (the wheel
built from the sdist, as PyPI users would get it), and each installs in a fresh virtualenv
with only the runtime dependencies and forwards SRTP that pylibsrtp decrypts."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# Runs inside the fresh virtualenv: the embedding API end to end, no test extras.
SMOKE = r"""
import socket, struct, sys
from pylibsrtp import Policy, Session
import mediafork
from mediafork import Engine, SrtpKey, Track

recorder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
recorder.bind(("127.0.0.1", 0))
recorder.settimeout(5)
with Engine(media_address="127.0.0.1", port_range=(41000, 41099)) as engine:
    call = engine.add_call("CA" + "0" * 32)
    key = SrtpKey.generate()
    call.add_fork(Track.INBOUND, key=key, destination=recorder.getsockname())
    packet = struct.pack("!BBHII", 0x80, 0, 1, 160, 0x1234) + b"\xd5" * 160
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.sendto(packet, call.ingress[Track.INBOUND])
    rx = Session(Policy(key=key.master, ssrc_type=Policy.SSRC_ANY_INBOUND))
    assert rx.unprotect(recorder.recv(2048))[12:] == packet[12:]
    sender.close()
recorder.close()
print("smoke ok", mediafork.__version__, mediafork.__file__)
"""


def _run(*argv: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert done.returncode == 0, f"{argv[:3]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "build", "--outdir", out, ROOT)
    (sdist,) = out.glob("mediafork-*.tar.gz")
    (wheel,) = out.glob("mediafork-*.whl")
    return {"sdist": sdist, "wheel": wheel}


def test_sdist_has_what_a_build_needs_and_no_build_output(dists):
    with tarfile.open(dists["sdist"]) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for needed in ("LICENSE", "CHANGELOG.md", "README.md", "setup.py", "pyproject.toml",
                   "mediafork/media/_fastpath.pyx", "mediafork/media/_cengine.pxd",
                   "csrc/ring.h", "csrc/engine.h", "csrc/worker.c"):
        assert needed in names, f"sdist lacks {needed}"
    tracked = subprocess.run(["git", "ls-files", "csrc"], cwd=ROOT, capture_output=True,
                             text=True).stdout.split()
    for source in tracked:
        if source.endswith((".c", ".h")) and not source.startswith("csrc/fuzz/"):
            assert source in names, f"sdist lacks {source}"
    assert not [n for n in names if n.endswith((".so", ".o"))], "build output in the sdist"
    assert "mediafork/media/_fastpath.c" not in names, "generated C in the sdist"


def test_wheel_carries_the_extension_and_the_license(dists):
    with zipfile.ZipFile(dists["wheel"]) as whl:
        names = whl.namelist()
    assert any(n.startswith("mediafork/media/_fastpath") and n.endswith(".so") for n in names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith("LICENSE")
               for n in names)


@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_installs_in_a_fresh_virtualenv_and_runs(dists, kind, tmp_path):
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    _run(python, "-m", "pip", "install", "-q", dists[kind])
    # Runtime dependencies only: nothing from the test extras came along.
    installed = _run(python, "-m", "pip", "list", "--format=freeze").lower()
    for extra in ("pytest", "twilio", "schemathesis", "hypothesis"):
        assert f"\n{extra}==" not in f"\n{installed}", f"{extra} installed with the runtime"
    version = _run(venv / "bin" / "mediafork", "--version").strip()
    assert version.startswith("mediafork ") and version.split()[1][0].isdigit(), version
    out = _run(python, "-c", SMOKE, cwd=tmp_path)  # not from the checkout
    assert "smoke ok" in out and str(venv) in out, out
