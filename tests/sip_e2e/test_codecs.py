"""Every codec the host can register, forked to sipp and to the reference recorder: the
offer's SDP names it right (PCMU/8000, PCMA/8000, G722/8000 per RFC 3551, opus/48000/2 with
the host's fmtp per RFC 7587) and the payloads arrive bit-exact (SRTP decrypted with libsrtp
using the key we offered; the reference recorder writes what it received)."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mediafork.engine import Engine, Track
from mediafork.recorder_api import CallCodec
from mediafork.sip.sdp import SUITE_80
from mediafork.srs.server import RecorderConfig, ReferenceRecorder

from .harness import (
    SIPREC_SID,
    EventLog,
    Recorder,
    Sipp,
    Wiretap,
    eventually,
    open_links,
    own_port_block,
    run,
    sdp_of,
    start_request,
)
from .test_sipp import answer_keys, offered_key, unprotect_all

OPUS_FMTP = "minptime=10;useinbandfec=1"
CODECS = {
    # id: (codec, the offer's rtpmap, payload bytes per 20 ms packet (None: variable))
    "PCMU": (CallCodec("PCMU", 0, 8000), "PCMU/8000", 160),
    "PCMA": (CallCodec("PCMA", 8, 8000), "PCMA/8000", 160),
    "G722": (CallCodec("G722", 9, 8000), "G722/8000", 160),
    "opus": (CallCodec("opus", 111, 48000, 2, OPUS_FMTP), "opus/48000/2", None),
}


@pytest.fixture
def engine() -> Iterator[Engine]:
    """An engine on a port block of its own (a benchmark may hold the shared one)."""
    e = Engine(port_range=own_port_block())
    yield e
    e.close()


def _fill(codec: CallCodec, rtpmap: str) -> dict[str, str]:
    if codec.fmtp:
        ereg = (f'<ereg regexp="a=fmtp:{codec.payload_type} {codec.fmtp}[[:space:]]" '
                'search_in="body" check_it="true" assign_to="fmtp"/>')
        line = f"a=fmtp:{codec.payload_type} {codec.fmtp}"
    else:
        ereg = ('<ereg regexp="a=fmtp" search_in="body" check_it_inverse="true" '
                'assign_to="fmtp"/>')
        line = "a=ptime:20"
    return {"PT": str(codec.payload_type), "RTPMAP": rtpmap, "RTPMAP_ANSWER": rtpmap,
            "FMTP_EREG": ereg, "FMTP_LINE": line}


async def _send(call: Any, codec: CallCodec, size: int | None, count: int = 8) -> list[bytes]:
    """RTP packets of the call's payload type with random payloads (variable sizes for
    Opus) pushed on the inbound track; returns their payloads."""
    await call.engine.settled()
    step = codec.clock_rate // 50
    payloads = []
    for seq in range(1, count + 1):
        payload = secrets.token_bytes(size or 20 + secrets.randbelow(200))
        payloads.append(payload)
        header = struct.pack("!BBHII", 0x80, codec.payload_type, seq, seq * step, 0x5151)
        call.push(Track.INBOUND, header + payload)
        await asyncio.sleep(0.002)
    return payloads


@pytest.mark.parametrize("name", list(CODECS))
def test_each_codec_to_sipp(name: str, engine: Engine, recorders: Callable[..., Recorder],
                            sipp: Callable[..., Sipp]) -> None:
    codec, rtpmap, size = CODECS[name]
    rec1, rec2 = recorders(), recorders()
    srs = sipp("srs_codec", fill=_fill(codec, rtpmap), keys=answer_keys(rec1, rec2))

    async def main() -> None:
        events, tap = EventLog(), Wiretap()
        links = await open_links(events, tap)
        call = engine.add_call("CA" + secrets.token_hex(16), ingress=False,
                               clock_rate=codec.clock_rate)
        request = dataclasses.replace(
            start_request(f"{srs.uri};secure=true;transport=udp"), codec=codec)
        await links.start(call, request)
        await events.wait_for("started")
        (invite,) = tap.sent_once("INVITE")
        media = sdp_of(invite).media[0]
        assert media.formats == [str(codec.payload_type)]
        sent = await _send(call, codec, size)
        got = await rec1.receive(len(sent))
        clear = unprotect_all(offered_key(media, 1), SUITE_80, [p for p, _ in got])
        assert [p[1] & 0x7F for p in clear] == [codec.payload_type] * len(sent)
        assert [p[12:] for p in clear] == sent
        await links.stop(SIPREC_SID)
        assert await srs.wait() == 0, srs.messages()  # every SDP check of the scenario held
        await links.close(1.0)

    run(main())


@pytest.mark.parametrize("name", list(CODECS))
def test_each_codec_to_the_reference_recorder(name: str, engine: Engine,
                                              tmp_path: Path) -> None:
    codec, rtpmap, size = CODECS[name]

    async def main() -> None:
        recorder = ReferenceRecorder(RecorderConfig(
            port=0, out_dir=tmp_path / "out", media_ports=own_port_block(), keep_payloads=True))
        await recorder.start()
        events, tap = EventLog(), Wiretap()
        links = await open_links(events, tap)
        call = engine.add_call("CA" + secrets.token_hex(16), ingress=False,
                               clock_rate=codec.clock_rate)
        request = dataclasses.replace(
            start_request(f"{recorder.uri()};secure=true;transport=udp",
                          track="inbound_track"), codec=codec)
        await links.start(call, request)
        await events.wait_for("started")
        (invite,) = tap.sent_once("INVITE")
        offer = sdp_of(invite).media[0]
        assert offer.attribute_values("rtpmap") == [f"{codec.payload_type} {rtpmap}"]
        assert offer.attribute_values("fmtp") == (
            [f"{codec.payload_type} {codec.fmtp}"] if codec.fmtp else [])
        ok = next(m for d, *_, m in tap.records
                  if d == "in" and getattr(m, "status", None) == 200 and m.cseq[1] == "INVITE")
        answer = sdp_of(ok).media[0]
        assert answer.attribute_values("rtpmap") == offer.attribute_values("rtpmap")
        assert answer.attribute_values("fmtp") == offer.attribute_values("fmtp")

        sent = await _send(call, codec, size)
        (session,) = recorder.sessions
        (receiver,) = [r for r in session.receivers if r is not None]
        await eventually(lambda: receiver.stats.packets == len(sent))
        await links.stop(SIPREC_SID)
        await eventually(lambda: session.state == "ended")
        assert receiver.payloads_path is not None
        data, kept = receiver.payloads_path.read_bytes(), []
        while data:
            (length,) = struct.unpack_from("!H", data)
            kept.append(data[2:2 + length])
            data = data[2 + length:]
        assert kept == sent
        # A WAV only for what the recorder can decode; the rest is counted, not guessed at.
        assert receiver.undecodable == (codec.name not in ("PCMU", "PCMA"))
        await links.close(1.0)
        await recorder.stop()

    run(main())
