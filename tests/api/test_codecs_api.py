"""The host API's `codec` (POST /v1/Calls): channels and fmtp, RFC 3551 / RFC 7587 rules, the
call view, a Siprec of an Opus call at the reference recorder, and Recordings refusing codecs
they cannot decode."""

from __future__ import annotations

import pytest
from harness import ACCOUNT, Recorders, Server

OPUS = {"name": "opus", "payload_type": 111, "fmtp": "minptime=10;useinbandfec=1"}


def test_opus_registers_with_its_defaults_and_fmtp(server: Server) -> None:
    call = server.register(codec=OPUS)
    assert call["codec"] == {"name": "opus", "payload_type": 111, "clock_rate": 48000,
                             "channels": 2, "fmtp": "minptime=10;useinbandfec=1"}
    view = server.host("GET", f"/v1/Calls/{call['call_sid']}").json()
    assert view["codec"] == call["codec"]
    g722 = server.register(codec={"name": "g722"})
    assert g722["codec"] == {"name": "G722", "payload_type": 9, "clock_rate": 8000,
                             "channels": 1, "fmtp": None}
    for sid in (call["call_sid"], g722["call_sid"]):
        assert server.host("DELETE", f"/v1/Calls/{sid}").status_code == 204


@pytest.mark.parametrize(("codec", "says"), [
    ({"name": "opus", "payload_type": 111, "channels": 1}, "always opus/48000/2"),
    ({"name": "opus", "payload_type": 111, "clock_rate": 16000}, "must be 48000"),
    ({"name": "opus"}, "payload_type is required"),
    ({"name": "opus", "payload_type": 8}, "PCMA's static type"),
    ({"name": "opus", "payload_type": 20}, "dynamic type"),
    ({"name": "G722", "clock_rate": 16000}, "8000 Hz, though it samples at 16 kHz"),
    ({"name": "PCMU", "channels": 2}, "channels of PCMU must be 1"),
    ({"name": "PCMU", "channels": 0}, "channels must be an integer 1-8"),
    ({"name": "opus", "payload_type": 111, "fmtp": "a=1\r\na=crypto:1 x"}, "one line"),
    ({"name": "opus", "payload_type": 111, "fmtp": ""}, "one line"),
    ({"name": "opus", "payload_type": 111, "fmtp": "x" * 257}, "1-256"),
    ({"name": "opus", "payload_type": 111, "fmtp": 5}, "codec.fmtp"),
])
def test_codec_rules(server: Server, codec: dict[str, object], says: str) -> None:
    r = server.host("POST", "/v1/Calls", json={"call_sid": "CA" + "2" * 32, "codec": codec})
    assert r.status_code == 400 and r.json()["code"] == 900001, r.text
    assert says in r.json()["message"]


def test_an_opus_call_is_forked_to_the_recorder_and_refused_by_recordings(
        server: Server, recorders: Recorders) -> None:
    call = server.register(codec=OPUS)
    sid = call["call_sid"]
    base = f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{sid}"
    server.client().calls(sid).siprec.create(name="opus", track="inbound_track")
    [got] = recorders.recorded(recorders.default, sid)
    (stream,) = got["streams"]
    assert (stream["codec"], stream["payload_type"], stream["clock_rate"]) == (
        "OPUS", 111, 48000)
    rec = server.host_form("POST", base + "/Recordings.json", {"RecordingChannels": "mono"})
    assert rec.status_code == 400 and rec.json()["code"] == 900001
    assert rec.json()["message"] == "The call's codec opus cannot be recorded (PCMU or PCMA only)"
    assert server.host("DELETE", f"/v1/Calls/{sid}").status_code == 204
