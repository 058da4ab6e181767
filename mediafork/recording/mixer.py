"""Aligns the recorded tracks on one output timeline and lays them out as mono or dual frames.

Alignment rule. The inbound and outbound tracks have independent RTP timestamp bases (and possibly
independent senders), so their timestamps cannot be compared. Each track is placed on the output
timeline by the *arrival time of its first packet*: output sample 0 is the earliest first arrival
among the recorded tracks (the *anchor*), and a track whose first packet arrived ``d`` seconds later
starts at output sample ``round(d * clock_rate)``. From then on each track advances by its own RTP
timestamps (gaps → silence, see ``timeline``). If a later-starting track turns out to have arrived
earlier than the anchor before any audio was committed, the anchor moves back; after that, it is
clamped to what is already committed (its first samples shift by at most one batch). Without arrival
times a track starts at the output position it is first seen at.

Bounded buffering. Output is committed up to the point every recorded track has released audio
for. A track that sends nothing (one-way audio, DTX without a timestamp jump yet, a track that has
not started) would stall that point forever, so a track is never allowed to lag the leading track
by more than ``max_skew``: it is advanced with silence. Memory per call is therefore about
``max_skew`` of audio per track plus the jitter windows, regardless of call length.

Layout: ``dual`` is two channels, inbound left and outbound right (a channel whose track is not
recorded is silent, so the layout never changes with the track selection); ``mono`` is the
saturating sum (int32 sum clipped to int16) of the recorded tracks.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from .timeline import TrackTimeline

__all__ = ["CHANNEL_ORDER", "Mixer"]

# Dual-channel order: left = inbound (what the platform receives from the caller), right = outbound.
CHANNEL_ORDER = ("inbound", "outbound")


class Mixer:
    """Pulls released samples from the track timelines and yields committed output frames."""

    def __init__(
        self,
        timelines: dict[str, TrackTimeline],
        layout: str,
        clock_rate: int,
        max_skew_ms: float = 2000.0,
        chunk_ms: float = 1000.0,
    ) -> None:
        if layout not in ("mono", "dual"):
            raise ValueError(f"layout must be 'mono' or 'dual', not {layout!r}")
        if not timelines or any(name not in CHANNEL_ORDER for name in timelines):
            raise ValueError(f"timelines must be a non-empty subset of {CHANNEL_ORDER}")
        self.timelines = timelines
        self.layout = layout
        self.channels = 2 if layout == "dual" else 1
        self.clock_rate = clock_rate
        self.max_skew = round(max_skew_ms * clock_rate / 1000)
        # Output is produced in chunks so a long forced silence is never one huge allocation.
        self.chunk = max(1, round(chunk_ms * clock_rate / 1000))
        self.anchor: float | None = None  # monotonic time of output sample 0
        self.offsets: dict[str, int] = {}  # output position of each started track's q == 0
        self.position = 0  # output samples committed so far

    # --------------------------------------------------------------- alignment

    def _place_new_tracks(self) -> None:
        for name, tl in self.timelines.items():
            if name in self.offsets or not tl.started:
                continue
            arrival = tl.first_arrival
            if arrival is None:
                self.offsets[name] = self.position
                continue
            if self.anchor is None:
                self.anchor = arrival
            elif arrival < self.anchor and self.position == 0:
                # Nothing committed yet: move output 0 back to this earlier first packet.
                shift = round((self.anchor - arrival) * self.clock_rate)
                for other in self.offsets:
                    self.offsets[other] += shift
                self.anchor = arrival
            self.offsets[name] = max(self.position, round((arrival - self.anchor) * self.clock_rate))

    def wall_to_position(self, wall: float) -> int | None:
        """Output sample of a monotonic time, or None while no track gave an arrival time."""
        if self.anchor is None:
            return None
        return round((wall - self.anchor) * self.clock_rate)

    def received_end(self) -> int:
        """Output position just after the newest audio received on any track (released or not)."""
        self._place_new_tracks()
        ends = [self.offsets[n] + tl.received_end for n, tl in self.timelines.items() if n in self.offsets]
        return max(ends, default=self.position)

    # ------------------------------------------------------------------ output

    def pump(self) -> Iterator[tuple[int, npt.NDArray[np.int16]]]:
        """Yield ``(output_position, frames)`` for everything that can be committed now."""
        self._place_new_tracks()
        if not self.offsets:
            return
        ends = {n: self.offsets[n] + self.timelines[n].head for n in self.offsets}
        floor = max(ends.values()) - self.max_skew
        for name, end in ends.items():
            if end < floor:
                self.timelines[name].advance_to(floor - self.offsets[name])
                ends[name] = self.offsets[name] + self.timelines[name].head
        commit_to = min(ends.values())
        if len(self.offsets) < len(self.timelines):
            # A track that has not started is silence, but only up to the skew bound: it may still
            # start (slightly) earlier than the leader's newest audio.
            commit_to = min(commit_to, floor)
        yield from self._commit(commit_to)

    def finish(self) -> Iterator[tuple[int, npt.NDArray[np.int16]]]:
        """Release every jitter window and commit to the end of the longest track."""
        for tl in self.timelines.values():
            tl.flush()
        self._place_new_tracks()  # after the flush: a very short track only starts now
        if not self.offsets:
            return
        end = max(self.offsets[n] + self.timelines[n].head for n in self.offsets)
        for name in self.offsets:
            self.timelines[name].advance_to(end - self.offsets[name])
        yield from self._commit(end)

    def _commit(self, commit_to: int) -> Iterator[tuple[int, npt.NDArray[np.int16]]]:
        while self.position < commit_to:
            n = min(self.chunk, commit_to - self.position)
            start = self.position
            yield start, self._frames(start, n)
            self.position = start + n

    def _track_samples(self, name: str, start: int, n: int) -> npt.NDArray[np.int16]:
        tl = self.timelines.get(name)
        if tl is None or name not in self.offsets:
            return np.zeros(n, dtype=np.int16)
        lead = min(n, max(0, self.offsets[name] - start))  # before the track's first sample
        if lead == 0:
            return tl.read(n)
        out = np.zeros(n, dtype=np.int16)
        out[lead:] = tl.read(n - lead)
        return out

    def _frames(self, start: int, n: int) -> npt.NDArray[np.int16]:
        if self.layout == "dual":
            frames = np.empty((n, 2), dtype=np.int16)
            for channel, name in enumerate(CHANNEL_ORDER):
                frames[:, channel] = self._track_samples(name, start, n)
            return frames
        total = np.zeros(n, dtype=np.int32)
        for name in self.timelines:
            total += self._track_samples(name, start, n)
        return np.clip(total, -32768, 32767).astype(np.int16).reshape(n, 1)

    @property
    def buffered_samples(self) -> int:
        """Samples held by the timelines (the mixer itself holds none between calls)."""
        return sum(tl.buffered_samples for tl in self.timelines.values())
