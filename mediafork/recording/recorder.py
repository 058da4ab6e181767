"""``CallRecording``: one local recording of one call, from RTP batches to a finished WAV file.

Pipeline per committed chunk (all streaming, bounded memory)::

    feed(track, batch) → TrackTimeline (jitter, dedup, gaps) ─┐
                                                              ├→ Mixer (align, mono/dual)
    feed(other, batch) → TrackTimeline ───────────────────────┘      → PauseSchedule (skip/silence/stop)
                                                                     → SilenceTrimmer (optional)
                                                                     → WavWriter (.partial → final)

The object is not thread-safe: the media worker's consumer (one asyncio task or thread per
recording ring) calls it; control commands (pause/resume/stop) must be delivered on the same
thread/loop, in order with the batches.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .batch import PacketBatch
from .g711 import decoder_for
from .mixer import CHANNEL_ORDER, Mixer
from .pause import Mark, PauseSchedule
from .timeline import TimelineStats, TrackTimeline
from .trim import SilenceTrimmer
from .wavwriter import WavWriter, recover

__all__ = [
    "ERROR_NO_AUDIO",
    "CallRecording",
    "RecordingOptions",
    "RecordingResult",
]

# Twilio error 16102 "Voice Recording: Unavailable because recording is silent": the recording
# captured no audio (no packets, everything paused/skipped, or trimmed away entirely).
ERROR_NO_AUDIO = 16102

# RTP static payload types (RFC 3551) of the codecs we can record.
_STATIC_PT = {"PCMU": 0, "PCMA": 8}

_TRACKS = {"inbound": ("inbound",), "outbound": ("outbound",), "both": CHANNEL_ORDER}


@dataclass(frozen=True, slots=True)
class RecordingOptions:
    """What the Recordings API asked for, plus tuning knobs with safe defaults."""

    channels: str = "mono"  # RecordingChannels: mono | dual
    track: str = "both"  # RecordingTrack: inbound | outbound | both
    trim: str = "do-not-trim"  # Trim: trim-silence | do-not-trim
    codec: str = "PCMU"  # the call's codec name (host call API "codec.name")
    clock_rate: int = 8000  # the call's RTP clock rate
    payload_type: int | None = None  # None: the codec's static type; batches' pt filtered by it
    jitter_ms: float = 60.0  # reordering absorbed per track
    max_skew_ms: float = 2000.0  # how far one track may run ahead of the other before padding
    resync_ms: float = 1000.0  # timestamp/arrival disagreement treated as a discontinuity
    trim_threshold_dbfs: float = -50.0  # block RMS at/above which audio is not silence
    trim_block_ms: float = 20.0

    def __post_init__(self) -> None:
        if self.channels not in ("mono", "dual"):
            raise ValueError(f"RecordingChannels must be mono or dual, not {self.channels!r}")
        if self.track not in _TRACKS:
            raise ValueError(f"RecordingTrack must be inbound, outbound or both, not {self.track!r}")
        if self.trim not in ("trim-silence", "do-not-trim"):
            raise ValueError(f"Trim must be trim-silence or do-not-trim, not {self.trim!r}")
        decoder_for(self.codec)  # raises ValueError for an unsupported codec


@dataclass(frozen=True, slots=True)
class RecordingResult:
    """The outcome handed to the control plane (store, callbacks, ``.wav`` download)."""

    path: Path | None  # the final WAV, or None when absent
    duration_seconds: float
    samples: int  # frames per channel in the file
    channels: int
    status: str  # "completed" | "absent"
    error_code: int | None  # None when completed
    stats: dict[str, TimelineStats] = field(default_factory=dict)
    io_error: str | None = None  # set when writing failed; the file holds what reached the disk

    @property
    def duration(self) -> str:
        """The API's ``duration`` / ``RecordingDuration``: whole seconds as a string."""
        return str(round(self.duration_seconds))


