"""Fixtures for the daemon tests: a reference recorder, a callback sink, daemon processes
that are always reaped."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fdcheck import DescriptorCheck

from .harness import CallbackSink, DaemonProcess, Recorder


@pytest.fixture(autouse=True)
def descriptors_released() -> Iterator[None]:
    """The daemon runs in a child process, but what the test process opens for it (the
    child's output files, the recorder and its sessions, the callback sink, HTTP clients)
    must be closed once the other fixtures are torn down (autouse: set up first, torn down
    last)."""
    check = DescriptorCheck("daemon test")
    yield
    check.assert_released()


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[Recorder]:
    rec = Recorder(tmp_path / "srs")
    yield rec
    rec.close()


@pytest.fixture
def sink() -> Iterator[CallbackSink]:
    s = CallbackSink()
    yield s
    s.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """``spawn(args, env=...)`` → a DaemonProcess (not yet started); killed at teardown
    if a test left it running, so a failing test never leaks a process."""
    made: list[DaemonProcess] = []

    def factory(args: list[str], env: dict[str, str] | None = None, **_: Any) -> DaemonProcess:
        daemon = DaemonProcess(tmp_path, args, env)
        made.append(daemon)
        return daemon

    yield factory
    for daemon in made:
        daemon.kill()
