"""Fixtures for the rtpengine tests: a real rtpengine per test (skipped with a reason when
Debian's rtpengine-daemon is not installed) and an asyncio runner with a bound."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from .harness import RTPENGINE, Rtpengine

T = TypeVar("T")


@pytest.fixture
def rtpengine_factory(tmp_path: Path) -> Iterator[Callable[..., Rtpengine]]:
    if RTPENGINE is None:
        pytest.skip("rtpengine is not installed (Debian package rtpengine-daemon; "
                    "scripts/test installs it)")
    started: list[Rtpengine] = []

    def make(**kwargs: Any) -> Rtpengine:
        daemon = Rtpengine(tmp_path, **kwargs)
        started.append(daemon)
        daemon.start()
        return daemon

    yield make
    for daemon in started:
        daemon.stop()


@pytest.fixture
def rtpengine(rtpengine_factory: Callable[..., Rtpengine]) -> Rtpengine:
    return rtpengine_factory()


def run(coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
    """Run one test coroutine, bounded."""
    return asyncio.run(asyncio.wait_for(coro, timeout))