class CallRecording:
    """One recording of one call. Feed batches; pause/resume/stop; ``finish()`` once."""

    def __init__(self, path: str | os.PathLike[str], options: RecordingOptions | None = None) -> None:
        self.options = opts = options or RecordingOptions()
        self.clock_rate = opts.clock_rate
        table = decoder_for(opts.codec)
        pt = opts.payload_type if opts.payload_type is not None else _STATIC_PT[opts.codec.upper()]
        self.timelines = {
            name: TrackTimeline(table, opts.clock_rate, opts.jitter_ms, opts.resync_ms, pt)
            for name in _TRACKS[opts.track]
        }
        self.mixer = Mixer(self.timelines, opts.channels, opts.clock_rate, opts.max_skew_ms)
        self.channels = self.mixer.channels
        self.pauses = PauseSchedule()
        self.trimmer = (
            SilenceTrimmer(opts.clock_rate, self.channels, opts.trim_threshold_dbfs, opts.trim_block_ms)
            if opts.trim == "trim-silence"
            else None
        )
        self.writer = WavWriter(path, self.channels, opts.clock_rate)
        self.ignored_batches = 0  # batches for a track this recording does not record
        self.result: RecordingResult | None = None
        self.io_error: OSError | None = None  # first write failure (disk full, I/O error)
        self.peak_buffered_samples = 0  # high-water mark of samples held in memory (for tests/metrics)

    # ------------------------------------------------------------------ input

    def feed(self, track: str, batch: PacketBatch) -> None:
        """Add one batch of ``track``'s packets (``"inbound"`` or ``"outbound"``)."""
        if self.result is not None:
            raise RuntimeError("recording already finished")
        if track not in CHANNEL_ORDER:
            raise ValueError(f"track must be 'inbound' or 'outbound', not {track!r}")
        timeline = self.timelines.get(track)
        if timeline is None:
            self.ignored_batches += 1
            return
        if self.io_error is not None:
            return  # the file can no longer grow; finish() keeps what reached the disk
        stop = self.pauses.stop_mark
        if stop is not None and self._resolve(stop) <= self.mixer.position:
            return  # everything from here on would be discarded anyway
        timeline.push(batch)
        try:
            self._drain(self.mixer.pump())
        except OSError as exc:
            # Never let a disk problem take down the media consumer: stop writing, remember why,
            # and let finish() salvage the file.
            self.io_error = exc
            self.writer.abandon()

    # --------------------------------------------------------------- commands

    def _mark(self, now: float | None) -> Mark:
        # Fallback position (no arrival clock): the newest audio received when the command came.
        return Mark(now, self.mixer.received_end())

    def _resolve(self, mark: Mark) -> int:
        if mark.wall is not None:
            pos = self.mixer.wall_to_position(mark.wall)
            if pos is not None:
                return pos
        return mark.position

    def pause(self, behavior: str = "silence", now: float | None = None) -> None:
        """``Status=paused`` with ``PauseBehavior`` (``silence``, Twilio's default, or ``skip``).

        ``now`` is the command's monotonic time (same clock as the batches' arrival times).
        """
        self.pauses.pause(behavior, self._mark(now))

    def resume(self, now: float | None = None) -> None:
        """``Status=in-progress`` after a pause."""
        self.pauses.resume(self._mark(now))

    def stop(self, now: float | None = None) -> None:
        """``Status=stopped``: audio after ``now`` is not recorded. Call ``finish()`` next."""
        self.pauses.stop(self._mark(now))

    @property
    def status(self) -> str:
        if self.result is not None:
            return self.result.status
        if self.pauses.stopped:
            return "stopped"
        return "paused" if self.pauses.paused else "in-progress"

    # ----------------------------------------------------------------- output

    def _drain(self, chunks: Iterable[tuple[int, npt.NDArray[np.int16]]]) -> None:
        self.peak_buffered_samples = max(self.peak_buffered_samples, self.buffered_samples)
        for start, frames in chunks:
            self._write(self.pauses.apply(start, frames, self._resolve))

    def _write(self, frames: npt.NDArray[np.int16]) -> None:
        if self.trimmer is not None:
            frames = self.trimmer.feed(frames)
        if len(frames):
            self.writer.write(frames)

    @property
    def buffered_samples(self) -> int:
        """Audio samples held in memory across the pipeline (bounded; see ``mixer``)."""
        carry = 0 if self.trimmer is None else self.trimmer.held
        return self.mixer.buffered_samples + carry

    def finish(self) -> RecordingResult:
        """Flush, finalise the WAV (or delete it when empty) and report. Idempotent."""
        if self.result is not None:
            return self.result
        if self.io_error is None:
            try:
                return self._finish_normally()
            except OSError as exc:
                self.io_error = exc
                self.writer.abandon()
        return self._finish_from_disk()

    def _finish_from_disk(self) -> RecordingResult:
        # The partial file may end in a torn frame: recover() keeps the whole frames on disk.
        stats = {name: tl.stats for name, tl in self.timelines.items()}
        error = f"{type(self.io_error).__name__}: {self.io_error}"
        try:
            rec = recover(self.writer.temp_path)
        except OSError:
            self.writer.temp_path.unlink(missing_ok=True)
            rec = None
        if rec is None or rec.status != "completed" or rec.path is None:
            self.result = RecordingResult(
                None, 0.0, 0, self.channels, "absent", ERROR_NO_AUDIO, stats, error
            )
        else:
            self.result = RecordingResult(
                rec.path, rec.duration_seconds, rec.frames, self.channels, "completed", None, stats, error
            )
        return self.result

    def _finish_normally(self) -> RecordingResult:
        try:
            self._drain(self.mixer.finish())
            if self.trimmer is not None:
                tail = self.trimmer.finish()
                if len(tail):
                    self.writer.write(tail)
                self.writer.truncate(self.trimmer.audible_end)
            stats = {name: tl.stats for name, tl in self.timelines.items()}
            if self.writer.frames == 0:
                self.writer.abort()
                self.result = RecordingResult(None, 0.0, 0, self.channels, "absent", ERROR_NO_AUDIO, stats)
            else:
                frames = self.writer.frames
                path = self.writer.finalize()
                self.result = RecordingResult(
                    path, frames / self.clock_rate, frames, self.channels, "completed", None, stats
                )
        except OSError:
            raise
        except BaseException:
            self.writer.abort()
            raise
        return self.result

    def abort(self) -> None:
        """Discard the recording (resource deleted before completion): remove the partial file."""
        self.writer.abort()
        if self.result is None:
            self.result = RecordingResult(None, 0.0, 0, self.channels, "absent", ERROR_NO_AUDIO)
