"""StreamReceiver unit tests: RTP parsing, statistics, WAV timeline and receiver reports.

Packets are fed straight into ``on_rtp`` (plain RTP) so each rule is checked in isolation.
"""

from __future__ import annotations

import struct
import wave

import numpy as np

from mediafork.recording.g711 import alaw_encode, ulaw_encode
from mediafork.srs.media import MediaParams, StreamReceiver, parse_rtp

from .srcclient import tone


def rtp(seq: int, ts: int, payload: bytes, ssrc: int = 7, pt: int = 0, *, csrc: int = 0,
        ext: bytes = b"", padding: int = 0) -> bytes:
    first = 0x80 | csrc | (0x10 if ext else 0) | (0x20 if padding else 0)
    head = struct.pack("!BBHII", first, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
    head += b"\x00\x00\x00\x01" * csrc
    if ext:
        head += struct.pack("!HH", 0xBEDE, len(ext) // 4) + ext
    tail = (b"\x00" * (padding - 1) + bytes([padding])) if padding else b""
    return head + payload + tail


def test_parse_rtp_skips_csrc_extension_and_padding():
    packet = parse_rtp(rtp(5, 99, b"abc", csrc=2, ext=b"\x01\x02\x03\x04", padding=3))
    assert packet is not None and packet.payload == b"abc" and packet.seq == 5
    assert parse_rtp(b"\x80\x00") is None
    assert parse_rtp(b"\x40" + b"\x00" * 20) is None  # version 1
    assert parse_rtp(rtp(1, 1, b"", padding=0)[:12] + b"") is not None
    bogus = bytearray(rtp(1, 1, b"ab", padding=2))
    bogus[-1] = 200  # padding longer than the packet
    assert parse_rtp(bytes(bogus)) is None


def _receiver(tmp_path, codec: str = "PCMU", pt: int = 0) -> StreamReceiver:
    params = MediaParams("a b/c", pt, codec, 8000, ("127.0.0.1", 9), ("127.0.0.1", 10), False)
    return StreamReceiver(params, "127.0.0.1", tmp_path, (42000, 43998), 5.0)


def test_statistics_wav_timeline_and_report(run, tmp_path):
    async def scenario() -> StreamReceiver:
        receiver = _receiver(tmp_path)
        await receiver.start()
        audio = ulaw_encode(tone(440.0, 1.0))
        chunks = [audio[160 * i:160 * (i + 1)] for i in range(50)]
        base = 65530  # the sequence number wraps during the call
        order = [i for i in range(50) if i not in (10, 11)] + [3]  # 2 lost, 1 late duplicate
        for i in order:
            receiver.on_rtp(rtp(base + i, 1000 + 160 * i, chunks[i]))
        receiver.on_rtp(rtp(base + 50, 1000 + 160 * 50, chunks[0], pt=101))  # DTMF: not audio
        receiver.on_rtp(b"\x00" * 5)
        report = receiver.build_receiver_report()
        await receiver.close()
        return receiver, report

    receiver, report = run(scenario())
    summary = receiver.summary()
    assert summary["packets"] == 49 and summary["duplicates_or_late"] == 1
    assert summary["lost"] == 2 - 1  # RFC 3550 counts the duplicate as received
    assert summary["seq_gaps"] == 1 and summary["wrong_payload_type"] == 1
    assert summary["malformed"] == 1
    assert summary["wav"] == "a_b_c.wav"  # label made safe for a file name
    with wave.open(str(tmp_path / "a_b_c.wav")) as wav:
        samples = np.frombuffer(wav.readframes(wav.getnframes()), "<i2")
    assert len(samples) == 8000 and not samples[1600:1920].any()
    # RR: V=2, RC=1, PT=201, then the block for SSRC 7; the extended highest sequence number
    # counts the wrap (one cycle of 65536 plus seq 43).
    assert report[0] == 0x81 and report[1] == 201
    ssrc, lost, ext_max = struct.unpack_from("!III", report, 8)
    assert ssrc == 7 and ext_max == 0x10000 + 43
    assert lost >> 24 == (1 << 8) // 50  # fraction lost in the interval: 1 of 50 expected
    assert lost & 0xFFFFFF == 1


def test_ssrc_change_restarts_sequence_accounting_and_pcma(run, tmp_path):
    async def scenario() -> StreamReceiver:
        receiver = _receiver(tmp_path, "PCMA", 8)
        await receiver.start()
        audio = alaw_encode(tone(1000.0, 0.4))
        for i in range(10):
            receiver.on_rtp(rtp(100 + i, 160 * i, audio[160 * i:160 * (i + 1)], ssrc=1, pt=8))
        for i in range(10, 20):
            receiver.on_rtp(rtp(9000 + i, 777 + 160 * i, audio[160 * i:160 * (i + 1)], ssrc=2,
                                pt=8))
        await receiver.close()
        return receiver

    receiver = run(scenario())
    summary = receiver.summary()
    assert summary["packets"] == 20 and summary["lost"] == 0 and summary["ssrc_changes"] == 1
    assert summary["wav_seconds"] == 0.4
