"""Every failure of a call's rtpengine media source, seen through the daemon: at
registration a clear API error that registers nothing; on a live call the call ended (the
call deleted on rtpengine) or ``siprec-error`` with the documented code (rtpengine restarted,
our subscription lost, rtpengine not answering). Real rtpengine, real daemon."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.daemon.harness import wait_until

from .daemon_stack import DaemonStack, error_of, our_subscriptions
from .harness import TwoLegCall, free_udp_port, ng_request

A_HZ, B_HZ = 440.0, 1250.0


def sid(n: int) -> str:
    return "CA" + f"{n:02x}" * 16


@pytest.fixture
def stack(rtpengine, tmp_path: Path) -> Iterator[DaemonStack]:
    s = DaemonStack(tmp_path, rtpengine.ng)
    yield s
    s.close()


@pytest.fixture
def call(rtpengine) -> Iterator[TwoLegCall]:
    c = TwoLegCall(rtpengine.ng, f"fail-{time.monotonic_ns()}@127.0.0.1")
    yield c
    c.close()


def registered_nothing(stack: DaemonStack, call_sid: str) -> bool:
    return stack.view(call_sid).status_code == 404


# -- at registration -------------------------------------------------------------------------

def test_unknown_call_id_tag_and_name_are_api_errors_that_register_nothing(stack, call,
                                                                           rtpengine):
    assert error_of(stack.register(sid(1), "no-such-call")) == (400, 900063)
    assert error_of(stack.register(sid(1), call.call_id, inbound_tag="nobody")) == (400, 900064)
    assert error_of(stack.register(sid(1), call.call_id, outbound_tag="nobody")) == (400, 900064)
    answer = requests.post(f"{stack.url}/v1/Calls", auth=stack.auth, timeout=5, json={
        "call_sid": sid(1), "media_source": {"name": "other", "call_id": call.call_id,
                                             "inbound_tag": "ta", "outbound_tag": "tb"}})
    assert error_of(answer) == (400, 900068)
    assert registered_nothing(stack, sid(1))
    assert our_subscriptions(rtpengine.ng, call.call_id) == set()  # the probes left nothing
    # The SID was not used up: the same registration, corrected, succeeds.
    assert stack.register(sid(1), call.call_id).status_code == 201


def test_a_malformed_request_is_refused_before_rtpengine_is_asked(stack, call):
    for extra, code in (({"from": "x" * 5000}, 900001),
                        ({"sources": {"inbound": "127.0.0.1"}}, 900001)):
        assert error_of(stack.register(sid(2), call.call_id, **extra)) == (400, code)
    for media_source, code in (("rtpengine1", 900001),
                               ({"name": "rtpengine1", "call_id": call.call_id,
                                 "inbound_tag": "ta"}, 900002),
                               ({"name": "rtpengine1", "call_id": call.call_id,
                                 "inbound_tag": "ta", "outbound_tag": "ta"}, 900001),
                               ({"name": "rtpengine1", "call_id": "has space",
                                 "inbound_tag": "ta", "outbound_tag": "tb"}, 900001)):
        answer = requests.post(f"{stack.url}/v1/Calls", auth=stack.auth, timeout=5,
                               json={"call_sid": sid(2), "media_source": media_source})
        assert error_of(answer) == (400, code), media_source
    assert registered_nothing(stack, sid(2))


def test_a_codec_rtpengine_does_not_send_is_refused(stack, call):
    answer = stack.register(sid(3), call.call_id,
                            codec={"name": "PCMA", "payload_type": 8, "clock_rate": 8000})
    assert error_of(answer) == (400, 900069)
    assert "PCMU" in answer.json()["message"]
    assert registered_nothing(stack, sid(3))


def test_rtpengine_not_answering_is_a_503(tmp_path, call):
    silent = ("127.0.0.1", free_udp_port())  # nothing listens there
    stack = DaemonStack(tmp_path, silent, timeout=0.5)
    try:
        began = time.monotonic()
        answer = stack.register(sid(4), call.call_id)
        assert error_of(answer) == (503, 900060)
        assert time.monotonic() - began < 2.5  # one NG timeout, not more
        assert registered_nothing(stack, sid(4))
    finally:
        stack.close()


def test_an_ng_error_reply_is_a_503_quoting_rtpengine(rtpengine_factory, tmp_path):
    small = rtpengine_factory(ports=4)  # the two legs take them all: no subscription
    call = TwoLegCall(small.ng, "out-of-ports")
    stack = DaemonStack(tmp_path, small.ng)
    try:
        answer = stack.register(sid(5), call.call_id)
        assert error_of(answer) == (503, 900061)
        assert "Failed to request subscription" in answer.json()["message"]
        assert registered_nothing(stack, sid(5))
    finally:
        stack.close()
        call.close()


# -- on a live call --------------------------------------------------------------------------

def start_recording(stack: DaemonStack, call_sid: str, name: str = "rec") -> str:
    answer = stack.start_siprec(call_sid, name)
    assert answer.status_code == 201, answer.text
    siprec = answer.json()["sid"]
    stack.wait_event(siprec, "siprec-started")
    return siprec


def test_the_call_deleted_on_rtpengine_ends_the_call(stack, call):
    call.start_tones(A_HZ, B_HZ, seconds=10)
    assert stack.register(sid(6), call.call_id).status_code == 201
    siprec = start_recording(stack, sid(6))
    assert call.delete()["result"] == "ok"  # the proxy's rtpengine_delete() on BYE
    stack.wait_event(siprec, "siprec-stopped", timeout=5)
    wait_until(lambda: registered_nothing(stack, sid(6)), 5, "the call to end")
    record = requests.get(f"{stack.url}/2010-04-01/Accounts/{stack.account}/Calls/"
                          f"{sid(6)}.json", auth=stack.auth, timeout=5).json()
    assert record["status"] == "completed", record
    assert "siprec-error" not in {f.get("SiprecEvent") for f in stack.sink.received}


def test_a_lost_subscription_is_a_siprec_error_and_the_next_siprec_subscribes_again(
        stack, call, rtpengine):
    call.start_tones(A_HZ, B_HZ, seconds=15)
    assert stack.register(sid(7), call.call_id).status_code == 201
    siprec = start_recording(stack, sid(7), "first")
    [ours, *_] = sorted(our_subscriptions(rtpengine.ng, call.call_id))
    ng_request(rtpengine.ng, {"command": "unsubscribe", "call-id": call.call_id,
                              "to-tag": ours})
    error = stack.wait_event(siprec, "siprec-error", timeout=5)
    assert error["SiprecErrorCode"] == "900067", error
    # The other track's subscription went too; the call stays registered.
    wait_until(lambda: our_subscriptions(rtpengine.ng, call.call_id) == set(), 3,
               "the other subscription to go")
    assert stack.view(sid(7)).json()["media_source"]["attached"] is False
    again = start_recording(stack, sid(7), "second")
    assert len(our_subscriptions(rtpengine.ng, call.call_id)) == 2
    before = stack.received(sid(7))
    time.sleep(0.5)
    assert all(stack.received(sid(7))[t] > before[t] + 10 for t in before)
    assert stack.stop_siprec(sid(7), "second").status_code == 200
    stack.wait_event(again, "siprec-stopped")


def test_rtpengine_restarted_is_a_siprec_error_and_ends_the_call(rtpengine, tmp_path, call):
    stack = DaemonStack(tmp_path, rtpengine.ng, check_interval=0.5, timeout=0.5)
    try:
        assert stack.register(sid(8), call.call_id).status_code == 201
        siprec = start_recording(stack, sid(8))
        # A start time that differs from the first by more than the tolerance.
        time.sleep(max(0.0, rtpengine.started_at + 2.2 - time.time()))
        rtpengine.stop()
        rtpengine.start()
        error = stack.wait_event(siprec, "siprec-error", timeout=6)
        assert error["SiprecErrorCode"] == "900065", error
        wait_until(lambda: registered_nothing(stack, sid(8)), 5, "the call to end")
        assert stack.sink.received.count(error) == 1
        assert "siprec-stopped" not in stack.sink.events(siprec)  # one terminal callback
    finally:
        stack.close()


def test_rtpengine_not_answering_a_live_call_is_a_siprec_error(rtpengine, tmp_path, call):
    stack = DaemonStack(tmp_path, rtpengine.ng, check_interval=0.3, timeout=0.3)
    try:
        assert stack.register(sid(9), call.call_id).status_code == 201
        siprec = start_recording(stack, sid(9))
        rtpengine.stop()
        error = stack.wait_event(siprec, "siprec-error", timeout=8)
        assert error["SiprecErrorCode"] == "900060", error
        assert stack.view(sid(9)).status_code == 200  # retried: the call stays
    finally:
        stack.close()


def test_a_siprec_cannot_start_when_rtpengine_is_down_and_nothing_changes(rtpengine,
                                                                          tmp_path, call):
    stack = DaemonStack(tmp_path, rtpengine.ng, check_interval=30, timeout=0.5)
    try:
        assert stack.register(sid(10), call.call_id).status_code == 201
        rtpengine.stop()
        answer = stack.start_siprec(sid(10), "rec")
        assert error_of(answer) == (503, 900060)
        listed = requests.get(f"{stack.url}/2010-04-01/Accounts/{stack.account}/Calls/"
                              f"{sid(10)}/Siprec.json", auth=stack.auth, timeout=5).json()
        assert listed["siprec"] == [], listed  # no resource was created
        assert stack.view(sid(10)).json()["media_source"]["attached"] is False
    finally:
        stack.close()


def test_a_recording_survives_a_lost_subscription(stack, call, rtpengine):
    """No Siprec to report the loss to: a live Recording keeps its media, mediafork
    subscribes again."""
    call.start_tones(A_HZ, B_HZ, seconds=15)
    assert stack.register(sid(11), call.call_id).status_code == 201
    base = f"{stack.url}/2010-04-01/Accounts/{stack.account}/Calls/{sid(11)}/Recordings"
    created = requests.post(f"{base}.json", auth=stack.auth, timeout=10, data={})
    assert created.status_code == 201, created.text
    first = our_subscriptions(rtpengine.ng, call.call_id)
    assert len(first) == 2
    ng_request(rtpengine.ng, {"command": "unsubscribe", "call-id": call.call_id,
                              "to-tag": sorted(first)[0]})
    assert len(our_subscriptions(rtpengine.ng, call.call_id)) == 1
    # Found within a check interval, both tracks unsubscribed and subscribed afresh.
    wait_until(lambda: len(our_subscriptions(rtpengine.ng, call.call_id)) == 2, 5,
               "the subscriptions to come back")
    time.sleep(0.3)
    before = stack.received(sid(11))
    time.sleep(0.5)
    assert all(stack.received(sid(11))[t] > before[t] + 10 for t in before)
