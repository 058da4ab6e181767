"""Forwarding through the worker over real UDP sockets on 127.0.0.1, with
every fork's SRTP checked by an independent pylibsrtp session."""

from __future__ import annotations

import errno
import itertools
import socket
import threading
import time

import pytest
from pylibsrtp import Policy, Session

from mediafork.engine import Engine, EngineError, SrtpKey, SrtpProfile, Track, is_rtcp

from .conftest import dead_address, eventually, header, recv_all, rtp, send_until_event


def receiver_for(key: SrtpKey) -> Session:
    """What a recorder does with the key from our SDES offer."""
    return Session(Policy(key=key.master, ssrc_type=Policy.SSRC_ANY_INBOUND,
                          srtp_profile=key.profile.pylibsrtp_profile))


@pytest.mark.parametrize("profile", list(SrtpProfile))
def test_every_profile_decrypts_with_an_independent_session(engine, sink, sender, profile) -> None:
    call = engine.add_call("CA-profile")
    key = SrtpKey.generate(profile)
    fork = call.add_fork(Track.INBOUND, key=key, destination=sink.getsockname())
    payloads = [bytes([i]) * 160 for i in range(20)]
    for i, payload in enumerate(payloads):
        sender.sendto(rtp(1000 + i, 8000 + 160 * i, payload, marker=(i == 0)),
                      call.ingress[Track.INBOUND])
    got = [p for p in recv_all(sink, 20) if not is_rtcp(p)]
    assert len(got) == 20
    rx = receiver_for(key)
    plain = [rx.unprotect(p) for p in got]
    assert [p[12:] for p in plain] == payloads  # bit-identical payloads
    heads = [header(p) for p in plain]
    assert {h[4] for h in heads} == {fork.ssrc}
    assert heads[0][0] == 1 and all(h[0] == 0 for h in heads[1:])  # marker carried over
    seqs = [h[2] for h in heads]
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:], strict=False))
    eventually(lambda: fork.counters()["sent"] == 20)


@pytest.mark.parametrize("transform", ["auto", "libsrtp"])
def test_many_srtp_forks_in_one_tick_decrypt_with_either_transform(sink, sender, transform) -> None:
    """Forks protected back to back in one flush (each prefetching the next one's
    state): every packet of every fork decrypts, whichever code protected it."""
    engine = Engine(port_range=(31000, 34999), srtp_transform=transform)
    try:
        keys, calls = [], []
        for i in range(6):
            call = engine.add_call(f"CA-transform-{i}")
            key = SrtpKey.generate(SrtpProfile.AES_CM_128_HMAC_SHA1_80 if i % 2
                                   else SrtpProfile.AES_CM_128_HMAC_SHA1_32)
            fork = call.add_fork(Track.INBOUND, key=key, destination=sink.getsockname())
            keys.append((fork.ssrc, key))
            calls.append(call)
        for n in range(30):
            for i, call in enumerate(calls):
                sender.sendto(rtp(n, 160 * n, bytes([i, n]) * 80), call.ingress[Track.INBOUND])
        got = [p for p in recv_all(sink, 180) if not is_rtcp(p)]
        assert len(got) == 180
        receivers = {ssrc: receiver_for(key) for ssrc, key in keys}
        payloads = sorted(receivers[header(p)[4]].unprotect(p)[12:] for p in got)
        assert payloads == sorted(bytes([i, n]) * 80 for i in range(6) for n in range(30))
    finally:
        engine.close()


def test_both_tracks_go_to_their_own_forks(engine, sink, sender) -> None:
    call = engine.add_call("CA-both")
    keys = {t: SrtpKey.generate() for t in Track}
    forks = {t: call.add_fork(t, key=keys[t], destination=sink.getsockname()) for t in Track}
    sender.sendto(rtp(1, 160, b"\x01" * 160, ssrc=1), call.ingress[Track.INBOUND])
    sender.sendto(rtp(1, 160, b"\x02" * 160, ssrc=2), call.ingress[Track.OUTBOUND])
    got = recv_all(sink, 2)
    by_ssrc = {header(p)[4]: p for p in got}
    assert set(by_ssrc) == {forks[Track.INBOUND].ssrc, forks[Track.OUTBOUND].ssrc}
    for t in Track:
        plain = receiver_for(keys[t]).unprotect(by_ssrc[forks[t].ssrc])
        assert plain[12:] == (b"\x01" if t is Track.INBOUND else b"\x02") * 160


