"""The reference recorder end to end on real loopback sockets, driven from Python.

Every test starts a ReferenceRecorder on free ports, plays the SRC with tests/srs/srcclient.py
(INVITEs built by mediafork's own SDP/metadata code) and checks the SIP answers, the WAV audio,
the summary JSON and the SRTCP receiver reports.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import struct
import wave
from pathlib import Path

import numpy as np
import pytest
from pylibsrtp import Policy, Session

from mediafork.sip.sdp import SessionDescription
from mediafork.srs import ReferenceRecorder

from .srcclient import CALLEE, CALLER, SrcClient, peak_frequency, read_answer_into_legs


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as wav:
        assert wav.getframerate() == 8000 and wav.getnchannels() == 1
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")


async def establish(recorder: ReferenceRecorder, client: SrcClient, labels: list[str],
                    secure: bool = True, custom: dict[str, str] | None = None,
                    transport: str = "udp"):
    streams = await client.add_legs(labels, secure)
    invite = client.invite(recorder.uri(transport), streams, custom=custom)
    client.send(invite)
    ok = await client.final_response()
    assert ok.status == 200, ok
    read_answer_into_legs(client, ok)
    client.send(client.ack(invite, ok))
    await recorder.wait_for(lambda r: r.sessions and r.sessions[-1].state == "established")
    return invite, ok


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_secure_session_records_tone_and_reports(run, tmp_path, tls_files, transport):
    cert, key = tls_files

    async def scenario() -> None:
        recorder = ReferenceRecorder(
            port=0, tcp=True, tls_cert=str(cert), tls_key=str(key), out_dir=tmp_path,
            rtcp_interval=0.2,
        )
        await recorder.start()
        context = None
        remote = recorder.address
        if transport == "tls":
            context = ssl.create_default_context(cafile=str(cert))
            assert recorder.tls_address is not None
            remote = recorder.tls_address
        client = await SrcClient(transport, remote, context).open()
        try:
            invite, ok = await establish(recorder, client, ["1", "2"], custom={"Agent": "007"},
                                         transport=transport)
            answer = SessionDescription.parse(ok.body)
            assert ok.headers.get("Content-Type") == "application/sdp"
            assert [m.label for m in answer.media] == ["1", "2"]
            assert all(m.direction == "recvonly" for m in answer.media)
            assert all(m.proto == "RTP/SAVP" for m in answer.media)
            for leg, media in zip(client.legs, answer.media, strict=True):
                crypto = media.cryptos[0]
                assert crypto.tag == 1 and crypto.suite == "AES_CM_128_HMAC_SHA1_80"
                assert crypto.key != leg.key  # the recorder answers with its own key
            assert answer.media[0].port != answer.media[1].port

            await client.legs[0].send_tone("127.0.0.1", 440.0, 100)
            await client.legs[1].send_tone("127.0.0.1", 1000.0, 100, skip=frozenset({50, 51}))
            session = recorder.sessions[0]
            await recorder.wait_for(
                lambda r: session.summary()["totals"]["packets"] == 198, timeout=5)

            # Receiver reports reach the SRC's port+1 and authenticate with the ANSWER key.
            leg = client.legs[1]
            data, _ = await asyncio.wait_for(leg.rtcp.queue.get(), 3)
            rx = Session(Policy(key=leg.answer_key, ssrc_type=Policy.SSRC_ANY_INBOUND,
                                srtp_profile=Policy.SRTP_PROFILE_AES128_CM_SHA1_80))
            while True:
                rr = rx.unprotect_rtcp(data)
                assert rr[1] == 201
                if rr[0] & 0x1F:
                    break
                data, _ = await asyncio.wait_for(leg.rtcp.queue.get(), 3)
            ssrc, lost_word, ext_max, _jitter = struct.unpack_from("!IIII", rr, 8)
            assert ssrc == leg.ssrc, (hex(ssrc), [hex(x.ssrc) for x in client.legs], rr.hex())
            assert lost_word & 0xFFFFFF == 2
            assert ext_max == 1000 + 99

            bye = client.in_dialog("BYE", invite, ok, 2)
            client.send(bye)
            assert (await client.final_response()).status == 200
            await recorder.wait_for(lambda r: session.state == "ended")
        finally:
            await client.close()
            await recorder.stop()

        summary = json.loads((Path(session.directory) / "summary.json").read_text())
        assert summary["state"] == "ended" and summary["ended_by"] == "src"
        assert summary["transport"] == transport.upper()
        assert summary["labels"] == ["1", "2"]
        assert summary["parameters"] == {"Agent": "007"}
        aors = sorted(a for p in summary["participants"] for a in p["aors"])
        assert aors == sorted([CALLER, CALLEE])
        caller = next(p for p in summary["participants"] if CALLER in p["aors"])
        assert caller["send"] == ["1"] and caller["recv"] == ["2"]
        first, second = summary["streams"]
        assert first["packets"] == 100 and first["lost"] == 0 and first["seq_gaps"] == 0
        assert second["packets"] == 98 and second["lost"] == 2 and second["seq_gaps"] == 1
        assert first["srtp_auth_failures"] == 0 and first["bytes"] == 16000
        assert second["rtcp_sent"] >= 1
        assert summary["metadata"]["sip_session_ids"] == ["CA-test"]
        assert (Path(session.directory) / "metadata.xml").read_bytes().startswith(b"<?xml")

        audio = read_wav(Path(session.directory) / first["wav"])
        assert len(audio) == 16000
        assert abs(peak_frequency(audio) - 440.0) < 5
        audio2 = read_wav(Path(session.directory) / second["wav"])
        assert len(audio2) == 16000  # the two lost packets became 40 ms of silence
        assert not audio2[50 * 160: 52 * 160].any()
        assert abs(peak_frequency(audio2[:8000]) - 1000.0) < 5

    run(scenario())


@pytest.mark.parametrize("transport", ["udp", "tls"])
def test_same_on_uvloop(uvrun, tmp_path, tls_files, transport):
    test_secure_session_records_tone_and_reports(uvrun, tmp_path, tls_files, transport)
