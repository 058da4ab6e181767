"""Per-track reassembly of RTP packets onto a continuous sample timeline.

One ``TrackTimeline`` per recorded track. Packets are placed by their RTP timestamp (not their
arrival order or sequence number), so:

* reordering within the jitter window is absorbed: packets wait in a small heap until the newest
  packet is ``jitter`` samples ahead of them, then are released in timestamp order;
* a gap in timestamps (loss, or silence suppression / DTX where the sender simply stops sending)
  becomes silence of exactly the missing length when the next packet is released;
* duplicates (same extended sequence number) are dropped; packets older than what was already
  released are *late*, counted and dropped (they cannot be inserted into audio already handed on);
* sequence numbers and timestamps are extended to 64 bits (``wrap.Unwrapper``), so wrap-around is
  invisible here;
* memory is bounded: the heap holds at most a jitter window of packets, silence is stored as a
  count (never materialised as a buffer), and released audio waits in a FIFO that the mixer drains
  (the mixer bounds how far one track may run ahead of the other).

Positions are in *track samples*: ``q = extended_ts - base``, where ``base`` is the first packet's
timestamp, so ``q == 0`` is the first recorded sample of the track.

Timestamp discontinuities: when arrival times are supplied, a packet whose timestamp jumps by more
than ``resync`` samples from the previous packet *and* disagrees with the elapsed arrival time by
more than ``resync`` is treated as a timestamp reset (new SSRC, a media server re-basing its
stream): the track is re-based so that packet lands where its arrival time says. Honest DTX gaps
(timestamp jump ≈ elapsed time) and network stalls (small timestamp step, late arrival) are left
alone.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .batch import PacketBatch
from .wrap import Unwrapper

__all__ = ["TimelineStats", "TrackTimeline"]

# How many recent sequence numbers to remember for duplicate detection. A duplicate older than this
# is still caught by the "late" rule (its audio was already released), just counted differently.
_SEEN_LIMIT = 1024


@dataclass(slots=True)
class TimelineStats:
    """Counters for one track, for logs, metrics and tests."""

    packets: int = 0  # accepted into the jitter window
    duplicates: int = 0  # same sequence number seen before
    late: int = 0  # arrived after their position was released; dropped
    trimmed: int = 0  # partially overlapped released audio; the overlap was cut
    other_payload: int = 0  # payload type not the recorded codec (DTMF, CN): skipped
    empty: int = 0  # zero-length payloads
    resyncs: int = 0  # timestamp discontinuities re-based from arrival time
    gap_samples: int = 0  # silence inserted for loss / DTX / forced advance
    audio_samples: int = 0  # decoded samples released


class TrackTimeline:
    """Reorders, de-duplicates and gap-fills one track; hands out contiguous int16 samples."""

    def __init__(
        self,
        table: npt.NDArray[np.int16],
        clock_rate: int = 8000,
        jitter_ms: float = 60.0,
        resync_ms: float = 1000.0,
        payload_type: int | None = None,
    ) -> None:
        if clock_rate <= 0:
            raise ValueError("clock_rate must be positive")
        if jitter_ms < 0 or resync_ms <= 0:
            raise ValueError("jitter_ms must be >= 0 and resync_ms > 0")
        self._table = table
        self.clock_rate = clock_rate
        self.jitter = round(jitter_ms * clock_rate / 1000)
        self.resync = round(resync_ms * clock_rate / 1000)
        self.payload_type = payload_type
        self.stats = TimelineStats()

        self._seq = Unwrapper(16)
        self._ts = Unwrapper(32)
        self._base: int | None = None  # extended ts of q == 0 (after any re-basing)
        self.first_arrival: float | None = None
        self._ref_q: int | None = None  # start of the previous accepted packet ...
        self._ref_arrival: float | None = None  # ... and when it arrived
        self._max_end = 0  # highest packet end (q) accepted so far
        self._pending: list[tuple[int, int, npt.NDArray[np.int16]]] = []  # heap of (q, seq, pcm)
        self._pending_samples = 0
        self._seen: dict[int, None] = {}  # ordered set of recent extended sequence numbers

        self.head = 0  # q up to which samples have been released into the FIFO
        self._released = False
        self._fifo: deque[npt.NDArray[np.int16] | int] = deque()  # arrays, or ints = silence
        self._fifo_samples = 0
        self._fifo_audio = 0  # the part of _fifo_samples that is real audio (held in memory)

    # ------------------------------------------------------------------ input

    @property
    def started(self) -> bool:
        """True once audio has been released (the track's start is then final)."""
        return self._released

    def push(self, batch: PacketBatch) -> None:
        """Accept one batch (arrival order); release whatever is now older than the window."""
        n = len(batch)
        if n == 0:
            return
        # One table lookup for the whole batch; packets are then views into it. Only the span the
        # packets occupy is decoded, in case the worker hands a view of a larger ring buffer.
        offs = np.asarray(batch.offsets, dtype=np.int64)
        lo = int(offs.min())
        hi = int((offs + np.asarray(batch.lengths, dtype=np.int64)).max())
        pcm_all = self._table[np.frombuffer(batch.payload, dtype=np.uint8)[lo:hi]]
        ext_seq = self._seq.extend_array(batch.seq)
        ext_ts = self._ts.extend_array(batch.ts)
        offsets = (offs - lo).tolist()
        lengths = np.asarray(batch.lengths, dtype=np.int64).tolist()
        arrival = None if batch.arrival is None else np.asarray(batch.arrival, np.float64).tolist()
        pts = None
        if batch.pt is not None and self.payload_type is not None:
            pts = np.asarray(batch.pt).tolist()
        stats = self.stats
        for i, (seq, ts) in enumerate(zip(ext_seq.tolist(), ext_ts.tolist(), strict=True)):
            if pts is not None and pts[i] != self.payload_type:
                stats.other_payload += 1
                continue
            length = lengths[i]
            if length == 0:
                stats.empty += 1
                continue
            if seq in self._seen:
                stats.duplicates += 1
                continue
            arr = None if arrival is None else arrival[i]
            if self._base is None:
                self._base = ts
                self.first_arrival = arr
            q = ts - self._base
            if arr is not None and self._ref_q is not None and self._ref_arrival is not None:
                q = self._maybe_resync(q, ts, arr)
            if q < 0 and not self._released and -q <= self.resync:
                q = self._rebase_earlier(q)
            if q + length <= self.head:
                stats.late += 1
                continue
            self._remember(seq)
            pcm = pcm_all[offsets[i] : offsets[i] + length]
            heapq.heappush(self._pending, (q, seq, pcm))
            self._pending_samples += length
            stats.packets += 1
            self._max_end = max(self._max_end, q + length)
            if arr is not None:
                self._ref_q, self._ref_arrival = q, arr
        self._release(self._max_end - self.jitter)

    def _maybe_resync(self, q: int, ts: int, arrival: float) -> int:
        assert self._ref_q is not None and self._ref_arrival is not None and self._base is not None
        step = q - self._ref_q
        expected = self._ref_q + round((arrival - self._ref_arrival) * self.clock_rate)
        if abs(step) <= self.resync or abs(q - expected) <= self.resync:
            return q
        # A timestamp discontinuity: trust the arrival clock for this jump, never land behind audio
        # already released, and keep the new mapping for the packets that follow.
        new_q = max(expected, self.head, 0)
        self._base = ts - new_q
        self.stats.resyncs += 1
        return new_q

    def _rebase_earlier(self, q: int) -> int:
        """The first packets arrived out of order: move q == 0 back to this earlier packet.

        Only possible before anything is released (the mixer places a track when it starts
        releasing), so the track's start is its earliest packet, not its first-arriving one.
        """
        assert self._base is not None
        shift = -q
        self._base -= shift
        self._pending = [(pq + shift, seq, pcm) for pq, seq, pcm in self._pending]
        heapq.heapify(self._pending)
        self._max_end += shift
        if self._ref_q is not None:
            self._ref_q += shift
        if self.first_arrival is not None:
            self.first_arrival -= shift / self.clock_rate
        return 0

    def _remember(self, seq: int) -> None:
        self._seen[seq] = None
        if len(self._seen) > _SEEN_LIMIT:
            del self._seen[next(iter(self._seen))]

    # ---------------------------------------------------------------- release

    def _release(self, limit: int) -> None:
        """Move every pending packet starting before ``limit`` to the FIFO, filling gaps."""
        pending = self._pending
        while pending and pending[0][0] < limit:
            q, _seq, pcm = heapq.heappop(pending)
            self._pending_samples -= len(pcm)
            end = q + len(pcm)
            if end <= self.head:
                self.stats.late += 1  # overtaken while waiting (e.g. by a forced advance)
                continue
            if q < self.head:
                # Overlaps audio already released (a duplicate with a new sequence number, or a
                # sender that re-sent with a shifted timestamp): keep only the new part.
                pcm = pcm[self.head - q :]
                self.stats.trimmed += 1
            elif q > self.head:
                self._append_silence(q - self.head)
            self._released = True
            self._fifo.append(pcm)
            self._fifo_samples += len(pcm)
            self._fifo_audio += len(pcm)
            self.stats.audio_samples += len(pcm)
            self.head = end

    def _append_silence(self, n: int) -> None:
        self.stats.gap_samples += n
        self._fifo.append(n)
        self._fifo_samples += n
        self.head += n

    def flush(self) -> None:
        """Release everything still in the jitter window (end of recording)."""
        self._release(self._max_end + 1)

    def advance_to(self, q: int) -> None:
        """Make ``head >= q``: release pending packets that start before ``q``, then pad silence.

        Used by the mixer when this track has fallen too far behind the other (the sender stopped
        sending without a timestamp jump yet, e.g. DTX or a one-way call), so the other track's
        audio need not wait. Packets for positions before ``q`` that arrive later are late.
        """
        self._release(q)
        if self.head < q:
            self._append_silence(q - self.head)
            self._released = True
        self._max_end = max(self._max_end, self.head)

    # ----------------------------------------------------------------- output

    @property
    def received_end(self) -> int:
        """Track position just after the newest audio accepted (released or still pending)."""
        return max(self._max_end, self.head)

    @property
    def available(self) -> int:
        """Samples released and not yet read."""
        return self._fifo_samples

    @property
    def buffered_samples(self) -> int:
        """Samples held in memory (pending packets + released audio not yet read; not silence)."""
        return self._pending_samples + self._fifo_audio

    def read(self, n: int) -> npt.NDArray[np.int16]:
        """Pop exactly ``n`` released samples (``n <= available``) as one int16 array."""
        if n > self._fifo_samples:
            raise ValueError(f"read({n}) but only {self._fifo_samples} samples released")
        out = np.zeros(n, dtype=np.int16)
        pos = 0
        fifo = self._fifo
        while pos < n:
            seg = fifo[0]
            size = seg if isinstance(seg, int) else len(seg)
            take = min(size, n - pos)
            if not isinstance(seg, int):
                out[pos : pos + take] = seg[:take]
                self._fifo_audio -= take
            if take == size:
                fifo.popleft()
            else:
                fifo[0] = (seg - take) if isinstance(seg, int) else seg[take:]
            pos += take
        self._fifo_samples -= n
        return out
