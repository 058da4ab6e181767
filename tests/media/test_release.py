"""Deterministic release: a closed fork or call gives back its sockets, ports, rings and
SRTP contexts before ``close()`` returns, never later when the garbage collector runs.

Each test runs with the collector disabled on a 40-port range: a single leaked fork or
call would exhaust it within a few dozen cycles ("no free media ports"). The closed
objects are kept (an application reads their final counters), so nothing is freed by a
reference count dropping either.
"""

from __future__ import annotations

import contextlib
import gc
import secrets
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from mediafork.engine import Engine, EngineError, SrtpKey, Track
from mediafork.media.sockets import PortAllocator, PortsExhausted

from .conftest import open_descriptors, recv_all, rtp

CYCLES = 1000
PACKET = np.frombuffer(rtp(1, 160) * 8, dtype=np.uint8)
OFFSETS = np.arange(8, dtype=np.uint32) * (len(PACKET) // 8)
LENGTHS = np.full(8, len(PACKET) // 8, dtype=np.uint32)


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def small_range() -> tuple[int, int]:
    # 40 ports below the kernel's ephemeral range, apart from the other suites' windows;
    # the allocator skips a port someone else holds, and a cycle needs at most 4.
    first = 12000 + secrets.randbelow(190) * 40
    return first, first + 39


def test_fork_cycles_give_ports_back_at_once(no_gc, sink, sender) -> None:
    with Engine(port_range=small_range()) as engine:
        call = engine.add_call("CA-fork-cycles")
        start_fds = open_descriptors()
        start_sockets = Engine.open_media_sockets()
        start_allocations = Engine.live_allocations()
        closed = []
        for i in range(CYCLES):
            # SRTP both ways: the contexts must be freed with the fork, too
            fork = call.add_fork(Track.INBOUND, key=SrtpKey.generate(),
                                 remote_key=SrtpKey.generate(), destination=sink.getsockname())
            assert Engine.open_media_sockets() == start_sockets + 2  # RTP + RTCP
            if i == 0:  # the first one really forwards before it goes
                sender.sendto(rtp(1, 160), call.ingress[Track.INBOUND])
                assert len(recv_all(sink, 1)) == 1
            fork.close()
            closed.append(fork)
            assert Engine.open_media_sockets() == start_sockets, f"cycle {i}"
        assert open_descriptors() == start_fds
        assert Engine.live_allocations() == start_allocations
        # final counters stay readable after the release
        assert closed[0].counters()["forwarded"] == 1
        assert engine.counters()["forks"] == 0


def test_call_cycles_give_ports_back_at_once(no_gc) -> None:
    with Engine(port_range=small_range()) as engine:
        start_fds = open_descriptors()
        start_sockets = Engine.open_media_sockets()
        start_allocations = Engine.live_allocations()
        closed = []
        for i in range(CYCLES):
            call = engine.add_call(f"CA-call-cycle-{i}")
            forks = [call.add_fork(t, key=SrtpKey.generate()) for t in Track]
            assert Engine.open_media_sockets() == start_sockets + 2 + 4
            call.close()
            closed.append((call, forks))  # Fork.call <-> Call._forks: a reference cycle
            assert Engine.open_media_sockets() == start_sockets, f"cycle {i}"
        assert open_descriptors() == start_fds
        assert Engine.live_allocations() == start_allocations
        assert closed[-1][0].counters()["inbound"]["received"] == 0
        assert engine.counters()["calls"] == 0


def test_a_fork_the_call_cannot_take_is_released_at_once(no_gc) -> None:
    with Engine(port_range=small_range()) as engine:
        call = engine.add_call("CA-full")
        forks = [call.add_fork(Track.INBOUND) for _ in range(4)]
        held = Engine.open_media_sockets()
        with pytest.raises(EngineError, match="at most 4"):
            call.add_fork(Track.OUTBOUND)
        assert Engine.open_media_sockets() == held
        for fork in forks:
            fork.close()
        call.close()
        assert Engine.open_media_sockets() == held - 2 - 8


def test_engine_close_releases_every_call(no_gc) -> None:
    start_fds = open_descriptors()
    start_sockets = Engine.open_media_sockets()
    engine = Engine(port_range=small_range(), workers=2)
    for i in range(4):
        call = engine.add_call(f"CA-engine-close-{i}")
        call.add_fork(Track.OUTBOUND, key=SrtpKey.generate())
    assert Engine.open_media_sockets() == start_sockets + 4 * 4
    engine.close()
    assert Engine.open_media_sockets() == start_sockets
    assert open_descriptors() == start_fds


def test_rtcp_pairs_stay_inside_the_port_range() -> None:
    first = small_range()[0]
    ports = PortAllocator(first, first + 4)  # even ports first, +2, +4; +5 is outside
    held = []
    try:
        held += ports.bind("127.0.0.1", 1, rtcp_pairs=True)
        held += ports.bind("127.0.0.1", 1, rtcp_pairs=True)
        with pytest.raises(PortsExhausted):
            held += ports.bind("127.0.0.1", 1, rtcp_pairs=True)
        assert sorted(s.getsockname()[1] for s in held) == list(range(first, first + 4))
    finally:
        for sock in held:
            sock.close()


def test_close_while_other_threads_push_and_drain(no_gc) -> None:
    """The RecordingManager drains a call's ring on worker threads while the service closes
    the call on another; an embedder may push from its own thread. Freeing at close must
    wait for a drain or push in progress and refuse new pushes: no use after free."""
    with Engine(port_range=small_range()) as engine:
        for i in range(100):
            call = engine.add_call(f"CA-race-{i}", ingress=False)
            call.record([Track.INBOUND])
            fork = call.add_fork(Track.INBOUND, drain=True)
            stop = threading.Event()

            def hammer(call=call, fork=fork, stop=stop) -> None:
                while not stop.is_set():
                    with contextlib.suppress(ValueError):  # ended: refused, never queued
                        call._worker.push(call._core, 0, PACKET, OFFSETS, LENGTHS)
                    call._core.drain_recording(64, 64 * 400)
                    fork._core.drain(64)

            threads = [threading.Thread(target=hammer) for _ in range(2)]
            for t in threads:
                t.start()
            time.sleep(0.002)
            call.close()
            stop.set()
            for t in threads:
                t.join(5)
            assert call._core.released and fork._core.released
        assert engine.counters()["calls"] == 0