def test_destination_moves_without_a_sequence_gap(engine, sink, sender) -> None:
    """A recorder re-INVITE with new ports: the connected RTP socket follows."""
    call = engine.add_call("CA-move")
    fork = call.add_fork(Track.INBOUND, destination=sink.getsockname())
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    try:
        sender.sendto(rtp(1, 160), call.ingress[Track.INBOUND])
        (first,) = recv_all(sink, 1)
        fork.set_destination(other.getsockname())
        sender.sendto(rtp(2, 320), call.ingress[Track.INBOUND])
        (second,) = recv_all(other, 1)
        fork.clear_destination()
        sender.sendto(rtp(3, 480), call.ingress[Track.INBOUND])
        deadline = time.monotonic() + 2
        while call.counters()["inbound"]["received"] < 3:  # held back, not merely late
            assert time.monotonic() < deadline
            time.sleep(0.005)
        fork.set_destination(sink.getsockname())
        sender.sendto(rtp(4, 640), call.ingress[Track.INBOUND])
        (third,) = recv_all(sink, 1)
    finally:
        other.close()
    seqs = [header(p)[2] for p in (first, second, third)]
    assert [(s - seqs[0]) & 0xFFFF for s in seqs] == [0, 1, 2]  # the held-back packet is no gap
    assert fork.counters()["skipped"] == 1


def test_plain_rtp_fork_and_fresh_bases(engine, sink, sender) -> None:
    call = engine.add_call("CA-plain")
    fork = call.add_fork(Track.INBOUND, destination=sink.getsockname())
    sender.sendto(rtp(5, 500, pt=8), call.ingress[Track.INBOUND])
    (pkt,) = recv_all(sink, 1)
    marker, pt, seq, ts, ssrc = header(pkt)
    assert (pt, ssrc) == (8, fork.ssrc)
    assert len(pkt) == 172


def drain_all(fork, expected: int, timeout: float = 2.0) -> list[bytes]:
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(out) < expected and time.monotonic() < deadline:
        out += [p for p in fork.drain() if not is_rtcp(p)]
        if len(out) < expected:
            time.sleep(0.005)
    return out


def test_sequence_and_timestamp_continuity_across_wraparound_with_dtmf(engine) -> None:
    call = engine.add_call("CA-wrap", ingress=False, dtmf_payload_type=101)
    fork = call.add_fork(Track.INBOUND, drain=True)
    sent_payloads = []
    seq, ts = 65530, 0xFFFFFF00
    for i in range(30):
        if i in (4, 5, 6, 20):  # RFC 4733 telephone-events mid-stream
            call.push(Track.INBOUND, rtp(seq, ts, b"\x05\x0a\x00\xa0", pt=101))
        else:
            payload = i.to_bytes(2, "big") * 80
            sent_payloads.append((payload, ts))
            call.push(Track.INBOUND, rtp(seq, ts, payload))
        seq, ts = (seq + 1) & 0xFFFF, (ts + 160) & 0xFFFFFFFF
    got = drain_all(fork, len(sent_payloads))
    assert [p[12:] for p in got] == [p for p, _ in sent_payloads]
    assert all(header(p)[1] != 101 for p in got)  # DTMF never forwarded
    seqs = [header(p)[2] for p in got]
    # filtered packets do not look like loss: strictly consecutive through the wrap
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:], strict=False))
    out_ts = [header(p)[3] for p in got]
    in_ts = [t for _, t in sent_payloads]
    assert [(o - out_ts[0]) & 0xFFFFFFFF for o in out_ts] == [
        (t - in_ts[0]) & 0xFFFFFFFF for t in in_ts
    ]
    assert call.counters()["inbound"]["filtered_dtmf"] == 4


def test_real_upstream_loss_still_shows_as_a_gap(engine) -> None:
    call = engine.add_call("CA-loss", ingress=False)
    fork = call.add_fork(Track.INBOUND, drain=True)
    for s in (10, 11, 14, 15):  # 12 and 13 lost upstream
        call.push(Track.INBOUND, rtp(s, s * 160))
    seqs = [header(p)[2] for p in drain_all(fork, 4)]
    assert [(s - seqs[0]) & 0xFFFF for s in seqs] == [0, 1, 4, 5]


