"""Synthetic call media for demos, benchmarks and tests: paced G.711 RTP
carrying tones, with optional RFC 4733 DTMF events mixed in."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np

from .recording.g711 import alaw_encode, ulaw_encode

SAMPLES_PER_PACKET = 160  # 20 ms at 8 kHz


def tone(frequency: float, seconds: float, *, rate: int = 8000, level: float = 0.3) -> np.ndarray:
    """A sine tone as int16 samples."""
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * frequency * t) * level * 32767).astype(np.int16)


def rtp_packet(seq: int, timestamp: int, payload: bytes, *, payload_type: int = 0,
               ssrc: int = 0x4D464B00, marker: bool = False) -> bytes:
    return struct.pack(
        "!BBHII", 0x80, (0x80 if marker else 0) | payload_type, seq & 0xFFFF,
        timestamp & 0xFFFFFFFF, ssrc & 0xFFFFFFFF,
    ) + payload


def tone_packets(frequency: float, seconds: float, *, codec: str = "PCMU", ssrc: int = 0x4D464B00,
                 first_seq: int = 0, first_timestamp: int = 0,
                 dtmf_every: int = 0, dtmf_payload_type: int = 101) -> Iterator[bytes]:
    """RTP packets of a tone, 20 ms each. With ``dtmf_every`` = N, an RFC 4733
    event packet follows every Nth audio packet (it must never be forwarded)."""
    samples = tone(frequency, seconds)
    encode = ulaw_encode if codec == "PCMU" else alaw_encode
    payload_type = 0 if codec == "PCMU" else 8
    seq, ts = first_seq, first_timestamp
    for i, start in enumerate(range(0, len(samples) - SAMPLES_PER_PACKET + 1, SAMPLES_PER_PACKET)):
        payload = encode(samples[start:start + SAMPLES_PER_PACKET])
        yield rtp_packet(seq, ts, payload, payload_type=payload_type, ssrc=ssrc, marker=(i == 0))
        seq += 1
        if dtmf_every and i % dtmf_every == dtmf_every - 1:
            event = struct.pack("!BBH", 5, 10, 160)  # digit 5, volume 10, 20 ms
            yield rtp_packet(seq, ts, event, payload_type=dtmf_payload_type, ssrc=ssrc)
            seq += 1
        ts += SAMPLES_PER_PACKET
