"""A paused Siprec is still a live one: it keeps its forked streams in the call's budget,
TwiML and call end stop it, the host API shows it paused; and a pause right after the
create reaches the recorder."""

from __future__ import annotations

import pytest
from harness import ACCOUNT, Receiver, Recorders, Server
from twilio.base.exceptions import TwilioRestException


def _events(receiver: Receiver, sid: str) -> list[str]:
    return [r.params["SiprecEvent"] for r in receiver.for_sid(sid)]


def test_a_paused_siprec_keeps_its_streams_and_stops_with_twiml(
        server: Server, receiver: Receiver, recorders: Recorders) -> None:
    call = server.register()
    call_sid = call["call_sid"]
    siprecs = server.client().calls(call_sid).siprec
    held = siprecs.create(name="held", track="both_tracks",
                          status_callback=receiver.base + "/cb/held")
    siprecs.create(name="other", track="both_tracks")
    recorders.recorded(recorders.default, call_sid,
                       lambda got: len(got) == 2 and all(s["state"] == "established"
                                                         for s in got))
    assert siprecs("held").update(status="paused").status == "paused"
    # Still four streams in use: a fifth is refused, and nothing was started.
    with pytest.raises(TwilioRestException) as info:
        siprecs.create(name="fifth", track="inbound_track")
    assert (info.value.status, info.value.code) == (400, 900007)
    view = server.host("GET", f"/v1/Calls/{call_sid}").json()
    assert {s["name"]: s["status"] for s in view["siprecs"]} == {
        "held": "paused", "other": "in-progress"}
    assert sorted(f["paused"] for f in view["forks"]) == [False, False, True, True]

    # TwiML <Stop> stops a paused Siprec like a running one.
    answer = server.client().calls(call_sid).update(
        twiml='<Response><Stop><Siprec name="held"/></Stop></Response>')
    assert answer.sid == call_sid
    got = server.host("GET", f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{call_sid}"
                             "/Siprec/held.json").json()
    assert got["status"] == "stopped"
    receiver.wait(lambda _: _events(receiver, held.sid)[-1:] == ["siprec-stopped"])
    assert _events(receiver, held.sid) == ["siprec-started", "siprec-paused", "siprec-stopped"]
    # Its streams are free again.
    siprecs.create(name="fifth", track="inbound_track")
    assert server.host("DELETE", f"/v1/Calls/{call_sid}").status_code == 204


def test_call_end_stops_a_paused_siprec(server: Server, receiver: Receiver,
                                        recorders: Recorders) -> None:
    call = server.register()
    call_sid = call["call_sid"]
    siprec = server.client().calls(call_sid).siprec.create(
        name="p", status_callback=receiver.base + "/cb/p")
    receiver.wait(lambda _: _events(receiver, siprec.sid) == ["siprec-started"])
    server.client().calls(call_sid).siprec(siprec.sid).update(status="paused")
    [got] = recorders.recorded(
        recorders.default, call_sid,
        lambda got: len(got) == 1 and got[0]["offered_directions"][-1:] == [["inactive"] * 2])
    assert server.host("DELETE", f"/v1/Calls/{call_sid}").status_code == 204
    receiver.wait(lambda _: _events(receiver, siprec.sid)[-1:] == ["siprec-stopped"])
    assert _events(receiver, siprec.sid) == ["siprec-started", "siprec-paused",
                                             "siprec-stopped"]
    recorders.recorded(recorders.default, call_sid,
                       lambda got: len(got) == 1 and got[0]["state"] == "ended")


def test_pause_right_after_create(server: Server, receiver: Receiver,
                                  recorders: Recorders) -> None:
    """Paused right after the create (the INVITE may still be unanswered: the pause is then
    queued behind it, the forks being paused at once): the recorder gets the a=inactive
    re-INVITE once the session is up."""
    call = server.register()
    call_sid = call["call_sid"]
    client = server.client()
    siprec = client.calls(call_sid).siprec.create(name="early",
                                                  status_callback=receiver.base + "/cb/e")
    # Sent right after the create returned: the INVITE is at most on its way.
    assert client.calls(call_sid).siprec("early").update(status="paused").status == "paused"
    [got] = recorders.recorded(
        recorders.default, call_sid,
        lambda got: len(got) == 1 and got[0]["offered_directions"] == [
            ["sendonly", "sendonly"], ["inactive", "inactive"]])
    receiver.wait(lambda _: len(_events(receiver, siprec.sid)) == 2)
    assert sorted(_events(receiver, siprec.sid)) == ["siprec-paused", "siprec-started"]
    assert client.calls(call_sid).siprec("early").update(
        status="in-progress").status == "in-progress"
    recorders.recorded(recorders.default, call_sid,
                       lambda got: got[0]["offered_directions"][-1:] == [["sendonly"] * 2])
    assert server.host("DELETE", f"/v1/Calls/{call_sid}").status_code == 204
