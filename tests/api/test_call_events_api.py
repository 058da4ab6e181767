"""Host call events over REST (POST /v1/Calls/{CallSid}/Events) and the control socket: the
reference recorder folds each partial document into what it knows of the call."""

from __future__ import annotations

from typing import Any

from harness import ACCOUNT, CALLEE, CALLER, OTHER, OTHER_TOKEN, TOKEN, Recorders, Server, roles
from test_control_socket import Peer, sock_path  # noqa: F401  (fixture)

CAROL = "sip:carol@transfer.example"
SUP = "sip:sup@example.com"


def event(server: Server, sid: str, body: Any, **kw: Any) -> Any:
    return server.host("POST", f"/v1/Calls/{sid}/Events", json=body, **kw)


def test_events_reach_the_recorder_in_order_and_change_the_call(
        server: Server, recorders: Recorders) -> None:
    call = server.register()
    sid = call["call_sid"]
    server.client().calls(sid).siprec.create(name="ev")
    recorders.recorded(recorders.default, sid)

    r = event(server, sid, {"event": "hold", "track": "inbound"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["event"] == "hold" and len(body["sent_to"]) == 1
    assert body["call"]["held"] == ["inbound"]
    r = event(server, sid, {"event": "participant-replaced", "track": "outbound",
                            "participant": {"aor": CAROL, "name": "Carol & <co>"}})
    assert r.status_code == 200, r.text
    assert r.json()["call"]["to"] == CAROL  # a transfer is a new To as well
    r = event(server, sid, {"event": "participant-added", "track": "outbound",
                            "participant": {"aor": SUP}})
    assert r.status_code == 200, r.text
    r = event(server, sid, {"event": "unhold", "track": "inbound"})
    assert r.status_code == 200, r.text
    assert r.json()["call"]["participants"] == [
        {"aor": CALLER, "name": None, "track": "inbound"},
        {"aor": CAROL, "name": "Carol & <co>", "track": "outbound"},
        {"aor": SUP, "name": None, "track": "outbound"},
    ]

    [got] = recorders.recorded(recorders.default, sid,
                               lambda g: len(g) == 1 and g[0]["reinvites"] >= 4)
    assert got["metadata"]["errors"] == []
    assert got["metadata"]["datamodes"] == ["complete"] + ["partial"] * 4
    # Unheld again: everyone sends their track and hears the other; Bob left.
    assert roles(got) == {CALLER: (["1"], ["2"]), CAROL: (["2"], ["1"]), SUP: (["2"], ["1"])}
    assert [p["aors"] for p in got["participants"] if p["disassociated"]] == [[CALLEE]]

    # A Siprec started now begins from the call as it is (complete metadata).
    server.client().calls(sid).siprec.create(name="later")
    later = recorders.recorded(recorders.default, sid, lambda g: len(g) == 2)
    fresh = [g for g in later if g["reinvites"] == 0][0]
    assert roles(fresh) == roles(got)
    assert server.host("DELETE", f"/v1/Calls/{sid}").status_code == 204


def test_bad_events_are_refused_and_change_nothing(server: Server,
                                                   recorders: Recorders) -> None:
    call = server.register()
    sid = call["call_sid"]
    server.client().calls(sid).siprec.create(name="bad")
    recorders.recorded(recorders.default, sid)
    bad = [
        ({}, 900002, "event is required"),
        ({"event": "mute", "track": "inbound"}, 900001, "event must be one of"),
        ({"event": "hold"}, 900002, "track is required"),
        ({"event": "hold", "track": "both"}, 900001, "track must be inbound or outbound"),
        ({"event": "hold", "track": "inbound", "extra": 1}, 900001, "unknown keys"),
        ({"event": "participant-added", "track": "inbound"}, 900002, "participant is required"),
        ({"event": "participant-added", "track": "inbound", "participant": {"aor": "bob"}},
         900001, "participant.aor must be a sip:"),
        ({"event": "participant-added", "track": "inbound",
          "participant": {"aor": "sip:u:secret@example.com"}}, 900001, "must not carry a password"),
        ({"event": "participant-added", "track": "inbound", "participant": {"aor": CALLER}},
         900001, "already in the call"),
        ({"event": "participant-removed", "participant": {"aor": CALLER}}, 900001,
         "is a side of the call"),
        ({"event": "participant-removed", "participant": {"aor": SUP}}, 900001,
         "not an added participant"),
    ]
    for body, code, text in bad:
        r = event(server, sid, body)
        assert r.status_code == 400 and r.json()["code"] == code, (body, r.text)
        assert text in r.json()["message"], (body, r.text)
        assert "secret" not in r.text
    assert event(server, "CA" + "0" * 32, {"event": "hold", "track": "inbound"}
                 ).status_code == 404
    assert event(server, sid, {"event": "hold", "track": "inbound"},
                 auth=(OTHER, OTHER_TOKEN)).status_code == 404
    view = server.host("GET", f"/v1/Calls/{sid}").json()
    assert view["held"] == [] and [p["aor"] for p in view["participants"]] == [CALLER, CALLEE]
    [got] = recorders.recorded(recorders.default, sid)
    assert got["reinvites"] == 0  # nothing was sent for a refused event
    # A repeated hold is accepted but has nothing to tell the recorder.
    assert len(event(server, sid, {"event": "hold", "track": "outbound"}).json()["sent_to"]) == 1
    assert event(server, sid, {"event": "hold", "track": "outbound"}).json()["sent_to"] == []
    assert server.host("DELETE", f"/v1/Calls/{sid}").status_code == 204


def test_control_socket_event_op(server: Server, recorders: Recorders,
                                 sock_path: Any) -> None:  # noqa: F811
    peer = Peer(sock_path)
    peer.pending = []
    assert peer.call("auth", account_sid=ACCOUNT, auth_token=TOKEN)["ok"]
    assert peer.call("subscribe")["ok"]
    call = server.register()
    sid = call["call_sid"]
    server.client().calls(sid).siprec.create(name="sockev")
    recorders.recorded(recorders.default, sid)
    reply = peer.call("event", call_sid=sid, event="participant-added", track="inbound",
                      participant={"aor": SUP, "name": "Sup"})
    assert reply["ok"], reply
    assert len(reply["result"]["sent_to"]) == 1
    bad = peer.call("event", call_sid=sid, event="hold", track="sideways")
    assert bad["error"]["code"] == 900001
    [got] = recorders.recorded(recorders.default, sid,
                               lambda g: len(g) == 1 and g[0]["reinvites"] >= 1)
    assert roles(got)[SUP] == (["1"], ["2"])
    while not any(e["event"] == "call-event" for e in peer.pending):
        peer.pending.append(peer.recv())
    [ev] = [e for e in peer.pending if e["event"] == "call-event"]
    assert ev["data"] == {"CallSid": sid, "Event": "participant-added", "Track": "inbound"}
    assert server.host("DELETE", f"/v1/Calls/{sid}").status_code == 204
    peer.sock.close()
