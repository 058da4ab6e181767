"""The Siprec REST resource driven with the official twilio client against the running server."""

from __future__ import annotations

import pytest
from harness import (
    ACCOUNT,
    CALLEE,
    CALLER,
    CONNECTOR_SECRET,
    OTHER,
    OTHER_TOKEN,
    TOKEN,
    Receiver,
    Recorders,
    Server,
    ended,
    roles,
)
from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator


def events(receiver: Receiver, sid: str) -> list[str]:
    return [r.params["SiprecEvent"] for r in receiver.for_sid(sid)]




def test_create_with_parameters_then_stop_by_sid(server: Server, receiver: Receiver,
                                                  recorders: Recorders) -> None:
    call = server.register()
    client = server.client()
    siprec = client.calls(call["call_sid"]).siprec.create(
        name="first", connector_name="Gridspace_1", track="inbound_track",
        status_callback=receiver.base + "/cb/one", status_callback_method="POST",
        # Names are free text, as the platform's are: the official client sends them as typed.
        parameter1_name="Agent Name", parameter1_value="Zoë O'Brien <alice@example.com>",
        parameter2_name="Warteschlange & Queue #2", parameter2_value="sales")
    assert siprec.sid.startswith("SR") and len(siprec.sid) == 34
    assert siprec.status == "in-progress" and siprec.name == "first"
    assert siprec.call_sid == call["call_sid"] and siprec.account_sid == ACCOUNT
    receiver.wait(lambda _: events(receiver, siprec.sid) == ["siprec-started"])
    # What Gridspace_1's recorder got: TLS (secure=true), SRTP, the inbound track only,
    # the custom parameters and the call's participants in the metadata.
    [got] = recorders.recorded(recorders.secure, call["call_sid"])
    assert got["transport"] == "TLS" and got["siprec"]
    assert got["parameters"] == {"Agent Name": "Zoë O'Brien <alice@example.com>",
                                 "Warteschlange & Queue #2": "sales"}
    assert got["labels"] == ["1"]
    assert got["streams"][0]["srtp_suite"] == "AES_CM_128_HMAC_SHA1_80"
    assert roles(got) == {CALLER: (["1"], []), CALLEE: ([], ["1"])}

    stopped = client.calls(call["call_sid"]).siprec(siprec.sid).update(status="stopped")
    assert stopped.status == "stopped"
    receiver.wait(lambda _: events(receiver, siprec.sid) == ["siprec-started", "siprec-stopped"])
    [got] = recorders.recorded(recorders.secure, call["call_sid"], ended)
    assert got["ended_by"] == "src"
    # idempotent
    again = client.calls(call["call_sid"]).siprec(siprec.sid).update(status="stopped")
    assert again.status == "stopped"
    got = server.host("GET", f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{call['call_sid']}"
                             f"/Siprec/{siprec.sid}.json").json()
    assert got["status"] == "stopped"

    validator = RequestValidator(TOKEN)
    received = receiver.for_sid(siprec.sid)
    for r in received:
        assert validator.validate(r.url, r.params, r.signature), r
        assert r.params["From"] == "sip:+15551230000@pbx.example"
        assert r.params["To"] == "sip:+15559870000@pbx.example"
        assert r.params["ApiVersion"] == "2010-04-01"
        assert r.params["SiprecName"] == "first" and r.params["CallSid"] == call["call_sid"]


def test_stop_by_name_and_default_connector_get_callbacks(server: Server, receiver: Receiver,
                                                          recorders: Recorders) -> None:
    call = server.register()
    client = server.client()
    siprec = client.calls(call["call_sid"]).siprec.create(
        name="by-name", status_callback=receiver.base + "/cb/get",
        status_callback_method="GET")
    receiver.wait(lambda _: events(receiver, siprec.sid) == ["siprec-started"])
    # The Default connector's recorder (which checks its credentials header) got both tracks
    # over plain UDP and RTP.
    [got] = recorders.recorded(recorders.default, call["call_sid"])
    assert got["transport"] == "UDP" and got["parameters"] == {}
    assert sorted(got["labels"]) == ["1", "2"]
    assert [s["srtp_suite"] for s in got["streams"]] == [None, None]
    assert roles(got) == {CALLER: (["1"], ["2"]), CALLEE: (["2"], ["1"])}
    stopped = client.calls(call["call_sid"]).siprec("by-name").update(status="stopped")
    assert stopped.sid == siprec.sid and stopped.status == "stopped"
    recorders.recorded(recorders.default, call["call_sid"], ended)
    got = receiver.wait(lambda _: len(events(receiver, siprec.sid)) == 2)
    mine = [r for r in got if r.params.get("SiprecSid") == siprec.sid]
    assert [r.method for r in mine] == ["GET", "GET"]
    validator = RequestValidator(TOKEN)
    for r in mine:
        assert validator.validate(r.url, {}, r.signature)


