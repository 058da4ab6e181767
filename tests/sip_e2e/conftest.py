"""Fixtures for the SIPREC end-to-end tests: an engine, recorder sockets, sipp processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mediafork.engine import Engine

from .harness import SIPP, Recorder, Sipp


@pytest.fixture
def engine() -> Iterator[Engine]:
    e = Engine(port_range=(36000, 36999))
    yield e
    e.close()


@pytest.fixture
def recorders() -> Iterator[Callable[..., Recorder]]:
    made: list[Recorder] = []

    def make(ip: str = "127.0.0.1") -> Recorder:
        made.append(Recorder(ip))
        return made[-1]

    yield make
    for r in made:
        r.close()


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
