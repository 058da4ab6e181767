"""The I/O backend choice: named, validated, visible, and released with the engine."""

from __future__ import annotations

import logging
import socket
import statistics
import time

import pytest

from mediafork.engine import Engine, EngineError, Track
from tests.io_uring_support import IO_URING_REFUSED, auto_backend

from .conftest import open_descriptors, rtp


def test_the_engine_uses_the_backend_asked_for(io_backend: str) -> None:
    with Engine(port_range=(36000, 36099)) as e:
        assert e.io_backend == io_backend
        assert e.workers == 1


def test_auto_prefers_io_uring_and_logs_the_choice(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mediafork.engine"), \
            Engine(io="auto", port_range=(36000, 36099)) as e:
        expected = "epoll" if IO_URING_REFUSED else "io_uring"
        assert e.io_backend == expected
    [line] = [r.getMessage() for r in caplog.records if "media I/O backend" in r.getMessage()]
    assert line.startswith(f"media I/O backend: {expected}")


def test_auto_resolves_to_io_uring_where_the_kernel_allows_it() -> None:
    with Engine(io="auto", port_range=(36000, 36099)) as e:
        assert e.io_backend == auto_backend()


def test_the_default_is_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    """The autouse fixture pins every test to one backend; undo that to see the default."""
    monkeypatch.undo()
    assert Engine.__init__.__kwdefaults__["io"] == "auto"
    with Engine(port_range=(36000, 36099)) as e:
        assert e.io_backend == auto_backend()


def test_bad_backend_and_tick_are_refused_before_anything_is_made() -> None:
    before = open_descriptors()
    with pytest.raises(EngineError, match="io must be one of"):
        Engine(io="kqueue")
    with pytest.raises(EngineError, match="tick must be between"):
        Engine(tick=0.5)
    assert open_descriptors() == before


def test_each_worker_has_its_own_backend_and_gives_it_back(io_backend: str) -> None:
    """A ring (or epoll set) per worker; closing the engine closes its descriptors (the
    autouse descriptor check after the test) whatever the backend."""
    before = open_descriptors()
    e = Engine(workers=2, port_range=(36000, 36099))
    assert e.io_backend == io_backend
    assert open_descriptors() > before
    e.close()
    assert open_descriptors() == before


def _lag_after_bursts(tick: float, sink: socket.socket, sender: socket.socket, calls: int) -> float:
    """Median ms from the end of a burst (one packet to each of ``calls`` calls) until
    the sink has every forwarded copy, over eight bursts."""
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sink.settimeout(2.0)
    lags = []
    with Engine(tick=tick, port_range=(40000, 43999)) as e:
        made = [e.add_call(f"CA-burst-{i}") for i in range(calls)]
        for c in made:
            c.add_fork(Track.INBOUND, destination=sink.getsockname())
        for burst in range(8):
            for c in made:
                sender.sendto(rtp(burst, burst * 160), c.ingress[Track.INBOUND])
            sent = time.monotonic()
            for _ in range(calls):
                sink.recv(2048)
            lags.append((time.monotonic() - sent) * 1e3)
            time.sleep(0.02)
        for c in made:
            c.close()
    return statistics.median(lags)


def test_a_tick_is_not_added_once_per_batch_of_ready_sockets(sink: socket.socket,
                                                              sender: socket.socket) -> None:
    """A wake hands over a bounded number of sockets (epoll: 16; io_uring: the kernel runs
    at most 20 sockets' receive work per enter). When more were ready, the worker must
    wake again at once rather than pause its tick first: 400 sockets ready together
    would otherwise wait 20 ticks (a 1 ms tick measured 6.9 ms median against 0.9 ms
    without a tick). Compared with the same burst at tick 0, so machine speed cancels."""
    calls = 400
    without = _lag_after_bursts(0.0, sink, sender, calls)
    with_tick = _lag_after_bursts(0.001, sink, sender, calls)
    assert with_tick < without + 3.0, (with_tick, without)