def test_stream_budget_fifth_stream_refused(server: Server, recorders: Recorders) -> None:
    call = server.register()
    siprecs = server.client().calls(call["call_sid"]).siprec
    siprecs.create(name="a", track="both_tracks")
    siprecs.create(name="b", track="inbound_track")
    siprecs.create(name="c", track="outbound_track")
    with pytest.raises(TwilioRestException) as info:
        siprecs.create(name="d", track="inbound_track")
    assert info.value.status == 400 and info.value.code == 900007
    # stopping one frees its streams
    siprecs("b").update(status="stopped")
    siprecs.create(name="e", track="inbound_track")
    view = server.host("GET", f"/v1/Calls/{call['call_sid']}").json()
    assert len(view["forks"]) == 4
    assert sorted(s["name"] for s in view["siprecs"] if s["status"] == "in-progress") == \
        ["a", "c", "e"]
    # The recorder saw four sessions, with one stream per track each: a (both), b (ended),
    # c (outbound), e (inbound); the refused d never reached it.
    def four(got: list[dict]) -> bool:
        return len(got) == 4 and sorted(s["state"] for s in got) == ["ended"] + ["established"] * 3
    got = recorders.recorded(recorders.default, call["call_sid"], four)
    assert sorted((s["state"], sorted(s["labels"])) for s in got) == [
        ("ended", ["1"]), ("established", ["1"]), ("established", ["1", "2"]),
        ("established", ["2"])]


def test_refusals_change_nothing(server: Server, recorders: Recorders) -> None:
    call = server.register()
    siprecs = server.client().calls(call["call_sid"]).siprec
    siprecs.create(name="dup")
    recorders.recorded(recorders.default, call["call_sid"])
    before = recorders.total()
    cases = [
        (dict(name="dup"), 400, 900008),
        (dict(name="x", track="left_track"), 400, 31941),
        (dict(name="y", connector_name="Nope"), 400, 31940),
        (dict(name="z", status_callback="ftp://example.com/"), 400, 21609),
        (dict(name="w", status_callback_method="PUT"), 400, 900005),
    ]
    for kwargs, status, code in cases:
        with pytest.raises(TwilioRestException) as info:
            siprecs.create(**kwargs)
        assert (info.value.status, info.value.code) == (status, code), kwargs
    listed = server.host("GET", f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{call['call_sid']}"
                                "/Siprec.json").json()
    assert [s["name"] for s in listed["siprec"]] == ["dup"]
    # No INVITE left for any recorder: once a later Siprec's session is up, it is the only new
    # one (an INVITE from a refused request would have been sent before it).
    siprecs.create(name="after")
    recorders.recorded(recorders.default, call["call_sid"], lambda got: len(got) == 2 and all(
        s["state"] == "established" for s in got))
    assert recorders.total() == before + 1
    # `in-progress` and `paused` are accepted now (resume and pause); other words are not.
    with pytest.raises(TwilioRestException) as info:
        siprecs("dup").update(status="running")
    assert info.value.status == 400 and info.value.code == 900010
    assert "stopped, paused, in-progress" in info.value.msg


def test_missing_default_connector_is_31940(server: Server) -> None:
    # The other account has a Default; ours does too, so use a call of the other account
    # with an explicit unknown name, and check the message for a missing Default via the
    # service directly.
    from mediafork.control.errors import ApiError
    with pytest.raises(ApiError) as info:
        server.service.connector("AC" + "c3" * 16, None, "ConnectorName")
    assert info.value.code == 31940


def test_wrong_password_401_and_other_account_404(server: Server) -> None:
    call = server.register()
    mine = server.client().calls(call["call_sid"]).siprec.create(name="private")
    bad = server.client(ACCOUNT, "wrong-" + TOKEN)
    with pytest.raises(TwilioRestException) as info:
        bad.calls(call["call_sid"]).siprec.create(name="nope")
    assert info.value.status == 401 and info.value.code == 20003
    other = server.client(OTHER, OTHER_TOKEN)
    # Using the other account's own path: the call is not theirs.
    with pytest.raises(TwilioRestException) as info:
        other.calls(call["call_sid"]).siprec.create(name="steal")
    assert info.value.status == 404 and info.value.code == 20404
    with pytest.raises(TwilioRestException) as info:
        other.calls(call["call_sid"]).siprec(mine.sid).update(status="stopped")
    assert info.value.status == 404
    # Our path with their credentials: also 404, same body as for a call that never existed.
    r1 = server.host("GET", f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{call['call_sid']}"
                            f"/Siprec/{mine.sid}.json", auth=(OTHER, OTHER_TOKEN))
    r2 = server.host("GET", f"/2010-04-01/Accounts/{OTHER}/Calls/{'CA' + '0' * 32}"
                            f"/Siprec/{mine.sid}.json", auth=(OTHER, OTHER_TOKEN))
    assert r1.status_code == r2.status_code == 404
    assert r1.json() == r2.json()
    # Unknown account with any password: 401, like a wrong password.
    r3 = server.host("GET", "/v1/Calls", auth=("AC" + "9" * 32, TOKEN))
    assert r3.status_code == 401 and r3.json()["code"] == 20003
    assert "WWW-Authenticate" in r3.headers


