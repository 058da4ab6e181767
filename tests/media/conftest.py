"""Fixtures for data-plane tests: real engines on 127.0.0.1, and teardown checks
that every data-plane allocation was released (uvloop's _testbase habit) and that
no descriptor stayed open."""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from mediafork.engine import Engine
from tests.io_uring_support import IO_URING_REFUSED


@pytest.fixture(autouse=True, params=["epoll", "io_uring"])
def io_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every data-plane test runs on both I/O backends: each Engine a test makes
    (through the fixtures or directly) defaults to the one of this run."""
    if request.param == "io_uring" and IO_URING_REFUSED:
        pytest.skip(f"the kernel refuses io_uring here: {IO_URING_REFUSED}")
    monkeypatch.setitem(Engine.__init__.__kwdefaults__, "io", request.param)
    return request.param


@pytest.fixture(autouse=True)
def balanced_allocations() -> Iterator[None]:
    # No garbage collection first: closing a call or fork frees its data-plane memory at
    # once, so what is still allocated after the test is a leak a user would hit.
    before = Engine.live_allocations()
    yield
    assert Engine.live_allocations() == before, "data-plane allocations leaked"


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def no_descriptor_left_open(balanced_allocations: None) -> Iterator[None]:
    """Every socket, eventfd and epoll descriptor a test's engines took is closed by the
    time its fixtures are torn down. Deliberately no garbage collection before counting: a
    descriptor only the garbage collector would close is a leak (a port another call
    cannot have). Set up after ``balanced_allocations`` so it runs before that one's
    collection at teardown."""
    before = open_descriptors()
    yield
    after = open_descriptors()
    assert after <= before, f"{after - before} descriptor(s) left open (before {before}, after {after})"


@pytest.fixture
def engine() -> Iterator[Engine]:
    e = Engine(port_range=(31000, 34999))
    yield e
    e.close()


@pytest.fixture
def sink() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(2.0)
    yield s
    s.close()


@pytest.fixture
def sender() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    yield s
    s.close()


def rtp(seq: int, ts: int, payload: bytes = b"\xff" * 160, *, pt: int = 0, ssrc: int = 0x1234,
        marker: bool = False) -> bytes:
    """A plain RTP packet (RFC 3550 §5.1)."""
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF,
                       ts & 0xFFFFFFFF, ssrc) + payload


def header(packet: bytes) -> tuple[int, int, int, int, int]:
    """(marker, payload type, seq, timestamp, ssrc) of an RTP packet."""
    b0, b1, seq, ts, ssrc = struct.unpack("!BBHII", packet[:12])
    return b1 >> 7, b1 & 0x7F, seq, ts, ssrc


def eventually(check, timeout: float = 2.0) -> None:
    """Wait for a condition the worker makes true just after the packet we saw:
    counters are updated once the kernel has accepted a send."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def recv_all(sock: socket.socket, count: int, timeout: float = 2.0) -> list[bytes]:
    sock.settimeout(timeout)
    out = []
    try:
        while len(out) < count:
            out.append(sock.recv(4096))
    except TimeoutError:
        pass
    return out


def dead_address() -> tuple[str, int]:
    """A loopback UDP port nothing listens on: sending there draws ICMP port unreachable."""
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    address = closed.getsockname()
    closed.close()
    return address


def send_until_event(engine, sender: socket.socket, call, kind: str, timeout: float = 3.0):
    """Feed the call's inbound track until the engine reports ``kind``; those events."""
    deadline = time.monotonic() + timeout
    seq = 0
    while time.monotonic() < deadline:
        sender.sendto(rtp(seq, seq * 160), call.ingress[0])
        seq += 1
        time.sleep(0.02)
        events = [e for e in engine.poll_events() if e.kind == kind]
        if events:
            return events
    return []
