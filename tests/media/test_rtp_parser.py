"""The C RTP/RTCP parsers: RFC 3550 §5.1 header rules, every length checked."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mediafork.media import _fastpath

from .conftest import rtp


def test_plain_packet_fields() -> None:
    status, info = _fastpath.parse_rtp(rtp(65535, 0xFFFFFFFF, b"abc", pt=8, ssrc=7, marker=True))
    assert status == "ok"
    assert info == {"marker": 1, "payload_type": 8, "seq": 65535, "timestamp": 0xFFFFFFFF,
                    "ssrc": 7, "payload_offset": 12, "payload_len": 3}


def test_csrc_extension_and_padding_are_skipped() -> None:
    csrcs = struct.pack("!II", 1, 2)
    ext = struct.pack("!HH", 0xBEDE, 1) + b"\x10\xaa\x00\x00"
    payload = b"PAYLOAD"
    padding = b"\x00\x00\x03"
    first = 0x80 | 0x20 | 0x10 | 2
    pkt = struct.pack("!BBHII", first, 0, 1, 2, 3) + csrcs + ext + payload + padding
    status, info = _fastpath.parse_rtp(pkt)
    assert status == "ok"
    assert info["payload_offset"] == 12 + 8 + 8
    assert pkt[info["payload_offset"]:info["payload_offset"] + info["payload_len"]] == payload


@pytest.mark.parametrize(
    ("packet", "status"),
    [
        (b"", "too_short"),
        (b"\x80\x00\x00", "too_short"),
        (rtp(1, 1)[:11], "too_short"),
        (b"\x40" + rtp(1, 1)[1:], "bad_version"),
        (b"\x00" + rtp(1, 1)[1:], "bad_version"),
        (bytes([0x8F]) + rtp(1, 1, b"")[1:] + b"\x00" * 8, "csrc_overrun"),
        (bytes([0x90]) + rtp(1, 1, b"")[1:] + b"\xbe\xde", "extension_overrun"),
        (bytes([0x90]) + rtp(1, 1, b"")[1:] + b"\xbe\xde\x00\x05" + b"\x00" * 8, "extension_overrun"),
        (bytes([0xA0]) + rtp(1, 1, b"ab\x00")[1:], "bad_padding"),
        (bytes([0xA0]) + rtp(1, 1, b"ab\x09")[1:], "bad_padding"),
        (b"\x80\xc8" + b"\x00" * 10, "rtcp"),
    ],
)
def test_malformed_packets_are_rejected(packet: bytes, status: str) -> None:
    assert _fastpath.parse_rtp(packet)[0] == status


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=300))
def test_parser_never_claims_bytes_outside_the_packet(data: bytes) -> None:
    status, info = _fastpath.parse_rtp(data)
    if status == "ok":
        assert 12 <= info["payload_offset"] <= len(data)
        assert info["payload_offset"] + info["payload_len"] <= len(data)


def _rr(sender: int, blocks: list[tuple[int, int, int, int, int]]) -> bytes:
    body = struct.pack("!I", sender)
    for ssrc, fraction, lost, highest, jitter in blocks:
        body += struct.pack("!IB", ssrc, fraction) + (lost & 0xFFFFFF).to_bytes(3, "big")
        body += struct.pack("!IIII", highest, jitter, 0, 0)
    return struct.pack("!BBH", 0x80 | len(blocks), 201, (len(body) + 4) // 4 - 1) + body


def test_receiver_report_block_for_our_ssrc() -> None:
    pkt = _rr(99, [(5, 10, 3, 1000, 40), (7, 64, -2, 2000, 80)])
    status, block = _fastpath.find_rtcp_report(pkt, 7)
    assert status == "found"
    assert block == {"fraction_lost": 64, "cumulative_lost": -2, "highest_seq": 2000, "jitter": 80}
    assert _fastpath.find_rtcp_report(pkt, 8)[0] == "not_found"


def test_truncated_or_inconsistent_rtcp_is_malformed() -> None:
    pkt = _rr(99, [(5, 10, 3, 1000, 40)])
    assert _fastpath.find_rtcp_report(pkt[:-4], 5)[0] == "malformed"
    bad_count = bytes([0x80 | 3]) + pkt[1:]
    assert _fastpath.find_rtcp_report(bad_count, 5)[0] == "malformed"
    assert _fastpath.find_rtcp_report(b"\x80", 5)[0] == "malformed"


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 2**32 - 1))
def test_rtcp_parser_total_on_random_input(data: bytes, ssrc: int) -> None:
    assert _fastpath.find_rtcp_report(data, ssrc)[0] in {"found", "not_found", "malformed"}
