"""Synthetic G.711 calls for the recording tests: tones, packetisation, worker-like batching."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mediafork.recording.batch import PacketBatch
from mediafork.recording.g711 import ulaw_encode

RATE = 8000
PTIME = 160  # 20 ms of 8 kHz G.711


def tone(freq: float, seconds: float, amplitude: float = 0.4, rate: int = RATE) -> npt.NDArray[np.int16]:
    n = round(seconds * rate)
    t = np.arange(n) / rate
    return np.round(amplitude * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


@dataclass
class Packet:
    seq: int
    ts: int
    payload: bytes
    arrival: float
    pt: int = 0


def packetize(
    pcm: npt.NDArray[np.int16],
    *,
    seq0: int = 1000,
    ts0: int = 123456,
    t0: float = 100.0,
    encode: Callable[[npt.ArrayLike], bytes] = ulaw_encode,
    ptime: int = PTIME,
    pt: int = 0,
) -> list[Packet]:
    """One packet per ``ptime`` samples; arrival = t0 + media time (a perfect network)."""
    packets = []
    for i in range(0, len(pcm) - len(pcm) % ptime, ptime):
        k = i // ptime
        packets.append(
            Packet(
                (seq0 + k) & 0xFFFF,
                (ts0 + i) & 0xFFFFFFFF,
                encode(pcm[i : i + ptime]),
                t0 + i / RATE,
                pt,
            )
        )
    return packets


def batch_of(packets: list[Packet]) -> PacketBatch:
    return PacketBatch.from_packets(
        [(p.seq, p.ts, p.payload) for p in packets],
        arrival=[p.arrival for p in packets],
        pt=[p.pt for p in packets],
    )


def worker_batches(
    tracks: dict[str, list[Packet]], window: float = 0.1
) -> Iterable[tuple[str, PacketBatch]]:
    """Like the media worker: every ``window`` seconds, one batch per track of what arrived.

    Packets are grouped by arrival time, but kept in list order inside a batch (so a test can
    reorder packets and have them arrive "out of order" within the window).
    """
    events = [(p.arrival, name, i, p) for name, pkts in tracks.items() for i, p in enumerate(pkts)]
    if not events:
        return
    start = min(e[0] for e in events)
    buckets: dict[tuple[int, str], list[tuple[int, Packet]]] = {}
    for arrival, name, i, p in events:
        buckets.setdefault((int((arrival - start) // window), name), []).append((i, p))
    for key in sorted(buckets):
        items = sorted(buckets[key], key=lambda e: e[0])
        yield key[1], batch_of([p for _, p in items])


def peak_hz(samples: npt.NDArray[np.int16], rate: int = RATE) -> float:
    x = samples.astype(np.float64) * np.hanning(len(samples))
    spectrum = np.abs(np.fft.rfft(x))
    spectrum[0] = 0
    return float(np.argmax(spectrum) * rate / len(samples))


def band_energy(samples: npt.NDArray[np.int16], freq: float, rate: int = RATE, width: float = 20) -> float:
    """Fraction of the signal's energy within ``width`` Hz of ``freq``."""
    x = samples.astype(np.float64) * np.hanning(len(samples))
    power = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    total = power.sum()
    return float(power[np.abs(freqs - freq) <= width].sum() / total) if total else 0.0