def test_link_errors(server: Server, receiver: Receiver, recorders: Recorders) -> None:
    call = server.register()
    siprecs = server.client().calls(call["call_sid"]).siprec
    before = recorders.total()
    # Fails before anything is sent: the connector names an edge that does not exist.
    with pytest.raises(TwilioRestException) as info:
        siprecs.create(name="noedge", connector_name="NoEdge",
                       status_callback=receiver.base + "/cb/noedge")
    assert info.value.status == 503 and info.value.code == 900014
    assert "'nowhere'" in info.value.msg and "NoEdge" in info.value.msg, info.value.msg
    got = server.host("GET", f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{call['call_sid']}"
                             "/Siprec/noedge.json").json()
    assert got["status"] == "stopped"
    # The recorder refuses: 488, reported in a siprec-error callback (900030, setup failed).
    rejected = siprecs.create(name="rejected", connector_name="Rejecting",
                              status_callback=receiver.base + "/cb/err")
    got = receiver.wait(lambda _: events(receiver, rejected.sid) == ["siprec-error"])
    err = [r for r in got if r.params.get("SiprecSid") == rejected.sid][0]
    assert err.params["SiprecErrorCode"] == "900030"
    host, port = recorders.rejecting.address
    message = err.params["SiprecError"]
    assert "SIP 488" in message and "setup phase" in message, message
    assert f"sip:recorder@{host}:{port}" in message, message
    assert RequestValidator(TOKEN).validate(err.url, err.params, err.signature)
    # The recorder saw the INVITE and the one documented retry (legacy metadata content type,
    # same Call-ID), both refused; nothing reached any recorder for the NoEdge one.
    refused = recorders.last(recorders.rejecting, 2)
    assert [(s["state"], s["status"]) for s in refused] == [("rejected", 488)] * 2
    assert refused[0]["call_id"] == refused[1]["call_id"]
    assert recorders.total() == before + 2
    assert events(receiver, "noedge") == []
    # the twilio client has no Siprec fetch (the platform documents none): plain GET
    got = server.host("GET", f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{call['call_sid']}"
                             f"/Siprec/{rejected.sid}.json").json()
    assert got["status"] == "stopped"


def test_slow_receiver_does_not_delay_others(server: Server, receiver: Receiver) -> None:
    call = server.register()
    siprecs = server.client().calls(call["call_sid"]).siprec
    slow = siprecs.create(name="slow", track="inbound_track",
                          status_callback=receiver.base + "/slow/x")
    fast = siprecs.create(name="fast", track="inbound_track",
                          status_callback=receiver.base + "/cb/fast")
    receiver.wait(lambda _: events(receiver, fast.sid) == ["siprec-started"])
    siprecs("fast").update(status="stopped")
    import time
    t0 = time.monotonic()
    receiver.wait(lambda _: events(receiver, fast.sid) == ["siprec-started", "siprec-stopped"],
                  timeout=5)
    assert time.monotonic() - t0 < 1.0
    assert events(receiver, slow.sid) == []


def test_secrets_never_in_responses_or_logs(server: Server, recorders: Recorders,
                                            caplog: pytest.LogCaptureFixture) -> None:
    import logging
    caplog.set_level(logging.DEBUG)
    call = server.register()
    siprecs = server.client().calls(call["call_sid"]).siprec
    siprecs.create(name="s1")
    # The credential did go to the recorder (it answers 403 without it)...
    [got] = recorders.recorded(recorders.default, call["call_sid"])
    assert got["status"] == 200
    bodies = [
        server.host("GET", f"/v1/Calls/{call['call_sid']}").text,
        server.host("GET", f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{call['call_sid']}"
                           "/Siprec.json").text,
        server.host("GET", "/v1/Calls", auth=(ACCOUNT, "bad")).text,
        server.host("POST", f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{call['call_sid']}"
                            "/Siprec.json").text,
    ]
    # ...and nowhere else: not in responses, logs (ours and the recorder's), reprs, or the
    # recorder's summary.
    text = "\n".join(bodies) + caplog.text + repr(server.config) + repr(server.links) + \
        repr(server.service) + str(got)
    for secret in (TOKEN, OTHER_TOKEN, CONNECTOR_SECRET):
        assert secret not in text


def test_unknown_paths_and_methods_are_json(server: Server) -> None:
    r = server.host("GET", "/nope")
    assert r.status_code == 404 and r.json()["code"] == 20404
    r = server.host("PUT", "/v1/Calls")
    assert r.status_code == 405 and r.json()["code"] == 900015
    r = requests_post_big(server)
    assert r.status_code == 413 and r.json()["code"] == 900015


def requests_post_big(server: Server):  # type: ignore[no-untyped-def]
    import requests
    call = "CA" + "1" * 32
    return requests.post(
        f"{server.base_url}/2010-04-01/Accounts/{ACCOUNT}/Calls/{call}/Siprec.json",
        data={"Name": "x" * 200_000}, auth=(ACCOUNT, TOKEN), timeout=10)
