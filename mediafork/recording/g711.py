"""ITU-T G.711 µ-law and A-law codecs as numpy lookup tables.

Decoding is the hot operation (every recorded packet), so it is a single fancy-index into a
256-entry int16 table: ``ULAW_TO_LINEAR[np.frombuffer(payload, np.uint8)]``. The tables are built
once, at import, from the G.711 segment/mantissa rules rather than typed in, so the algorithm is
visible and reviewable here.

Encoding is only needed for tests, tone generation and the demo; it also goes through a table,
indexed by the int16 sample reinterpreted as uint16 (65536 entries, 64 KiB each), which keeps it
vectorised without a Python loop per sample.

Output scale: G.711 decodes to a 14-bit (µ-law) or 13-bit (A-law) value; we return it left-aligned
in 16 bits, which is what sox, audioop and most telephony stacks do (µ-law peak ±32124, A-law peak
±32256).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "ALAW_TO_LINEAR",
    "ULAW_TO_LINEAR",
    "alaw_decode",
    "alaw_encode",
    "decoder_for",
    "ulaw_decode",
    "ulaw_encode",
]

# µ-law bias: adding 33 (in 14-bit units, 132 in 16-bit units) before the segment search makes the
# segment boundaries powers of two, so the exponent is just the position of the top set bit.
_ULAW_BIAS = 0x84
# Largest 16-bit magnitude that still fits in the top segment after biasing.
_ULAW_CLIP = 32635


def _build_ulaw_decode() -> npt.NDArray[np.int16]:
    codes = np.arange(256, dtype=np.int32)
    # µ-law transmits every bit inverted (G.711 §3.2: "even bits inverted" is A-law; µ-law inverts
    # all bits) so that a silent line has many 1 bits, which helped old T1 clock recovery.
    u = ~codes & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    # Reconstruct at the middle of the quantisation interval, then remove the bias again.
    magnitude = (((mantissa << 3) + _ULAW_BIAS) << exponent) - _ULAW_BIAS
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


def _build_alaw_decode() -> npt.NDArray[np.int16]:
    codes = np.arange(256, dtype=np.int32)
    # A-law inverts the even bits (XOR 0x55) on the line.
    a = codes ^ 0x55
    sign = a & 0x80
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    # Segment 0 is linear (no implicit leading 1); higher segments add the implicit leading 1
    # (0x100 after the <<4) and a half-step (8) so the value sits mid-interval.
    seg0 = (mantissa << 4) + 8
    segn = ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0)
    magnitude = np.where(exponent == 0, seg0, segn)
    # In A-law a set sign bit means positive.
    return np.where(sign != 0, magnitude, -magnitude).astype(np.int16)


def _top_bit(values: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
    """Index of the highest set bit of each (positive) value; -1 for 0."""
    out = np.full(values.shape, -1, dtype=np.int32)
    for bit in range(31):
        out = np.where((values >> bit) != 0, bit, out)
    return out


def _build_ulaw_encode() -> npt.NDArray[np.uint8]:
    x = np.arange(65536, dtype=np.int32)
    x = np.where(x >= 0x8000, x - 0x10000, x)  # the uint16 index as the int16 it came from
    negative = x < 0
    # Quantise the 14-bit value the codec actually carries: shift first (floor), then take the
    # magnitude. This mirrors feeding G.711 a 14-bit linear signal.
    x14 = x >> 2
    magnitude = np.where(negative, -x14, x14)
    magnitude = np.minimum(magnitude, _ULAW_CLIP >> 2) + (_ULAW_BIAS >> 2)
    # Biased 14-bit magnitude is in [33, 8191]; segment = top bit - 5.
    exponent = np.clip(_top_bit(magnitude) - 5, 0, 7)
    mantissa = (magnitude >> (exponent + 1)) & 0x0F
    # Sign bit set = negative before the all-bits inversion (so positive codes are 0x80..0xFF).
    code = (np.where(negative, 0x80, 0x00) | (exponent << 4) | mantissa) ^ 0xFF
    return code.astype(np.uint8)


def _build_alaw_encode() -> npt.NDArray[np.uint8]:
    x = np.arange(65536, dtype=np.int32)
    x = np.where(x >= 0x8000, x - 0x10000, x)
    negative = x < 0
    # A-law carries 13 bits. Negative values use the one's complement (~x, i.e. -x - 1) as their
    # magnitude, the G.711 convention that makes the two halves of the scale symmetric around -0.5.
    x13 = x >> 3
    magnitude = np.where(negative, ~x13, x13)
    magnitude = np.minimum(magnitude, 0xFFF)
    # Segment 0 and 1 share the same step (linear below 32 in 13-bit units).
    exponent = np.clip(_top_bit(magnitude) - 4, 0, 7)
    mantissa = np.where(exponent == 0, magnitude >> 1, magnitude >> exponent) & 0x0F
    code = np.where(negative, 0x00, 0x80) | (exponent << 4) | mantissa
    return (code ^ 0x55).astype(np.uint8)


ULAW_TO_LINEAR: npt.NDArray[np.int16] = _build_ulaw_decode()
ALAW_TO_LINEAR: npt.NDArray[np.int16] = _build_alaw_decode()
_LINEAR_TO_ULAW: npt.NDArray[np.uint8] = _build_ulaw_encode()
_LINEAR_TO_ALAW: npt.NDArray[np.uint8] = _build_alaw_encode()
for _table in (ULAW_TO_LINEAR, ALAW_TO_LINEAR, _LINEAR_TO_ULAW, _LINEAR_TO_ALAW):
    _table.setflags(write=False)  # shared module state: nobody may patch a codec table


def _codes(payload: bytes | bytearray | memoryview | npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    if isinstance(payload, np.ndarray):
        return payload.astype(np.uint8, copy=False)
    return np.frombuffer(payload, dtype=np.uint8)


def ulaw_decode(payload: bytes | bytearray | memoryview | npt.NDArray[np.uint8]) -> npt.NDArray[np.int16]:
    """µ-law bytes → int16 samples (one sample per byte)."""
    return ULAW_TO_LINEAR[_codes(payload)]


def alaw_decode(payload: bytes | bytearray | memoryview | npt.NDArray[np.uint8]) -> npt.NDArray[np.int16]:
    """A-law bytes → int16 samples (one sample per byte)."""
    return ALAW_TO_LINEAR[_codes(payload)]


def ulaw_encode(samples: npt.ArrayLike) -> bytes:
    """int16 samples → µ-law bytes."""
    pcm = np.asarray(samples, dtype=np.int16)
    return _LINEAR_TO_ULAW[pcm.view(np.uint16)].tobytes()


def alaw_encode(samples: npt.ArrayLike) -> bytes:
    """int16 samples → A-law bytes."""
    pcm = np.asarray(samples, dtype=np.int16)
    return _LINEAR_TO_ALAW[pcm.view(np.uint16)].tobytes()


# RTP static payload types (RFC 3551 table 4) and the names SDP / the host API use.
_DECODE_TABLES: dict[str, npt.NDArray[np.int16]] = {
    "PCMU": ULAW_TO_LINEAR,
    "PCMA": ALAW_TO_LINEAR,
}


def decoder_for(codec: str) -> npt.NDArray[np.int16]:
    """The decode table for a codec name (case-insensitive); ValueError for anything else."""
    try:
        return _DECODE_TABLES[codec.upper()]
    except KeyError:
        raise ValueError(f"unsupported codec for recording: {codec!r} (PCMU or PCMA)") from None
