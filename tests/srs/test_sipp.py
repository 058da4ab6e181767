"""Interoperability: sipp (a third-party SIP tool) plays the SRC against the reference recorder.

The scenario (tests/srs/scenarios/siprec_uac.xml) sends a SIPREC INVITE with a multipart body
(SDP with SDES keys + RFC 7865 metadata), ACKs the 200, holds for ``-d`` ms and sends BYE. sipp
cannot encrypt, so while it holds the call this test sends SRTP to the answered ports with the
scenario's fixed key and checks the WAV.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import struct
from pathlib import Path

import pytest
from pylibsrtp import Policy, Session

from mediafork.recording.g711 import ulaw_encode
from mediafork.srs import ReferenceRecorder

from .srcclient import peak_frequency, tone
from .test_recorder import read_wav

SIPP = shutil.which("sipp")
SCENARIO = Path(__file__).parent / "scenarios" / "siprec_uac.xml"
TEST_KEY = bytes(range(1, 31))
"""The fixed key in the scenario's a=crypto lines (base64 AQIDBAUG...HB0e)."""

pytestmark = pytest.mark.skipif(SIPP is None, reason="sipp is not installed (Debian: sip-tester)")


def _free_udp_ports(count: int, step: int = 1) -> int:
    """A base port with ``count`` consecutive free UDP ports (even, for RTP pairs)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1] & ~1
        socks = []
        try:
            for offset in range(count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.bind(("127.0.0.1", base + offset * step))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise OSError("no free UDP ports")


def test_sipp_uac_records_a_session(run, tmp_path):
    async def scenario() -> None:
        recorder = await ReferenceRecorder(port=0, out_dir=tmp_path / "rec",
                                           rtcp_interval=0.2).start()
        sip_port = _free_udp_ports(1)
        media_port = _free_udp_ports(4)
        host, port = recorder.address
        workdir = tmp_path / "sipp"
        workdir.mkdir()
        proc = await asyncio.create_subprocess_exec(
            str(SIPP), f"{host}:{port}", "-sf", str(SCENARIO), "-m", "1", "-i", "127.0.0.1",
            "-p", str(sip_port), "-mp", str(media_port), "-d", "1500", "-nostdin",
            "-timeout", "15s", "-timeout_error", "-trace_err",
            cwd=workdir, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        try:
            await recorder.wait_for(
                lambda r: bool(r.sessions) and r.sessions[0].state == "established", timeout=10)
            session = recorder.sessions[0]
            protect = Session(Policy(key=TEST_KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND,
                                     srtp_profile=Policy.SRTP_PROFILE_AES128_CM_SHA1_80))
            audio = ulaw_encode(tone(440.0, 1.0))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for index, receiver in enumerate(session.receivers):
                    assert receiver is not None
                    for i in range(50):
                        rtp = struct.pack("!BBHII", 0x80, 0, i, 160 * i, 0x1000 + index)
                        sock.sendto(protect.protect(rtp + audio[160 * i:160 * (i + 1)]),
                                    ("127.0.0.1", receiver.port))
            output, _ = await asyncio.wait_for(proc.communicate(), 20)
            assert proc.returncode == 0, output.decode(errors="replace")[-2000:]
            await recorder.wait_for(lambda r: session.state == "ended", timeout=5)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await recorder.stop()

        summary = json.loads((Path(session.directory) / "summary.json").read_text())
        assert summary["state"] == "ended" and summary["ended_by"] == "src"
        assert summary["siprec"] is True and summary["warnings"] == []
        assert summary["labels"] == ["1", "2"]
        assert summary["parameters"] == {"Tool": "sipp"}
        assert sorted(a for p in summary["participants"] for a in p["aors"]) == [
            "sip:alice@sipp.example", "sip:bob@sipp.example"]
        alice = next(p for p in summary["participants"] if p["names"] == ["Alice"])
        assert alice["send"] == ["1"] and alice["recv"] == ["2"]
        for stream, rtp_port in zip(summary["streams"], (media_port, media_port + 2),
                                    strict=True):
            assert stream["remote_rtp"] == ["127.0.0.1", rtp_port]
            assert stream["srtp_suite"] == "AES_CM_128_HMAC_SHA1_80"
            assert stream["packets"] == 50 and stream["lost"] == 0
            assert stream["srtp_auth_failures"] == 0
            samples = read_wav(Path(session.directory) / stream["wav"])
            assert len(samples) == 8000
            assert abs(peak_frequency(samples) - 440.0) < 5

    run(scenario(), timeout=40)
