"""The unit of work the media worker hands to a recording: a batch of one track's RTP packets.

The worker already parsed the RTP headers in C; it passes the header fields as parallel numpy
arrays and all payloads concatenated in one buffer (``offsets``/``lengths`` locate each packet's
payload). That keeps the Python side to a handful of vectorised operations per batch instead of
per-packet object creation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["PacketBatch"]


@dataclass(frozen=True, slots=True)
class PacketBatch:
    """Parallel per-packet arrays for one track, in arrival order.

    ``seq``: RTP sequence numbers (uint16). ``ts``: RTP timestamps (uint32). ``payload``: every
    packet's payload, concatenated. ``offsets``/``lengths``: where each payload is in ``payload``.
    ``arrival``: optional monotonic arrival time (seconds) of each packet; used to align the two
    tracks and to detect timestamp discontinuities. ``pt``: optional payload types; packets whose
    type is not the recorded codec's (RFC 4733 DTMF events, comfort noise) are skipped and their
    time becomes silence. ``marker``: optional marker bits (informational only: a talkspurt start
    after DTX is located by its timestamp, not the marker).
    """

    seq: npt.NDArray[np.uint16]
    ts: npt.NDArray[np.uint32]
    payload: bytes | bytearray | memoryview
    offsets: npt.NDArray[np.int64]
    lengths: npt.NDArray[np.int64]
    arrival: npt.NDArray[np.float64] | None = None
    pt: npt.NDArray[np.uint8] | None = None
    marker: npt.NDArray[np.bool_] | None = None

    def __post_init__(self) -> None:
        # Validate up front so a malformed batch is rejected whole and changes no recorder state.
        n = len(self.seq)
        arrays = {"ts": self.ts, "offsets": self.offsets, "lengths": self.lengths}
        for name, extra in (("arrival", self.arrival), ("pt", self.pt), ("marker", self.marker)):
            if extra is not None:
                arrays[name] = extra
        for name, arr in arrays.items():
            if len(arr) != n:
                raise ValueError(f"batch field {name!r} has {len(arr)} entries, seq has {n}")
        if n == 0:
            return
        offsets = np.asarray(self.offsets, dtype=np.int64)
        lengths = np.asarray(self.lengths, dtype=np.int64)
        if (offsets < 0).any() or (lengths < 0).any():
            raise ValueError("batch offsets and lengths must be non-negative")
        if int((offsets + lengths).max()) > memoryview(self.payload).nbytes:
            raise ValueError("batch payload slice runs past the end of the payload buffer")

    def __len__(self) -> int:
        return len(self.seq)

    @classmethod
    def from_packets(
        cls,
        packets: list[tuple[int, int, bytes]],
        arrival: list[float] | None = None,
        pt: list[int] | None = None,
    ) -> PacketBatch:
        """Build a batch from ``(seq, ts, payload)`` tuples (for tests and embedding callers)."""
        lengths = np.array([len(p[2]) for p in packets], dtype=np.int64)
        offsets = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
        return cls(
            seq=np.array([p[0] & 0xFFFF for p in packets], dtype=np.uint16),
            ts=np.array([p[1] & 0xFFFFFFFF for p in packets], dtype=np.uint32),
            payload=b"".join(p[2] for p in packets),
            offsets=offsets[: len(packets)],
            lengths=lengths,
            arrival=None if arrival is None else np.asarray(arrival, dtype=np.float64),
            pt=None if pt is None else np.asarray(pt, dtype=np.uint8),
        )
