"""Media source latching: a call's ingress track takes RTP from its configured source or,
without one, from the first address:port that sends it valid RTP. Anyone else who finds
the (predictable) port is dropped and counted, never forwarded into a recording.

Real UDP on loopback: 127.0.0.1 and 127.0.0.2 are two real source addresses on Linux.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from pylibsrtp import Policy, Session

from mediafork.engine import Engine, SrtpKey, Track, is_rtcp

from .conftest import eventually, recv_all, rtp

LEGIT = b"\x11" * 160
STRANGER = b"\x22" * 160


@pytest.fixture
def stranger() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.2", 0))
    yield s
    s.close()


def send(sock: socket.socket, target: tuple[str, int], first_seq: int, count: int,
         payload: bytes, ssrc: int) -> None:
    for i in range(count):
        seq = first_seq + i
        sock.sendto(rtp(seq, seq * 160, payload, ssrc=ssrc), target)


def payloads(packets: list[bytes]) -> list[bytes]:
    return [p[12:] for p in packets if not is_rtcp(p)]


def test_first_sender_latches_and_a_stranger_gets_nothing_through(
        engine, sink, sender, stranger) -> None:
    call = engine.add_call("CA-latch")
    fork = call.add_fork(Track.INBOUND, destination=sink.getsockname())
    target = call.ingress[Track.INBOUND]
    send(sender, target, 1, 10, LEGIT, ssrc=0xAAAA)
    assert payloads(recv_all(sink, 10)) == [LEGIT] * 10
    send(stranger, target, 500, 100, STRANGER, ssrc=0xBBBB)
    send(sender, target, 11, 10, LEGIT, ssrc=0xAAAA)  # the legit stream goes on
    got = payloads(recv_all(sink, 10))
    assert got == [LEGIT] * 10
    assert recv_all(sink, 1, timeout=0.3) == []  # and nothing of the stranger's follows
    eventually(lambda: call.counters()["inbound"]["source_rejected"] == 100)
    counters = call.counters()["inbound"]
    assert counters["received"] == 20 and counters["source_latches"] == 1
    assert counters["ssrc_changes"] == 0
    assert fork.counters()["forwarded"] == 20


def test_a_new_sender_is_accepted_once_the_latched_one_was_silent(
        sink, sender, stranger) -> None:
    with Engine(port_range=(35000, 35999), relatch_after=0.4) as engine:
        call = engine.add_call("CA-relatch")
        call.add_fork(Track.INBOUND, destination=sink.getsockname())
        target = call.ingress[Track.INBOUND]
        send(sender, target, 1, 5, LEGIT, ssrc=0xAAAA)
        assert len(recv_all(sink, 5)) == 5
        send(stranger, target, 100, 5, STRANGER, ssrc=0xBBBB)  # too early: rejected
        assert recv_all(sink, 1, timeout=0.1) == []
        time.sleep(0.6)  # the latched sender is silent for longer than relatch_after
        send(stranger, target, 105, 5, STRANGER, ssrc=0xBBBB)
        assert payloads(recv_all(sink, 5)) == [STRANGER] * 5
        # the new source holds the latch now: the old one is the stranger
        send(sender, target, 6, 5, LEGIT, ssrc=0xAAAA)
        assert recv_all(sink, 1, timeout=0.3) == []
        counters = call.counters()["inbound"]
        assert counters["source_latches"] == 2
        assert counters["source_rejected"] == 10
        assert counters["ssrc_changes"] == 1  # the move is seamless for the recorder
        call.close()


def test_with_latch_off_every_sender_gets_through(engine, sink, sender, stranger) -> None:
    call = engine.add_call("CA-nolatch", latch=False)
    call.add_fork(Track.INBOUND, destination=sink.getsockname())
    target = call.ingress[Track.INBOUND]
    send(sender, target, 1, 5, LEGIT, ssrc=0xAAAA)
    assert len(recv_all(sink, 5)) == 5
    send(stranger, target, 100, 5, STRANGER, ssrc=0xBBBB)
    assert payloads(recv_all(sink, 5)) == [STRANGER] * 5
    counters = call.counters()["inbound"]
    assert counters["source_rejected"] == 0 and counters["source_latches"] == 0


def test_engine_wide_latch_off_and_a_per_call_override(sink, sender, stranger) -> None:
    with Engine(port_range=(35000, 35999), latch=False) as engine:
        open_call = engine.add_call("CA-engine-off")
        latched = engine.add_call("CA-call-on", latch=True)
        for call, expected in ((open_call, [STRANGER] * 2), (latched, [])):
            call.add_fork(Track.INBOUND, destination=sink.getsockname())
            send(sender, call.ingress[Track.INBOUND], 1, 2, LEGIT, ssrc=0xAAAA)
            assert len(recv_all(sink, 2)) == 2
            send(stranger, call.ingress[Track.INBOUND], 100, 2, STRANGER, ssrc=0xBBBB)
            assert payloads(recv_all(sink, 2, timeout=0.5)) == expected
        assert latched.counters()["inbound"]["source_rejected"] == 2
        assert open_call.counters()["inbound"]["source_rejected"] == 0
        open_call.close()
        latched.close()


def test_a_configured_source_never_gives_way(sink, sender, stranger) -> None:
    with Engine(port_range=(35000, 35999), relatch_after=0.2) as engine:
        call = engine.add_call("CA-configured")
        call.add_fork(Track.INBOUND, destination=sink.getsockname())
        call.expect_source(Track.INBOUND, "127.0.0.2")
        target = call.ingress[Track.INBOUND]
        send(sender, target, 1, 5, LEGIT, ssrc=0xAAAA)  # first, but not the configured one
        assert recv_all(sink, 1, timeout=0.3) == []
        time.sleep(0.4)  # longer than relatch_after: still nobody else may latch
        send(sender, target, 6, 5, LEGIT, ssrc=0xAAAA)
        send(stranger, target, 100, 5, STRANGER, ssrc=0xBBBB)
        assert payloads(recv_all(sink, 5)) == [STRANGER] * 5
        counters = call.counters()["inbound"]
        assert counters["source_rejected"] == 10 and counters["source_latches"] == 0
        # withdrawing the source: the track learns again, from the next valid RTP
        call.expect_source(Track.INBOUND, None)
        send(sender, target, 11, 3, LEGIT, ssrc=0xAAAA)
        assert payloads(recv_all(sink, 3)) == [LEGIT] * 3
        send(stranger, target, 105, 3, STRANGER, ssrc=0xBBBB)
        assert recv_all(sink, 1, timeout=0.3) == []
        assert call.counters()["inbound"]["source_latches"] == 1
        call.close()


def test_rtcp_and_garbage_never_latch(engine, sink, sender, stranger) -> None:
    call = engine.add_call("CA-junk")
    call.add_fork(Track.INBOUND, destination=sink.getsockname())
    target = call.ingress[Track.INBOUND]
    stranger.sendto(b"\x80\xc8\x00\x06" + b"\x00" * 24, target)  # an RTCP sender report
    stranger.sendto(b"\x40" + rtp(1, 1)[1:], target)            # RTP version 1
    stranger.sendto(b"\x80\x00\x00", target)                    # truncated header
    eventually(lambda: call.counters()["inbound"]["received"] == 3)
    send(sender, target, 1, 5, LEGIT, ssrc=0xAAAA)  # the first valid RTP latches
    assert payloads(recv_all(sink, 5)) == [LEGIT] * 5
    send(stranger, target, 100, 5, STRANGER, ssrc=0xBBBB)
    assert recv_all(sink, 1, timeout=0.3) == []
    counters = call.counters()["inbound"]
    assert counters["rtcp"] == 1 and counters["malformed"] == 2
    assert counters["source_latches"] == 1 and counters["source_rejected"] == 5


def test_srtp_output_of_a_latched_track_decrypts(engine, sink, sender, stranger) -> None:
    call = engine.add_call("CA-latch-srtp")
    key = SrtpKey.generate()
    fork = call.add_fork(Track.INBOUND, key=key, destination=sink.getsockname())
    target = call.ingress[Track.INBOUND]
    send(sender, target, 1, 10, LEGIT, ssrc=0xAAAA)
    send(stranger, target, 100, 10, STRANGER, ssrc=0xBBBB)
    send(sender, target, 11, 10, LEGIT, ssrc=0xAAAA)
    got = [p for p in recv_all(sink, 20) if not is_rtcp(p)]
    rx = Session(Policy(key=key.master, ssrc_type=Policy.SSRC_ANY_INBOUND,
                        srtp_profile=key.profile.pylibsrtp_profile))
    assert [rx.unprotect(p)[12:] for p in got] == [LEGIT] * 20
    assert recv_all(sink, 1, timeout=0.3) == []
    assert call.counters()["inbound"]["source_rejected"] == 10
    eventually(lambda: fork.counters()["sent"] == 20)


def test_pushed_packets_are_not_filtered(engine) -> None:
    call = engine.add_call("CA-pushed", ingress=False)
    fork = call.add_fork(Track.INBOUND, drain=True)
    for i in range(3):
        assert call.push(Track.INBOUND, rtp(i, i * 160, ssrc=0x1000 + i))  # three "senders"
    eventually(lambda: fork.counters()["forwarded"] == 3)
    assert call.counters()["inbound"]["source_rejected"] == 0