def test_pause_does_not_look_like_loss_and_ssrc_change_is_seamless(engine) -> None:
    call = engine.add_call("CA-pause", ingress=False)
    fork = call.add_fork(Track.INBOUND, drain=True)
    for s in range(5):
        call.push(Track.INBOUND, rtp(s, s * 160))
    fork.pause()
    for s in range(5, 10):
        call.push(Track.INBOUND, rtp(s, s * 160))
    fork.resume()
    for s in range(10, 13):
        call.push(Track.INBOUND, rtp(s, s * 160))
    for s in range(3):  # upstream SSRC change: new sequence and timestamp spaces
        call.push(Track.INBOUND, rtp(40000 + s, 7_000_000 + s * 160, ssrc=0xABCDEF))
    got = drain_all(fork, 11)
    seqs = [header(p)[2] for p in got]
    assert len(got) == 11
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:], strict=False))
    assert {header(p)[4] for p in got} == {fork.ssrc}
    assert fork.counters()["skipped"] == 5
    assert call.counters()["inbound"]["ssrc_changes"] == 1


def test_full_ring_drops_and_counts_without_blocking(engine) -> None:
    call = engine.add_call("CA-full", ingress=False)
    slow = call.add_fork(Track.INBOUND, drain=True, ring_slots=8)
    other = call.add_fork(Track.INBOUND, drain=True, ring_slots=64)
    for s in range(20):
        call.push(Track.INBOUND, rtp(s, s * 160))
    assert len(drain_all(other, 20)) == 20  # the other fork is unaffected
    assert len(slow.drain()) == 8
    assert slow.counters()["dropped_full"] == 12


def test_malformed_ingress_is_counted_and_the_worker_survives(engine, sink, sender) -> None:
    call = engine.add_call("CA-bad")
    call.add_fork(Track.INBOUND, destination=sink.getsockname())
    target = call.ingress[Track.INBOUND]
    bad = [
        b"\x80\x00\x00",                              # truncated header
        b"\x40" + rtp(1, 1)[1:],                      # version 1
        bytes([0x8F]) + rtp(1, 1, b"")[1:],           # CSRC count past the end
        bytes([0x90]) + rtp(1, 1, b"")[1:] + b"\xbe\xde\x00\x09",  # extension past the end
        bytes([0xA0]) + rtp(1, 1, b"xy\xff")[1:],     # padding larger than the packet
        b"",
    ]
    for packet in bad:
        sender.sendto(packet, target)
    sender.sendto(rtp(2, 320), target)
    assert len(recv_all(sink, 1)) == 1
    counters = call.counters()["inbound"]
    assert counters["malformed"] == len(bad)
    assert counters["received"] == len(bad) + 1


def test_source_filtering(engine, sink, sender) -> None:
    call = engine.add_call("CA-src")
    fork = call.add_fork(Track.INBOUND, destination=sink.getsockname())
    call.expect_source(Track.INBOUND, "127.0.0.1", sender.getsockname()[1])
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        stranger.sendto(rtp(1, 160), call.ingress[Track.INBOUND])
        sender.sendto(rtp(2, 320), call.ingress[Track.INBOUND])
        assert len(recv_all(sink, 2, timeout=0.5)) == 1
    finally:
        stranger.close()
    assert call.counters()["inbound"]["source_rejected"] == 1
    eventually(lambda: fork.counters()["sent"] == 1)


def _spin_until(event: threading.Event) -> int:
    n = 0
    while not event.is_set():
        n += 1
    return n


def test_forwarding_releases_the_gil() -> None:
    """A Python thread keeps its pace while C forwards a large batch.

    The engine is not started, so the whole batch is processed inside push()
    on another thread. Holding the GIL there would leave this thread about one
    switch interval (5 ms) of a ~200 ms call; releasing it leaves nearly all
    (less whatever other processes on a shared machine take)."""
    import numpy as np

    with Engine(threaded=False) as e:
        call = e.add_call("CA-gil", ingress=False, record_slots=0)
        for _ in range(4):
            call.add_fork(Track.INBOUND, key=SrtpKey.generate(), drain=True, ring_slots=8)
        packet = rtp(1, 1, b"12345678")
        count = 3_000_000  # ~0.2 s of work once the small rings are full
        buf = np.frombuffer(packet * count, dtype=np.uint8)
        offsets = np.arange(count, dtype=np.uint32) * len(packet)
        lengths = np.full(count, len(packet), dtype=np.uint32)

        alone = threading.Event()
        threading.Timer(0.05, alone.set).start()
        t0 = time.perf_counter()
        rate = _spin_until(alone) / (time.perf_counter() - t0)

        started, done = threading.Event(), threading.Event()

        def push() -> None:
            started.set()
            call.push_many(Track.INBOUND, buf, offsets, lengths)
            done.set()

        pusher = threading.Thread(target=push)
        pusher.start()
        started.wait()
        t0 = time.perf_counter()
        spins = _spin_until(done)
        elapsed = time.perf_counter() - t0
        pusher.join()
        assert e.counters()["pushed"] == count
        assert elapsed > 0.04, "batch too small to observe"
        # holding the GIL would leave ~5 ms of a ~200 ms call: a few percent
        assert spins > 0.25 * rate * elapsed, (
            f"only {spins / (rate * elapsed):.0%} of this thread's pace during the push"
        )


