"""The README's examples are kept true: its TOML parses with the real config
loader, and its embedding example runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from mediafork.daemon.config import parse_config

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_readme_config_example_parses(monkeypatch, tmp_path) -> None:
    import tomllib

    toml, media_sources = _blocks("toml")
    (source,) = parse_config(tomllib.loads(media_sources), tmp_path).media_sources
    assert (source.name, source.kind, source.ng) == ("rtpengine1", "rtpengine",
                                                     ("127.0.0.1", 22222))
    monkeypatch.setenv("MEDIAFORK_TOKEN", "t" * 32)
    monkeypatch.setenv("GRIDSPACE_TOKEN", "g" * 32)
    config = parse_config(tomllib.loads(toml), tmp_path)
    (connector,) = config.connectors
    assert connector.unique_name == "Gridspace_1"
    assert connector.credentials == "g" * 32
    assert config.accounts[0].auth_token == "t" * 32


def test_readme_embedding_example_runs(tmp_path) -> None:
    embedding = next(b for b in _blocks("python") if "Engine(" in b)
    result = subprocess.run([sys.executable, "-c", embedding], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "1"]
