"""Fixtures for the fault matrix: a healthy reference recorder factory and sipp."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import SIPP, Sipp


@pytest.fixture
def sipp(tmp_path: Path) -> Iterator[Callable[..., Sipp]]:
    if SIPP is None:
        pytest.skip("sipp is not installed (Debian package sip-tester; scripts/test installs it)")
    started: list[Sipp] = []

    def start(scenario: str, **kwargs: Any) -> Sipp:
        started.append(Sipp(scenario, tmp_path, **kwargs))
        return started[-1]

    yield start
    for s in started:
        s.kill()