def test_rtcp_sender_reports_are_srtcp_with_cname(engine, sink, sender) -> None:
    call = engine.add_call("CA-rtcp")
    key = SrtpKey.generate()
    rtcp_sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtcp_sink.bind(("127.0.0.1", 0))
    try:
        fork = call.add_fork(Track.INBOUND, key=key, destination=sink.getsockname(),
                             rtcp_destination=rtcp_sink.getsockname(), rtcp_interval=0.2,
                             cname="rec-session-1")
        for s in range(10):
            sender.sendto(rtp(s, s * 160), call.ingress[Track.INBOUND])
        assert len(recv_all(sink, 10)) == 10
        rtcp_sink.settimeout(2.0)
        sr, source = rtcp_sink.recvfrom(2048)
        assert source == fork.rtcp_local_address  # sender reports leave from port + 1
    finally:
        rtcp_sink.close()
    plain = receiver_for(key).unprotect_rtcp(sr)
    assert plain[1] == 200  # SR
    assert int.from_bytes(plain[4:8], "big") == fork.ssrc
    assert int.from_bytes(plain[20:24], "big") == 10  # sender's packet count
    assert int.from_bytes(plain[24:28], "big") == 1600  # sender's octet count
    assert b"rec-session-1" in plain[28:]
    eventually(lambda: fork.counters()["rtcp_sent"] >= 1)


def test_receiver_reports_from_the_recorder_reach_the_counters(engine, sink, sender) -> None:
    call = engine.add_call("CA-rr")
    fork = call.add_fork(Track.INBOUND, destination=sink.getsockname())
    sender.sendto(rtp(1, 160), call.ingress[Track.INBOUND])
    recv_all(sink, 1)
    import struct

    block = struct.pack("!IB", fork.ssrc, 26) + (5).to_bytes(3, "big")
    block += struct.pack("!IIII", 70000, 123, 0, 0)
    rr = struct.pack("!BBHI", 0x81, 201, 7, 0x5EC0) + block
    sink.sendto(rr, fork.rtcp_local_address)  # RFC 3550 §11: RTCP on the RTP port + 1
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and fork.counters()["rr_last_ns"] == 0:
        time.sleep(0.01)
    c = fork.counters()
    assert (c["rr_fraction_lost"], c["rr_cumulative_lost"], c["rr_jitter"]) == (26, 5, 123)
    kinds = [e.kind for e in engine.poll_events()]
    assert "rtcp_report" in kinds


def test_icmp_port_unreachable_becomes_an_event(engine, sender) -> None:
    call = engine.add_call("CA-icmp")
    fork = call.add_fork(Track.INBOUND, destination=dead_address())
    events = send_until_event(engine, sender, call, "send_error")
    assert events, "no send_error event"
    assert events[0].value == errno.ECONNREFUSED
    assert events[0].call_sid == "CA-icmp" and events[0].fork_id == fork.id
    assert fork.counters()["send_errors"] >= 1


def test_no_media_event(engine) -> None:
    engine.add_call("CA-quiet", ingress=False, no_media_timeout=0.1)
    deadline = time.monotonic() + 2
    seen = set()
    while time.monotonic() < deadline and len(seen) < 2:
        seen |= {(e.kind, e.track) for e in engine.poll_events() if e.call_sid == "CA-quiet"}
        time.sleep(0.02)
    assert seen == {("no_media", Track.INBOUND), ("no_media", Track.OUTBOUND)}


