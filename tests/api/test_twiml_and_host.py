"""TwiML on a live call, and the host call API (register, RTP to the ingress ports, end)."""

from __future__ import annotations

import socket
import struct
import time

import pytest
from harness import (
    ACCOUNT,
    CALLEE,
    CALLER,
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


def siprec_list(server: Server, call_sid: str) -> list[dict]:
    r = server.host("GET", f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{call_sid}/Siprec.json")
    assert r.status_code == 200
    return r.json()["siprec"]


def test_twiml_start_with_parameters_and_stop_by_name(server: Server, receiver: Receiver,
                                                      recorders: Recorders) -> None:
    call = server.register()
    client = server.client()
    twiml = (
        "<Response><Start><Siprec name=\"tw1\" connectorName=\"Gridspace_1\" "
        "track=\"outbound_track\" statusCallback=\"" + receiver.base + "/cb/tw1\">"
        "<Parameter name=\"Agent\" value=\"bob\"/></Siprec></Start>"
        "<Pause length=\"60\"/></Response>"
    )
    client.calls(call["call_sid"]).update(twiml=twiml)
    [siprec] = siprec_list(server, call["call_sid"])
    assert siprec["name"] == "tw1"
    # Gridspace_1's recorder: the outbound track only, the <Parameter>, over TLS.
    [got] = recorders.recorded(recorders.secure, call["call_sid"])
    assert got["transport"] == "TLS" and got["labels"] == ["2"]
    assert got["parameters"] == {"Agent": "bob"}
    assert roles(got) == {CALLER: ([], ["2"]), CALLEE: (["2"], [])}
    receiver.wait(lambda _: [r.params["SiprecEvent"] for r in receiver.for_sid(siprec["sid"])]
                  == ["siprec-started"])
    client.calls(call["call_sid"]).update(
        twiml="<Response><Stop><Siprec name=\"tw1\"/></Stop></Response>")
    assert siprec_list(server, call["call_sid"])[0]["status"] == "stopped"
    got = receiver.wait(lambda _: len(receiver.for_sid(siprec["sid"])) == 2)
    assert got  # started, stopped
    assert recorders.recorded(recorders.secure, call["call_sid"], ended)[0]["ended_by"] == "src"
    for r in receiver.for_sid(siprec["sid"]):
        assert RequestValidator(TOKEN).validate(r.url, r.params, r.signature)


@pytest.mark.parametrize("document, code", [
    ("<Response><Start><Siprec name=\"a\"></Start></Response>", 12100),
    ("<Response><Start><Stream url=\"wss://x\"/></Start></Response>", 12200),
    ("<Response><Start><Siprec name=\"a\" track=\"sideways\"/></Start></Response>", 31941),
    ("<Response><Start><Siprec nme=\"a\"/></Start></Response>", 12200),
    ("<Respons/>", 12102),
    ("<Response><Start><Siprec name=\"big\">" + "<Parameter name=\"p\" value=\"v\"/>" * 200
     + "</Siprec></Start></Response>", 32018),
    # valid first action, invalid second: nothing may be applied
    ("<Response><Start><Siprec name=\"ok1\"/></Start>"
     "<Stop><Siprec name=\"missing\"/></Stop></Response>", 20404),
    ("<Response><Start><Siprec name=\"ok2\"/></Start>"
     "<Start><Siprec name=\"bad\" connectorName=\"Nope\"/></Start></Response>", 31940),
])
def test_bad_twiml_refused_and_nothing_changed(server: Server, recorders: Recorders,
                                               document: str, code: int) -> None:
    call = server.register()
    before = recorders.total()
    with pytest.raises(TwilioRestException) as info:
        server.client().calls(call["call_sid"]).update(twiml=document)
    assert info.value.code == code
    assert siprec_list(server, call["call_sid"]) == []
    # No INVITE left for any recorder: once a later Siprec's session is up, it is the only new
    # one (an INVITE from the refused document would have been sent before it).
    server.client().calls(call["call_sid"]).siprec.create(name="after")
    recorders.recorded(recorders.default, call["call_sid"])
    assert recorders.total() == before + 1


def rtp(seq: int, ts: int, payload: bytes = b"\xff" * 160) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, ts, 0x1234) + payload


def test_host_api_register_rtp_counters_update_end(server: Server, receiver: Receiver,
                                                   recorders: Recorders) -> None:
    call = server.register(sources={"inbound": "127.0.0.1"})
    sid = call["call_sid"]
    ingress = call["ingress"]
    assert set(ingress) == {"inbound", "outbound"}
    assert ingress["inbound"]["port"] != ingress["outbound"]["port"]
    siprec = server.client().calls(sid).siprec.create(
        name="h1", status_callback=receiver.base + "/cb/host")
    receiver.wait(lambda _: len(receiver.for_sid(siprec.sid)) == 1)

    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(10):
        sender.sendto(rtp(i, i * 160), (ingress["inbound"]["address"],
                                         ingress["inbound"]["port"]))
        sender.sendto(rtp(i, i * 160), (ingress["outbound"]["address"],
                                         ingress["outbound"]["port"]))
    sender.close()
    deadline = time.monotonic() + 5
    while True:
        view = server.host("GET", f"/v1/Calls/{sid}").json()
        forwarded = [f["counters"] for f in view["forks"]]
        if all(c.get("forwarded", c.get("sent", 0)) or c.get("queued", 0) for c in forwarded) \
                and view["counters"]["inbound"].get("received", 0) >= 10:
            break
        assert time.monotonic() < deadline, view
        time.sleep(0.05)
    assert view["from"] == CALLER
    assert [s["name"] for s in view["siprecs"]] == ["h1"]
    assert len(view["forks"]) == 2
    # The packets went through the forks to the recorder, on both streams.
    [got] = recorders.recorded(recorders.default, sid, lambda g: len(g) == 1 and all(
        s["packets"] >= 10 for s in g[0]["streams"]))
    assert sorted(s["label"] for s in got["streams"]) == ["1", "2"]
    assert all(s["codec"] == "PCMU" and s["lost"] == 0 for s in got["streams"]), got["streams"]

    updated = server.host("POST", f"/v1/Calls/{sid}", json={"to": "sip:+15550000000@x"})
    assert updated.status_code == 200 and updated.json()["to"] == "sip:+15550000000@x"
    # The recorder got partial metadata in one re-INVITE: the new callee in, the old one out.
    [got] = recorders.recorded(recorders.default, sid,
                               lambda g: len(g) == 1 and g[0]["reinvites"] >= 1)
    assert (got["reinvites"], got["updates"]) == (1, 0)
    assert got["metadata"]["datamodes"] == ["complete", "partial"]
    assert roles(got) == {CALLER: (["1"], ["2"]), "sip:+15550000000@x": (["2"], ["1"])}
    assert [p["aors"] for p in got["participants"] if p["disassociated"]] == [[CALLEE]]

    # another account can neither see nor end it
    assert server.host("GET", f"/v1/Calls/{sid}", auth=(OTHER, OTHER_TOKEN)).status_code == 404
    assert server.host("DELETE", f"/v1/Calls/{sid}",
                       auth=(OTHER, OTHER_TOKEN)).status_code == 404

    r = server.host("DELETE", f"/v1/Calls/{sid}")
    assert r.status_code == 204
    got = receiver.wait(lambda _: len(receiver.for_sid(siprec.sid)) == 2)
    last = [x for x in got if x.params.get("SiprecSid") == siprec.sid][-1]
    assert last.params["SiprecEvent"] == "siprec-stopped"
    assert last.params["To"] == "sip:+15550000000@x"
    assert recorders.recorded(recorders.default, sid, ended)[0]["ended_by"] == "src"
    assert server.host("GET", f"/v1/Calls/{sid}").status_code == 404
    # the resource still answers after the call ended
    fetched = server.host("GET", f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{sid}"
                                 f"/Siprec/{siprec.sid}.json").json()
    assert fetched["status"] == "stopped"
    with pytest.raises(TwilioRestException) as info:
        server.client().calls(sid).siprec.create(name="late")
    assert info.value.status == 404


def test_host_api_validation(server: Server) -> None:
    bad = [
        ({"call_sid": "nope"}, 900011),
        ({"call_sid": "CA" + "1" * 32, "codec": {"payload_type": 300}}, 900001),
        ({"call_sid": "CA" + "1" * 32, "sources": {"sideways": "1.2.3.4"}}, 900001),
        ({"call_sid": "CA" + "1" * 32, "account_sid": OTHER}, 900001),
        ([1, 2], 900015),
    ]
    for body, code in bad:
        r = server.host("POST", "/v1/Calls", json=body)
        assert r.status_code == 400 and r.json()["code"] == code, (body, r.text)
    call = server.register()
    r = server.host("POST", "/v1/Calls", json={"call_sid": call["call_sid"]})
    assert r.status_code == 409 and r.json()["code"] == 900013
    assert server.host("POST", "/v1/Calls", json={}, auth=(ACCOUNT, "x")).status_code == 401
    assert server.host("GET", "/v1/Calls", auth=(ACCOUNT, TOKEN)).status_code == 200


def test_dead_recorder_media_fails_the_siprec(server: Server, receiver: Receiver,
                                              recorders: Recorders) -> None:
    """Engine events reach the links: ICMP port unreachable on a fork -> siprec-error 900032,
    and the recorder still gets a BYE."""
    call = server.register(sources={"inbound": "127.0.0.1"})
    sid = call["call_sid"]
    ingress = (call["ingress"]["inbound"]["address"], call["ingress"]["inbound"]["port"])
    siprec = server.client().calls(sid).siprec.create(
        name="icmp", track="inbound_track", status_callback=receiver.base + "/cb/icmp")
    receiver.wait(lambda _: len(receiver.for_sid(siprec.sid)) == 1)
    recorders.recorded(recorders.default, sid)
    assert recorders.close_media(recorders.default, sid) == 1

    def kinds() -> list[str]:
        return [r.params["SiprecEvent"] for r in receiver.for_sid(siprec.sid)]
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    deadline = time.monotonic() + 5
    seq = 0
    while kinds() != ["siprec-started", "siprec-error"]:
        assert time.monotonic() < deadline, kinds()
        sender.sendto(rtp(seq, seq * 160), ingress)
        seq += 1
        time.sleep(0.02)
    sender.close()
    error = receiver.for_sid(siprec.sid)[-1]
    assert error.params["SiprecErrorCode"] == "900032"
    assert "ECONNREFUSED" in error.params["SiprecError"], error.params["SiprecError"]
    assert RequestValidator(TOKEN).validate(error.url, error.params, error.signature)
    assert recorders.recorded(recorders.default, sid, ended)[0]["ended_by"] == "src"
    assert siprec_list(server, sid)[0]["status"] == "stopped"
    assert server.host("GET", f"/v1/Calls/{sid}").json()["forks"] == []
