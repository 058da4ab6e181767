"""Fixtures: one loop thread, one callback receiver and one server per test module."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import LoopThread, Receiver, Server, load  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fake_links: uses the in-test RecorderLinks; switch to SipRecorderLinks")


@pytest.fixture(scope="module")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.stop()


@pytest.fixture(scope="module")
def receiver(loop_thread: LoopThread) -> Iterator[Receiver]:
    rec = Receiver(loop_thread.loop)
    loop_thread.run(rec.start())
    yield rec
    loop_thread.run(rec.stop())


@pytest.fixture(scope="module")
def server(loop_thread: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(load(tmp_path_factory.mktemp("api")), loop_thread)
    yield srv
    srv.close()