def test_one_poll_returns_every_queued_event() -> None:
    """More events than one native read takes (1,024) are all returned by one poll: the
    event descriptor is reset on read, so a left-over would wait for the next event."""
    with Engine(port_range=(37000, 37999)) as e:
        for i in range(600):
            e.add_call(f"CA-quiet-{i}", ingress=False, no_media_timeout=0.05)
        eventually(lambda: e.counters()["events"] >= 1200, timeout=5.0)
        events = e.poll_events()
        assert len(events) == 1200
        assert {ev.kind for ev in events} == {"no_media"}
        assert e.poll_events() == []


def test_key_rotation_switches_keys(engine) -> None:
    call = engine.add_call("CA-rotate", ingress=False)
    k1, k2 = SrtpKey.generate(), SrtpKey.generate()
    fork = call.add_fork(Track.INBOUND, key=k1, drain=True)
    call.push(Track.INBOUND, rtp(1, 160))
    (first,) = drain_all(fork, 1)
    fork.rotate_key(k2)
    call.push(Track.INBOUND, rtp(2, 320))
    (second,) = drain_all(fork, 1)
    assert receiver_for(k1).unprotect(first)[12:] == b"\xff" * 160
    assert receiver_for(k2).unprotect(second)[12:] == b"\xff" * 160


def test_limits_and_closed_objects(engine) -> None:
    call = engine.add_call("CA-limits", ingress=False)
    forks = [call.add_fork(Track.INBOUND, drain=True) for _ in range(4)]
    with pytest.raises(EngineError, match="at most 4"):
        call.add_fork(Track.OUTBOUND, drain=True)
    with pytest.raises(EngineError, match="already registered"):
        engine.add_call("CA-limits")
    forks[0].close()
    call.add_fork(Track.OUTBOUND, drain=True)
    call.close()
    with pytest.raises(EngineError, match="has ended"):
        call.push(Track.INBOUND, rtp(1, 1))
    with pytest.raises(EngineError, match="closed"):
        forks[1].drain()
    with pytest.raises(ValueError, match="needs 30 bytes"):
        SrtpKey(SrtpProfile.AES_CM_128_HMAC_SHA1_80, b"short")


def test_keys_never_show_in_reprs(engine) -> None:
    key = SrtpKey.generate()
    call = engine.add_call("CA-secret", ingress=False)
    fork = call.add_fork(Track.INBOUND, key=key, drain=True)
    for text in (repr(key), str(key), repr(fork), repr(call)):
        assert key.sdes_inline() not in text
        assert key.master.hex() not in text


def test_recording_tap_delivers_raw_packets(engine) -> None:
    call = engine.add_call("CA-rec", ingress=False)
    call.record([Track.INBOUND, Track.OUTBOUND])
    call.push(Track.INBOUND, rtp(7, 700, b"\x11" * 160))
    call.push(Track.OUTBOUND, rtp(9, 900, b"\x22" * 80, pt=8))
    call.push(Track.INBOUND, rtp(8, 860, b"\x05\x0a\x00\xa0", pt=101))  # DTMF: not recorded
    deadline = time.monotonic() + 2
    while engine.counters()["pushed"] < 3 or sum(
        c["recorded"] + c["filtered_dtmf"] for c in call.counters().values()
    ) < 3:
        assert time.monotonic() < deadline, "worker did not process the pushed packets"
        time.sleep(0.005)
    batch = call.drain_recording()
    assert batch["track"].tolist() == [0, 1]
    assert batch["seq"].tolist() == [7, 9]
    assert batch["timestamp"].tolist() == [700, 900]
    assert batch["payload_type"].tolist() == [0, 8]
    payload = batch["payload"].tobytes()
    assert payload == b"\x11" * 160 + b"\x22" * 80


def test_inline_engine_processes_in_the_callers_thread(sink) -> None:
    with Engine(threaded=False, port_range=(35000, 35999)) as e:
        call = e.add_call("CA-inline", ingress=False)
        fork = call.add_fork(Track.OUTBOUND, destination=sink.getsockname())
        call.push(Track.OUTBOUND, rtp(1, 160))
        assert len(recv_all(sink, 1)) == 1
        assert fork.counters()["sent"] == 1  # inline: sent before push() returned


