"""``Trim=trim-silence``: cut leading and trailing silence, streaming.

Silence is decided per block (default 20 ms, one G.711 packet): a block is *audible* when the RMS
level of any channel reaches ``threshold_dbfs`` (default -50 dBFS, where 0 dBFS is a full-scale
int16 square wave, RMS 32767). Block RMS rather than a per-sample peak, so a lone click or the
±8 idle-pattern noise of a G.711 line does not count as speech, and a quiet talker at -40 dBFS
does. Trimming is to block boundaries.

Leading silence is dropped as it streams (nothing is written until the first audible block).
Trailing silence cannot be known until the end, so everything after the first audible block is
written and the trimmer remembers where the last audible block ended; the recorder truncates the
file there when it finalises. Memory: at most one partial block is held.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["SilenceTrimmer", "dbfs_to_rms"]


def dbfs_to_rms(threshold_dbfs: float) -> float:
    """RMS amplitude (int16 units) of a level in dBFS."""
    return 32767.0 * 10.0 ** (threshold_dbfs / 20.0)


class SilenceTrimmer:
    """Drops leading silent blocks; tracks the end of the last audible block written."""

    def __init__(
        self, clock_rate: int, channels: int, threshold_dbfs: float = -50.0, block_ms: float = 20.0
    ) -> None:
        if threshold_dbfs > 0 or math.isnan(threshold_dbfs):
            raise ValueError("threshold_dbfs must be <= 0")
        self.block = max(1, round(block_ms * clock_rate / 1000))
        # Compare mean squares, not RMS: no sqrt per block.
        self._threshold_ms = dbfs_to_rms(threshold_dbfs) ** 2
        self._carry = np.empty((0, channels), dtype=np.int16)
        self.started = False  # an audible block has been seen (writing has begun)
        self.written = 0  # frames passed on for writing
        self.audible_end = 0  # frames written up to the end of the last audible block

    @property
    def held(self) -> int:
        """Frames held back (the current partial block)."""
        return len(self._carry)

    def _audible(self, blocks: npt.NDArray[np.int16]) -> npt.NDArray[np.bool_]:
        """For blocks shaped (count, block, channels): is any channel at/above the threshold?"""
        squares = blocks.astype(np.float64) ** 2
        return (squares.mean(axis=1) >= self._threshold_ms).any(axis=1)

    def feed(self, frames: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
        """Take committed frames; return the frames to write now (possibly empty)."""
        data = np.concatenate((self._carry, frames)) if len(self._carry) else frames
        whole = len(data) - len(data) % self.block
        self._carry = data[whole:].copy()
        return self._scan(data[:whole])

    def finish(self) -> npt.NDArray[np.int16]:
        """The final partial block, judged on its own; returns frames still to write."""
        data, self._carry = self._carry, self._carry[:0]
        return self._scan(data, partial=True)

    def _scan(self, data: npt.NDArray[np.int16], partial: bool = False) -> npt.NDArray[np.int16]:
        if len(data) == 0:
            return data
        size = len(data) if partial else self.block
        blocks = data.reshape(len(data) // size, size, data.shape[1])
        audible = np.flatnonzero(self._audible(blocks))
        if not self.started:
            if len(audible) == 0:
                return data[:0]
            self.started = True
            data = data[audible[0] * size :]
            audible = audible - audible[0]
        if len(audible):
            self.audible_end = self.written + (int(audible[-1]) + 1) * size
        self.written += len(data)
        return data
