"""Pause / resume / stop applied to the committed output timeline.

A pause covers an interval of *output positions* (``Mixer`` samples, i.e. call time since the
anchor), so it cuts exactly the audio that was sent while the recording was paused, whatever the
jitter-buffer delay between arrival and commit. Behaviours (the Twilio ``PauseBehavior`` values):

* ``silence`` (Twilio's default): the paused interval stays in the file as digital silence, so the
  recording's timeline still matches the call's;
* ``skip``: the paused interval is removed; the recording is shorter than the call.

Commands carry either a monotonic wallclock (converted with the mixer's anchor once that is known,
so a pause issued before the first packet still lands in the right place) or, when no arrival
times are available, an output position captured when the command arrived (the newest audio
received at that moment).

``stop`` is a pause that never resumes, with the audio after it discarded rather than silenced.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["PAUSE_BEHAVIORS", "Mark", "PauseSchedule"]

PAUSE_BEHAVIORS = ("silence", "skip")


@dataclass(frozen=True, slots=True)
class Mark:
    """When a command happened: a monotonic time if known, and the position fallback."""

    wall: float | None
    position: int


Resolver = Callable[[Mark], int]


@dataclass(slots=True)
class _Interval:
    start: Mark
    end: Mark | None  # None while still paused
    behavior: str


class PauseSchedule:
    """Records pause intervals and applies them to committed output chunks."""

    def __init__(self) -> None:
        self._intervals: list[_Interval] = []
        self._stop: Mark | None = None
        self.removed_samples = 0  # samples cut by `skip` (and after `stop`)
        self.silenced_samples = 0  # samples zeroed by `silence`

    @property
    def paused(self) -> bool:
        return bool(self._intervals) and self._intervals[-1].end is None

    @property
    def stopped(self) -> bool:
        return self._stop is not None

    @property
    def stop_mark(self) -> Mark | None:
        return self._stop

    def pause(self, behavior: str, mark: Mark) -> None:
        if behavior not in PAUSE_BEHAVIORS:
            raise ValueError(f"pause behavior must be one of {PAUSE_BEHAVIORS}, not {behavior!r}")
        if self.paused or self.stopped:
            return  # pausing a paused/stopped recording changes nothing (idempotent API semantics)
        self._intervals.append(_Interval(mark, None, behavior))

    def resume(self, mark: Mark) -> None:
        if self.paused and not self.stopped:
            self._intervals[-1].end = mark

    def stop(self, mark: Mark) -> None:
        if self._stop is None:
            self._stop = mark

    def apply(
        self, start: int, frames: npt.NDArray[np.int16], resolve: Resolver
    ) -> npt.NDArray[np.int16]:
        """Return ``frames`` (output positions ``start …``) with pauses applied.

        ``silence`` intervals are zeroed in place on a copy; ``skip`` intervals and everything
        after ``stop`` are removed. Intervals wholly in the past are dropped afterwards, so the
        schedule stays small on long calls with many pauses.
        """
        if not self._intervals and self._stop is None:
            return frames  # the common case: never paused
        n = len(frames)
        end = start + n
        keep = np.ones(n, dtype=bool)
        zero = np.zeros(n, dtype=bool)
        for iv in self._intervals:
            a = resolve(iv.start)
            b = end if iv.end is None else resolve(iv.end)
            lo, hi = max(a, start) - start, min(b, end) - start
            if lo >= hi:
                continue
            if iv.behavior == "skip":
                keep[lo:hi] = False
            else:
                zero[lo:hi] = True
        if self._stop is not None:
            keep[max(0, resolve(self._stop) - start) :] = False
        zero &= keep
        out = frames
        if zero.any():
            out = frames.copy()
            out[zero] = 0
            self.silenced_samples += int(zero.sum())
        if not keep.all():
            self.removed_samples += n - int(keep.sum())
            out = out[keep]
        self._intervals = [
            iv for iv in self._intervals if iv.end is None or resolve(iv.end) > end
        ]
        return out
