"""Several media workers: calls spread over independent C engines (one thread each); SRTP,
events, counters, pause and teardown behave as with one, and nothing is shared per packet."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Iterator

import pytest

from mediafork.engine import Engine, EngineError, SrtpKey, Track, is_rtcp

from .conftest import dead_address, eventually, header, recv_all, rtp, send_until_event
from .test_forwarding import receiver_for


@pytest.fixture
def engine2() -> Iterator[Engine]:
    e = Engine(port_range=(35000, 36999), workers=2)
    yield e
    e.close()


def test_calls_spread_over_workers_and_each_decrypts(engine2: Engine, sender) -> None:
    calls, forks, keys, sinks = [], [], [], []
    try:
        for i in range(6):
            call = engine2.add_call(f"CA-w{i}")
            sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sink.bind(("127.0.0.1", 0))
            key = SrtpKey.generate()
            forks.append(call.add_fork(Track.INBOUND, key=key, destination=sink.getsockname()))
            calls.append(call)
            keys.append(key)
            sinks.append(sink)
        assert sorted(c.worker for c in calls) == [0, 0, 0, 1, 1, 1]
        for i, call in enumerate(calls):
            for n in range(10):
                payload = bytes([i * 16 + n]) * 160
                sender.sendto(rtp(n, n * 160, payload), call.ingress[Track.INBOUND])
        for i, (sink, key, fork) in enumerate(zip(sinks, keys, forks, strict=True)):
            got = [p for p in recv_all(sink, 10) if not is_rtcp(p)]
            rx = receiver_for(key)
            plain = [rx.unprotect(p) for p in got]
            assert [p[12:] for p in plain] == [bytes([i * 16 + n]) * 160 for n in range(10)]
            assert {header(p)[4] for p in plain} == {fork.ssrc}
        counters = engine2.counters()
        assert counters["calls"] == 6 and counters["forks"] == 6
        eventually(lambda: engine2.totals().get("fork_sent", 0) == 60)
        assert engine2.worker_cpu_seconds() > 0
    finally:
        for sink in sinks:
            sink.close()


def test_a_freed_worker_takes_the_next_call(engine2: Engine) -> None:
    a = engine2.add_call("CA-a", ingress=False)
    b = engine2.add_call("CA-b", ingress=False)
    assert {a.worker, b.worker} == {0, 1}
    freed = a.worker
    a.close()
    assert engine2.add_call("CA-c", ingress=False).worker == freed


def test_events_come_from_every_worker(engine2: Engine, sender) -> None:
    engine2.add_call("CA-first", ingress=True)  # takes worker 0
    call = engine2.add_call("CA-second")
    assert call.worker == 1
    fork = call.add_fork(Track.INBOUND, destination=dead_address())
    events = send_until_event(engine2, sender, call, "send_error")
    assert events and events[0].call_sid == "CA-second" and events[0].fork_id == fork.id
    assert events[0].value == errno.ECONNREFUSED
    assert len(engine2.event_fds) == 2 and len(set(engine2.event_fds)) == 2


@pytest.mark.parametrize("workers", [1, 2])
def test_settled_awaits_queued_changes_on_every_worker(workers: int, sink) -> None:
    """``await engine.settled()`` returns only once every queued command is applied, on
    every worker, without blocking the loop: after a queued pause settles, no pushed
    packet leaves the fork (placed on the last worker)."""
    with Engine(port_range=(35000, 36999), workers=workers) as engine:
        for i in range(workers - 1):
            engine.add_call(f"CA-filler-{i}", ingress=False)
        call = engine.add_call("CA-settled", ingress=False)
        assert call.worker == workers - 1
        fork = call.add_fork(Track.INBOUND, destination=sink.getsockname())

        async def main() -> None:
            for _ in range(100):  # a queue long enough that the worker is still busy with it
                fork.pause(wait=False)
                fork.resume(wait=False)
            fork.pause(wait=False)
            await engine.settled()
            assert all(c.applied(c.last_ticket()) for c in engine._cores)
            for seq in range(20):
                call.push(Track.INBOUND, rtp(seq, seq * 160))

        asyncio.run(main())
        assert recv_all(sink, 1, timeout=0.2) == []
        assert fork.counters()["sent"] == 0


@pytest.mark.parametrize("workers", [0, 65, 1.5, "2", True])
def test_worker_count_is_checked(workers: object) -> None:
    with pytest.raises(EngineError, match="workers"):
        Engine(workers=workers)  # type: ignore[arg-type]


def test_an_inline_engine_has_one_worker() -> None:
    with pytest.raises(EngineError, match="single worker"):
        Engine(threaded=False, workers=2)
