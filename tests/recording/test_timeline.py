"""Per-track reassembly: reordering, duplicates, loss, DTX, late packets, wrap, resync, bounds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mediafork.recording.batch import PacketBatch
from mediafork.recording.g711 import ULAW_TO_LINEAR
from mediafork.recording.timeline import TrackTimeline

N = 160


def code(k: int) -> int:
    # A distinct, non-silent µ-law code per packet so every packet's position is recognisable.
    return 0x10 + (k % 0x60)


def pkt(k: int, seq0: int = 0, ts0: int = 0, ts_extra: int = 0, t0: float = 0.0):
    return ((seq0 + k) & 0xFFFF, (ts0 + k * N + ts_extra) & 0xFFFFFFFF, bytes([code(k)]) * N,
            t0 + (k * N + ts_extra) / 8000)


def feed(tl: TrackTimeline, pkts, batch: int = 5) -> None:
    for i in range(0, len(pkts), batch):
        part = pkts[i : i + batch]
        tl.push(PacketBatch.from_packets([p[:3] for p in part], arrival=[p[3] for p in part]))


def drain(tl: TrackTimeline) -> np.ndarray:
    tl.flush()
    return tl.read(tl.available)


def expected(ks, gaps: dict[int, int] | None = None) -> np.ndarray:
    """Audio for packets ``ks`` in order; ``gaps[k]`` silent samples before packet k."""
    parts = []
    for k in ks:
        if gaps and k in gaps:
            parts.append(np.zeros(gaps[k], np.int16))
        parts.append(np.full(N, ULAW_TO_LINEAR[code(k)], np.int16))
    return np.concatenate(parts)


def make(**kw) -> TrackTimeline:
    return TrackTimeline(ULAW_TO_LINEAR, 8000, payload_type=0, **kw)


def test_in_order_stream_is_reproduced_exactly() -> None:
    tl = make()
    feed(tl, [pkt(k) for k in range(50)])
    np.testing.assert_array_equal(drain(tl), expected(range(50)))
    assert tl.stats.packets == 50 and tl.stats.gap_samples == 0


def test_reordering_within_the_window_is_absorbed() -> None:
    order = list(range(50))
    for i in range(1, 48, 4):
        order[i], order[i + 1] = order[i + 1], order[i]  # adjacent swaps, 20 ms late
    order[30], order[32] = order[32], order[30]  # one packet 40 ms late
    tl = make(jitter_ms=60)
    feed(tl, [pkt(k) for k in order])
    np.testing.assert_array_equal(drain(tl), expected(range(50)))
    assert tl.stats.late == 0


def test_duplicates_are_dropped() -> None:
    pkts = [pkt(k) for k in range(20)]
    pkts = pkts[:10] + [pkts[9], pkts[3]] + pkts[10:] + [pkts[19]]
    tl = make()
    feed(tl, pkts)
    np.testing.assert_array_equal(drain(tl), expected(range(20)))
    assert tl.stats.duplicates == 3


def test_loss_becomes_silence_of_the_right_length() -> None:
    lost = {5, 6, 13}
    tl = make()
    feed(tl, [pkt(k) for k in range(20) if k not in lost])
    out = drain(tl)
    assert len(out) == 20 * N
    for k in range(20):
        seg = out[k * N : (k + 1) * N]
        assert (seg == 0).all() if k in lost else (seg == ULAW_TO_LINEAR[code(k)]).all()
    assert tl.stats.gap_samples == 3 * N


def test_dtx_timestamp_jump_becomes_silence() -> None:
    # 10 packets, then the sender stops for 1.5 s (timestamp and arrival both jump), 10 more.
    pkts = [pkt(k) for k in range(10)] + [pkt(k, ts_extra=12000) for k in range(10, 20)]
    tl = make()
    feed(tl, pkts)
    out = drain(tl)
    assert len(out) == 20 * N + 12000
    np.testing.assert_array_equal(out, expected(range(20), gaps={10: 12000}))
    assert tl.stats.resyncs == 0


def test_late_packet_beyond_window_is_counted_and_dropped() -> None:
    pkts = [pkt(k) for k in range(30)]
    late = pkts.pop(5)
    pkts.insert(20, late)  # 300 ms late with a 60 ms window
    tl = make(jitter_ms=60)
    feed(tl, pkts, batch=1)
    out = drain(tl)
    assert tl.stats.late == 1
    assert len(out) == 30 * N
    assert (out[5 * N : 6 * N] == 0).all()


def test_sequence_and_timestamp_wrap_mid_stream() -> None:
    tl = make()
    pkts = [pkt(k, seq0=0xFFFF - 10, ts0=0xFFFFFFFF - 5 * N + 17) for k in range(40)]
    pkts[10], pkts[11] = pkts[11], pkts[10]  # reordered right at the sequence wrap
    feed(tl, pkts)
    np.testing.assert_array_equal(drain(tl), expected(range(40)))


def test_timestamp_reset_is_resynced_from_arrival_time() -> None:
    # The sender re-bases its timestamps (new SSRC after a transfer): a huge backward jump while
    # packets keep arriving every 20 ms. Without resync everything after it would be "late".
    pkts = [pkt(k) for k in range(20)]
    pkts += [(seq, (ts - 5_000_000) & 0xFFFFFFFF, pl, arr) for seq, ts, pl, arr in
             (pkt(k) for k in range(20, 40))]
    tl = make()
    feed(tl, pkts)
    out = drain(tl)
    assert tl.stats.resyncs == 1 and tl.stats.late == 0
    np.testing.assert_array_equal(out, expected(range(40)))


def test_other_payload_types_are_skipped_and_their_time_is_silence() -> None:
    pkts = [pkt(k) for k in range(10)]
    batch = PacketBatch.from_packets(
        [p[:3] for p in pkts], arrival=[p[3] for p in pkts], pt=[0, 0, 0, 101, 0, 0, 13, 0, 0, 0]
    )
    tl = make()
    tl.push(batch)
    out = drain(tl)
    assert tl.stats.other_payload == 2
    assert (out[3 * N : 4 * N] == 0).all() and (out[6 * N : 7 * N] == 0).all()
    assert len(out) == 10 * N


def test_pending_is_bounded_by_the_window() -> None:
    tl = make(jitter_ms=60)
    worst = 0
    for k in range(0, 3000, 5):
        feed(tl, [pkt(j) for j in range(k, k + 5)])
        tl.read(tl.available)
        worst = max(worst, tl.buffered_samples)
    # window (480) + one batch (800) of samples, independent of the 60 s fed
    assert worst <= 480 + 5 * N


def test_advance_to_pads_silence_and_makes_older_packets_late() -> None:
    tl = make()
    feed(tl, [pkt(k) for k in range(5)])
    tl.advance_to(10 * N)
    assert tl.head == 10 * N
    feed(tl, [pkt(8)])
    assert tl.stats.late == 1
    out = drain(tl)
    np.testing.assert_array_equal(out, np.concatenate([expected(range(5)), np.zeros(5 * N, np.int16)]))


def test_read_more_than_available_is_an_error() -> None:
    tl = make()
    with pytest.raises(ValueError):
        tl.read(1)


def test_malformed_batch_is_rejected() -> None:
    with pytest.raises(ValueError):
        PacketBatch(
            seq=np.array([1], np.uint16), ts=np.array([0], np.uint32), payload=b"\xff" * 10,
            offsets=np.array([5]), lengths=np.array([10]),
        )
    with pytest.raises(ValueError):
        PacketBatch(
            seq=np.array([1, 2], np.uint16), ts=np.array([0], np.uint32), payload=b"",
            offsets=np.array([0]), lengths=np.array([0]),
        )


def test_payload_may_be_a_view_into_a_larger_buffer() -> None:
    # The worker may pass a memoryview of its ring with offsets into it, not a compact buffer.
    ring = bytearray(b"\x00" * 4096)
    pkts = [pkt(k) for k in range(3)]
    offsets = [1000, 2000, 3000]
    for off, p in zip(offsets, pkts, strict=True):
        ring[off : off + N] = p[2]
    tl = make()
    tl.push(PacketBatch(
        seq=np.array([p[0] for p in pkts], np.uint16), ts=np.array([p[1] for p in pkts], np.uint32),
        payload=memoryview(ring), offsets=np.array(offsets), lengths=np.array([N] * 3),
    ))
    np.testing.assert_array_equal(drain(tl), expected(range(3)))


def test_first_packets_reordered_keep_the_earliest_as_the_start() -> None:
    pkts = [pkt(k, t0=50.0) for k in range(10)]
    pkts[0], pkts[1] = pkts[1], pkts[0]  # packet 1 arrives first
    tl = make()
    feed(tl, pkts, batch=1)
    np.testing.assert_array_equal(drain(tl), expected(range(10)))
    assert tl.stats.late == 0
    assert tl.first_arrival == pytest.approx(50.0)


def test_buffered_samples_counts_audio_not_silence() -> None:
    tl = make(jitter_ms=0)
    feed(tl, [pkt(0), pkt(1, ts_extra=80000)])  # 10 s DTX gap between two packets
    tl.flush()
    assert tl.available == 2 * N + 80000
    assert tl.buffered_samples == 2 * N  # the gap is a count, not a buffer
    tl.read(N + 100)
    assert tl.buffered_samples == N
    tl.read(tl.available)
    assert tl.buffered_samples == 0


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(5, 120),
    delays=st.lists(st.floats(0, 2.4), min_size=120, max_size=120),
    lost=st.sets(st.integers(0, 119), max_size=20),
    dups=st.sets(st.integers(0, 119), max_size=10),
    batch=st.integers(1, 8),
    seq0=st.integers(0, 0xFFFF),
    ts0=st.integers(0, 0xFFFFFFFF),
)
def test_any_reordering_within_the_window_reconstructs_the_stream(
    n, delays, lost, dups, batch, seq0, ts0
) -> None:
    # Each packet is delayed by < 2.5 packet times (50 ms) with a 60 ms window, some are lost and
    # some duplicated (the copy arrives later): every received packet must land exactly in place.
    kept = [k for k in range(n) if k not in lost]
    if not kept:
        return
    events = []
    for k in kept:
        events.append((k + delays[k], pkt(k, seq0=seq0, ts0=ts0)))
        if k in dups:
            events.append((k + delays[k] + 0.5, pkt(k, seq0=seq0, ts0=ts0)))
    events.sort(key=lambda e: e[0])
    tl = make(jitter_ms=60)
    feed(tl, [(s, t, p, 100.0 + when * 0.02) for when, (s, t, p, _) in events], batch=batch)
    out = drain(tl)
    first, last = kept[0], kept[-1]
    assert len(out) == (last - first + 1) * N
    for k in range(first, last + 1):
        seg = out[(k - first) * N : (k - first + 1) * N]
        want = 0 if k in lost else ULAW_TO_LINEAR[code(k)]
        assert (seg == want).all(), k
    assert tl.stats.late == 0 and tl.stats.resyncs == 0
    assert tl.stats.duplicates == len(dups & set(kept))
