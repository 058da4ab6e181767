"""sipp as the SRS of a call whose media comes from rtpengine: the daemon registered with
``media_source``, a Siprec to sipp (plain RTP), each recorder port gets its party's tone, and
the forks stop when the Siprec stops (sipp sees the BYE and exits 0)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest

from mediafork.recording.g711 import ulaw_decode
from tests.sip_e2e.harness import SIPP, Sipp
from tests.sip_e2e.harness import Recorder as RtpSockets

from .daemon_stack import DaemonStack, our_subscriptions
from .harness import TwoLegCall

A_HZ, B_HZ = 440.0, 1250.0
CALL_SID = "CA" + "5a" * 16


def receive(sock: socket.socket, seconds: float) -> list[bytes]:
    out: list[bytes] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            packet = sock.recv(2048)
        except BlockingIOError:
            time.sleep(0.005)
            continue
        if 200 <= packet[1] <= 204:
            continue  # RTCP
        out.append(packet)
    return out


def peak_hz(packets: list[bytes]) -> float:
    samples = np.concatenate([ulaw_decode(np.frombuffer(p[12:], dtype=np.uint8))
                              for p in packets]).astype(float)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / 8000)[spectrum.argmax()])


@pytest.mark.skipif(SIPP is None, reason="sipp is not installed (Debian package sip-tester)")
def test_a_siprec_to_sipp_carries_each_partys_tone(rtpengine, tmp_path: Path) -> None:
    rec1, rec2 = RtpSockets(), RtpSockets()
    srs = Sipp("srs_answer", tmp_path, keys={
        "rec_ip": "127.0.0.1", "rec_port1": str(rec1.port), "rec_port2": str(rec2.port),
        "rec_proto": "RTP/AVP", "crypto1": "a=ptime:20", "crypto2": "a=ptime:20"})
    call = TwoLegCall(rtpengine.ng, f"sipp-{time.monotonic_ns()}@127.0.0.1")
    stack = DaemonStack(tmp_path, rtpengine.ng, connectors={"Sipp": f"{srs.uri};transport=udp"})
    try:
        call.start_tones(A_HZ, B_HZ, seconds=15)
        assert stack.register(CALL_SID, call.call_id).status_code == 201
        assert receive(rec1.rtp, 0.3) == [] and receive(rec2.rtp, 0.01) == []
        started = stack.start_siprec(CALL_SID, "to-sipp", connector="Sipp")
        assert started.status_code == 201, started.text
        siprec = started.json()["sid"]
        stack.wait_event(siprec, "siprec-started")
        got1, got2 = receive(rec1.rtp, 1.5), receive(rec2.rtp, 0.2)
        assert len(got1) >= 40 and len(got2) >= 40, (len(got1), len(got2))
        assert abs(peak_hz(got1[-40:]) - A_HZ) < 15  # label 1: the inbound party, the caller
        assert abs(peak_hz(got2[-40:]) - B_HZ) < 15  # label 2: the callee
        assert stack.stop_siprec(CALL_SID, "to-sipp").status_code == 200
        stack.wait_event(siprec, "siprec-stopped")
        assert our_subscriptions(rtpengine.ng, call.call_id) == set()
        deadline = time.monotonic() + 10
        while srs.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srs.proc.returncode == 0, srs.messages()[-2000:]
    finally:
        stack.close()
        call.close()
        srs.kill()
        rec1.close()
        rec2.close()
