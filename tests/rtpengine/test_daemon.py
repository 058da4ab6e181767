"""The daemon with rtpengine as its media source, end to end against the real rtpengine: a
two-leg call relayed by rtpengine (each party sends its own tone), ``POST /v1/Calls`` with
``media_source``, Siprecs to the embedded reference recorder (SRTP through the ``Secure``
connector, decrypted by the recorder with libsrtp), forks that exist only while a Siprec
runs, and every failure the media source reports, as an API error or a callback."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from mediafork.daemon.demo import dominant_hz
from tests.daemon.harness import wait_until

from .daemon_stack import DaemonStack, our_subscriptions
from .harness import TwoLegCall

A_HZ, B_HZ = 440.0, 1250.0  # the caller's (inbound) and the callee's (outbound) tones


def sid(n: int) -> str:
    return "CA" + f"{n:02x}" * 16


@pytest.fixture
def stack(rtpengine, tmp_path: Path) -> Iterator[DaemonStack]:
    s = DaemonStack(tmp_path, rtpengine.ng)
    yield s
    s.close()


@pytest.fixture
def call(rtpengine) -> Iterator[TwoLegCall]:
    c = TwoLegCall(rtpengine.ng, f"daemon-{time.monotonic_ns()}@127.0.0.1")
    yield c
    c.close()


def test_a_siprec_forks_each_partys_tone_over_srtp_only_while_it_runs(stack, call, rtpengine):
    call.start_tones(A_HZ, B_HZ, seconds=20)
    answer = stack.register(sid(1), call.call_id)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["codec"] == {"name": "PCMU", "payload_type": 0, "clock_rate": 8000,
                             "channels": 1, "fmtp": None}
    assert body["media_source"] == {"name": "rtpengine1", "call_id": call.call_id,
                                    "inbound_tag": "ta", "outbound_tag": "tb",
                                    "attached": False}
    # Registered, nobody records: rtpengine has no subscription and nothing flows.
    time.sleep(0.5)
    assert our_subscriptions(rtpengine.ng, call.call_id) == set()
    assert stack.received(sid(1)) == {"inbound": 0, "outbound": 0}

    started = stack.start_siprec(sid(1), "rec1")
    assert started.status_code == 201, started.text
    siprec = started.json()["sid"]
    stack.wait_event(siprec, "siprec-started")
    assert stack.view(sid(1)).json()["media_source"]["attached"] is True
    assert len(our_subscriptions(rtpengine.ng, call.call_id)) == 2
    time.sleep(2.0)
    counters = stack.view(sid(1)).json()["counters"]
    assert counters["inbound"]["received"] >= 60 and counters["outbound"]["received"] >= 60
    assert counters["inbound"]["source_rejected"] == 0

    stopped = stack.stop_siprec(sid(1), "rec1")
    assert stopped.status_code == 200, stopped.text
    stack.wait_event(siprec, "siprec-stopped")
    assert our_subscriptions(rtpengine.ng, call.call_id) == set()
    assert stack.view(sid(1)).json()["media_source"]["attached"] is False
    time.sleep(0.2)  # what was in flight
    before = stack.received(sid(1))
    time.sleep(0.6)  # the parties keep talking
    assert stack.received(sid(1)) == before, "rtpengine still forks after the last stop"

    [session] = wait_until(lambda: [s for s in stack.sessions() if s["state"] == "ended"],
                           5, "the recorder's session to end")
    # Labels 1 and 2 are the inbound and outbound tracks (mediafork.sip.recorder_links).
    streams = {s["label"]: s for s in session["streams"]}
    assert set(streams) == {"1", "2"}
    directory = Path(session["directory"])
    for label, tone in (("1", A_HZ), ("2", B_HZ)):
        stream = streams[label]
        assert stream["srtp_suite"], stream  # the Secure connector: SRTP, libsrtp decrypts
        assert stream["srtp_auth_failures"] == 0 and stream["packets"] >= 60
        seconds, hz = dominant_hz(directory / stream["wav"])
        assert seconds >= 1.5 and abs(hz - tone) < 15, (label, seconds, hz)
    assert stack.end(sid(1)).status_code == 204


def test_a_recording_subscribes_too_and_its_end_unsubscribes(stack, call, rtpengine):
    call.start_tones(A_HZ, B_HZ, seconds=20)
    assert stack.register(sid(2), call.call_id).status_code == 201
    base = f"{stack.url}/2010-04-01/Accounts/{stack.account}/Calls/{sid(2)}/Recordings"
    created = requests.post(f"{base}.json", auth=stack.auth, timeout=10,
                            data={"RecordingChannels": "dual"})
    assert created.status_code == 201, created.text
    assert len(our_subscriptions(rtpengine.ng, call.call_id)) == 2
    time.sleep(1.5)
    stopped = requests.post(f"{base}/{created.json()['sid']}.json", auth=stack.auth,
                            timeout=10, data={"Status": "stopped"})
    assert stopped.status_code == 200, stopped.text
    # The recording finishes in the background; the next liveness round unsubscribes.
    wait_until(lambda: our_subscriptions(rtpengine.ng, call.call_id) == set(), 3,
               "the subscriptions to go after the recording")
    wav = requests.get(f"{base}/{created.json()['sid']}.json", auth=stack.auth, timeout=5)
    assert float(wav.json()["duration"]) >= 1, wav.json()


def test_ending_the_call_unsubscribes_and_a_quota_refusal_asks_rtpengine_nothing(
        rtpengine, call, tmp_path):
    stack = DaemonStack(tmp_path, rtpengine.ng, max_calls=1)
    try:
        ending_the_call_unsubscribes(stack, call, rtpengine)
    finally:
        stack.close()


def ending_the_call_unsubscribes(stack, call, rtpengine):
    assert stack.register(sid(3), call.call_id).status_code == 201
    # The account's limit is checked with the rest of the request, before rtpengine is
    # asked: an unknown call-id gets the 429, not rtpengine's 400 / 900063.
    refused = stack.register(sid(4), "no-such-call")
    assert (refused.status_code, refused.json()["code"]) == (429, 900429)
    start = stack.start_siprec(sid(3), "rec", connector="Default")
    assert start.status_code == 201, start.text
    assert len(our_subscriptions(rtpengine.ng, call.call_id)) == 2
    assert stack.end(sid(3)).status_code == 204
    assert our_subscriptions(rtpengine.ng, call.call_id) == set()
    stack.wait_event(start.json()["sid"], "siprec-stopped")
    assert stack.register(sid(4), call.call_id).status_code == 201  # room again


def test_the_daemon_closes_its_ng_socket_at_shutdown(rtpengine, call, tmp_path):
    """Descriptors counted without a garbage collection: the NG socket is closed by the
    daemon's shutdown, not left to the collector."""
    warm = DaemonStack(tmp_path / "warm", rtpengine.ng)  # imports, thread pools, caches
    warm.close()
    before = len(os.listdir("/proc/self/fd"))
    stack = DaemonStack(tmp_path / "counted", rtpengine.ng)
    try:
        assert len(stack.daemon.media_sources) == 1
        assert stack.register(sid(5), call.call_id).status_code == 201
    finally:
        stack.close()
    assert len(os.listdir("/proc/self/fd")) <= before