def test_ten_thousand_calls_leave_allocations_balanced() -> None:
    base = Engine.live_allocations()
    with Engine(threaded=True) as e:
        engine_allocs = Engine.live_allocations() - base
        for i in range(10_000):
            call = e.add_call(f"CA{i}", ingress=False, record_slots=0)
            if i % 10 == 0:
                call.add_fork(Track.INBOUND, drain=True, key=SrtpKey.generate(), ring_slots=4)
            call.close()
        del call
        # Freed at close, not by the garbage collector.
        assert Engine.live_allocations() - base == engine_allocs
        assert e.counters()["calls"] == 0 and e.counters()["forks"] == 0


def test_totals_are_monotonic_across_call_and_fork_ends(engine) -> None:
    call = engine.add_call("CA-totals", ingress=False)
    a = call.add_fork(Track.INBOUND, drain=True)
    b = call.add_fork(Track.INBOUND, drain=True)
    for s in range(3):
        call.push(Track.INBOUND, rtp(s, s * 160))
    drain_all(b, 3)
    eventually(lambda: engine.totals()["fork_forwarded"] == 6)
    a.close()
    assert engine.totals()["fork_forwarded"] == 6  # a's packets stay counted
    call.close()
    totals = engine.totals()
    assert totals["fork_forwarded"] == 6
    assert totals["ingress_received"] == 3
    assert "fork_rr_jitter" not in totals


def test_icmp_for_rtcp_is_told_apart_from_icmp_for_rtp(engine, sink, sender) -> None:
    """A recorder with no RTCP port: our sender reports draw ICMP, media goes on."""
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    no_rtcp = closed.getsockname()
    closed.close()
    call = engine.add_call("CA-no-rtcp")
    fork = call.add_fork(Track.INBOUND, destination=sink.getsockname(),
                         rtcp_destination=no_rtcp, rtcp_interval=0.1)
    kinds: set[str] = set()
    deadline = time.monotonic() + 3
    seq = 0
    while time.monotonic() < deadline and "rtcp_send_error" not in kinds:
        sender.sendto(rtp(seq, seq * 160), call.ingress[Track.INBOUND])
        seq += 1
        time.sleep(0.02)
        kinds |= {e.kind for e in engine.poll_events() if e.fork_id == fork.id}
    assert "rtcp_send_error" in kinds and "send_error" not in kinds
    assert len(recv_all(sink, seq, timeout=0.5)) == seq  # media unaffected
    counters = fork.counters()
    assert counters["rtcp_send_errors"] >= 1 and counters["send_errors"] == 0


def test_a_backlog_after_a_stall_is_not_dropped(sink, sender) -> None:
    """After a stall, one socket can hold more packets than a fork's ring: a wake reads
    one batch per socket and sends it before the next wake reads more, so none is
    dropped (200 packets: seven wakes of 32)."""
    with Engine(threaded=False, port_range=(36000, 36999)) as e:
        call = e.add_call("CA-stall")
        fork = call.add_fork(Track.INBOUND, destination=sink.getsockname(), ring_slots=64)
        sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        for s in range(200):  # the worker was away: a backlog three times the ring
            sender.sendto(rtp(s, s * 160), call.ingress[Track.INBOUND])
        time.sleep(0.05)
        for _ in range(8):
            e.run_once(0.01)
        counters = fork.counters()
        assert counters["dropped_full"] == 0, counters
        assert counters["sent"] == 200
    assert len(recv_all(sink, 200, timeout=1.0)) == 200


def test_a_backlog_on_many_sockets_larger_than_the_receive_buffers_is_not_dropped(sink, sender) -> None:
    """A stall with 150 calls x 24 packets waiting (3,600 datagrams: more than the
    io_uring backend's 2,048 provided receive buffers, so its multishot receives run
    dry, end with ENOBUFS and are re-armed; epoll reads them one batch per socket): the
    wakes after it forward every one, in order per call, none dropped."""
    calls, per_call = 150, 24
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    with Engine(threaded=False, port_range=(38000, 38999)) as e:
        made = [e.add_call(f"CA-backlog-{i}") for i in range(calls)]
        forks = [c.add_fork(Track.INBOUND, destination=sink.getsockname(), ring_slots=64)
                 for c in made]
        e.run_once(0.01)  # the receives are armed before anything arrives
        for seq in range(per_call):
            for c in made:
                sender.sendto(rtp(seq, seq * 160), c.ingress[Track.INBOUND])
        time.sleep(0.1)
        deadline = time.monotonic() + 10
        while sum(f.counters()["sent"] for f in forks) < calls * per_call and time.monotonic() < deadline:
            e.run_once(0.01)
        counters = [f.counters() for f in forks]
        assert sum(c["dropped_full"] for c in counters) == 0
        assert [c["sent"] for c in counters] == [per_call] * calls
        ssrc_of = {f.ssrc: i for i, f in enumerate(forks)}
        packets = recv_all(sink, calls * per_call, timeout=2.0)
        assert len(packets) == calls * per_call
        seqs: dict[int, list[int]] = {}
        for packet in packets:
            _, _, seq, _, ssrc = header(packet)
            seqs.setdefault(ssrc_of[ssrc], []).append(seq)
        # each fork's output sequence is gapless and in order (modulo 2^16: bases are random)
        assert all(len(s) == per_call and all((b - a) % 65536 == 1 for a, b in itertools.pairwise(s))
                   for s in seqs.values())
        for c in made:
            c.close()


