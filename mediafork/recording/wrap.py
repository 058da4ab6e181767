"""Wrap-safe arithmetic for RTP's 16-bit sequence numbers and 32-bit timestamps.

RTP counters wrap (a 16-bit sequence every ~22 minutes at 50 packets/s, a 32-bit 8 kHz timestamp
every ~6 days, and both start at random values so either can wrap seconds into a call). Everything
downstream works on 64-bit *extended* values, produced here by taking the shortest signed distance
from the previous extended value (RFC 3550 §A.1 uses the same idea for the sequence number).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["Unwrapper", "signed_delta"]


def signed_delta(a: int, b: int, bits: int) -> int:
    """Shortest signed distance from ``b`` to ``a`` on a ``bits``-bit circle: a - b in [-2^(bits-1), 2^(bits-1))."""
    half = 1 << (bits - 1)
    return ((a - b + half) & ((1 << bits) - 1)) - half


class Unwrapper:
    """Extends a wrapping counter to 64 bits relative to the last value it saw.

    Each value is placed at the extended position nearest the previous one, so reordering and
    wrap-around within half the counter range are both handled; a jump of more than half the range
    is indistinguishable from a jump backwards and is resolved as the shorter of the two.
    """

    __slots__ = ("_bits", "_last")

    def __init__(self, bits: int) -> None:
        if bits not in (16, 32):
            raise ValueError("RTP counters are 16 or 32 bits")
        self._bits = bits
        self._last: int | None = None

    @property
    def last(self) -> int | None:
        """The extended value of the previous call, or None before the first."""
        return self._last

    def extend(self, value: int) -> int:
        """The 64-bit extended value of one raw counter value."""
        if self._last is None:
            # Start a full cycle up so that a first backward step never goes negative.
            ext = (1 << self._bits) + value
        else:
            ext = self._last + signed_delta(value, self._last, self._bits)
        self._last = ext
        return ext

    def extend_array(self, values: npt.NDArray[np.integer]) -> npt.NDArray[np.int64]:
        """Extend a batch in order; each element is placed relative to the one before it.

        Vectorised: the per-element signed deltas are computed with numpy and cumulatively summed,
        which is exactly the sequential rule above applied element by element.
        """
        raw = np.asarray(values).astype(np.int64)
        if raw.size == 0:
            return np.empty(0, dtype=np.int64)
        if raw.size <= 64:
            # Small batches (the common case: a few packets per worker wake-up) are cheaper as a
            # plain loop than as half a dozen numpy calls.
            return np.array([self.extend(v) for v in raw.tolist()], dtype=np.int64)
        mod = 1 << self._bits
        half = mod >> 1
        first = self.extend(int(raw[0]))
        steps = ((np.diff(raw) + half) & (mod - 1)) - half
        out = np.empty(raw.size, dtype=np.int64)
        out[0] = first
        np.cumsum(steps, out=out[1:])
        out[1:] += first
        self._last = int(out[-1])
        return out
