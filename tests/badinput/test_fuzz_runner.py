"""The long-run fuzz driver (``python -m fuzz.run``, used by scripts/fuzz) works and reports
findings: a short coverage-guided run, and a planted bug that must be caught."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
needs_atheris = pytest.mark.skipif(importlib.util.find_spec("atheris") is None,
                                   reason="atheris is not installed (pip install atheris)")


def _run(*args: str, planted: bool = False, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MEDIAFORK_FUZZ_PLANTED": "1" if planted else "0"}
    return subprocess.run([sys.executable, "-m", "fuzz.run", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@needs_atheris
def test_atheris_run_grows_a_corpus(tmp_path: Path) -> None:
    result = _run("sdp", "2", "--corpus", str(tmp_path / "corpus"),
                  "--artifacts", str(tmp_path / "artifacts"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "DONE" in result.stderr
    assert len(list((tmp_path / "corpus").iterdir())) > len(["seed1", "seed2"])
    assert not (tmp_path / "artifacts").exists() or not any((tmp_path / "artifacts").iterdir())


@needs_atheris
def test_atheris_reports_a_planted_bug(tmp_path: Path) -> None:
    result = _run("planted", "20", "--corpus", str(tmp_path / "corpus"),
                  "--artifacts", str(tmp_path / "artifacts"), planted=True)
    assert result.returncode != 0, result.stderr[-2000:]
    assert "planted bug" in result.stdout + result.stderr
    assert list((tmp_path / "artifacts").glob("planted-crash-*"))


def test_hypothesis_fallback_reports_a_planted_bug() -> None:
    result = _run("planted", "5", "--hypothesis", planted=True)
    assert result.returncode != 0 and "planted bug" in result.stdout + result.stderr
