"""Fixtures: one loop thread, callback receiver, set of recorders and server per test module."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import LoopThread, Receiver, Recorders, Server, load  # noqa: E402


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
def recorders(loop_thread: LoopThread, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[Recorders]:
    started = Recorders.start(loop_thread, tmp_path_factory.mktemp("srs"))
    yield started
    started.stop()


@pytest.fixture(scope="module")
def server(loop_thread: LoopThread, recorders: Recorders,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(load(tmp_path_factory.mktemp("api"), recorders), loop_thread)
    yield srv
    srv.close()