def test_queued_changes_apply_in_order_without_waiting(engine, sink) -> None:
    """wait=False returns at once; the worker applies commands in order, and a
    waited command returns only after every command queued before it."""
    call = engine.add_call("CA-nowait", ingress=False)
    fork = call.add_fork(Track.INBOUND)
    fork.set_destination(("127.0.0.1", 9), wait=False)  # discard port, replaced at once
    fork.pause(wait=False)
    fork.set_destination(sink.getsockname(), wait=False)
    fork.resume()  # waited: the three queued changes are applied by now
    call.push(Track.INBOUND, rtp(1, 160))
    (packet,) = recv_all(sink, 1)
    assert header(packet)[4] == fork.ssrc
    assert fork.destination == sink.getsockname() and not fork.paused



def test_a_tick_of_srtp_packets_is_protected_in_order_across_an_ssrc_change(sink) -> None:
    """Socket forks protect at the flush, all of a fork's packets of the tick back to
    back: 50 packets in one flush (an upstream SSRC change half way) decrypt in order
    with one receiver session, keep a gapless sequence, and count like before."""
    with Engine(threaded=False, port_range=(37000, 37999)) as e:
        call = e.add_call("CA-batch", ingress=False)
        key = SrtpKey.generate()
        fork = call.add_fork(Track.INBOUND, key=key, destination=sink.getsockname(), ring_slots=64)
        sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        payloads = [bytes([i]) * (100 + i) for i in range(50)]
        packets = [rtp(500 + i if i < 25 else 9000 + i, 160 * i, p, ssrc=1 if i < 25 else 2)
                   for i, p in enumerate(payloads)]
        data = b"".join(packets)
        offsets = [sum(len(p) for p in packets[:i]) for i in range(len(packets))]
        assert call.push_many(Track.INBOUND, data, offsets, [len(p) for p in packets]) == 50
        got = recv_all(sink, 50)
        counters = fork.counters()
    rx = receiver_for(key)
    plain = [rx.unprotect(p) for p in got]  # in order: one session, one ROC
    assert [p[12:] for p in plain] == payloads
    seqs = [header(p)[2] for p in plain]
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:], strict=False))
    assert counters["forwarded"] == counters["sent"] == 50
    assert counters["bytes"] == sum(len(p) for p in got)
    assert counters["srtp_errors"] == 0


def test_a_protect_failure_mid_batch_sends_nothing_unprotected(sink) -> None:
    """A duplicated upstream packet maps to the same SRTP index, which libsrtp refuses
    to protect twice: that one packet is counted in srtp_errors and never sent, the
    packets after it in the same flush still go out protected and in order."""
    with Engine(threaded=False, port_range=(37000, 37999)) as e:
        call = e.add_call("CA-dup", ingress=False)
        key = SrtpKey.generate()
        fork = call.add_fork(Track.INBOUND, key=key, destination=sink.getsockname(), ring_slots=64)
        packets = [rtp(seq, seq * 160, bytes([seq]) * 160) for seq in (1, 2, 2, 3, 4)]
        data = b"".join(packets)
        assert call.push_many(Track.INBOUND, data, [i * 172 for i in range(5)], [172] * 5) == 5
        got = recv_all(sink, 5, timeout=0.5)
        counters = fork.counters()
    assert len(got) == 4
    plain = [receiver_for(key).unprotect(p) for p in got]  # fresh session each: no replay check
    assert [p[12] for p in plain] == [1, 2, 3, 4]
    assert counters["srtp_errors"] == 1
    assert counters["forwarded"] == counters["sent"] == 4
    assert counters["bytes"] == sum(len(p) for p in got)
