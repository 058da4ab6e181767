"""GET …/Siprec/{Sid}.json shows the Siprec's last error and its forked streams' counters
(mediafork's extension fields), and the official twilio client still fetches it."""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

from harness import ACCOUNT, CONNECTOR_SECRET, TOKEN, Recorders, Server
from twilio.rest import Client
from twilio.rest.api.v2010.account.call.siprec import SiprecInstance


def rtp(seq: int, ts: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, ts, 0x5678) + b"\xff" * 160


def fetch_raw(server: Server, call_sid: str, sid: str) -> dict[str, Any]:
    r = server.host("GET", f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{call_sid}/Siprec/{sid}.json")
    assert r.status_code == 200, r.text
    assert CONNECTOR_SECRET not in r.text and TOKEN not in r.text
    return r.json()


def client_fetch(client: Client, call_sid: str, sid: str) -> SiprecInstance:
    """A fetch as the official client's generated code does one (Version.fetch, then the
    instance from the payload): the client has no Siprec fetch of its own, but a payload
    with the extension fields must still deserialize."""
    version = client.api.v2010
    payload = version.fetch(method="GET", uri=f"/Accounts/{ACCOUNT}/Calls/{call_sid}"
                                              f"/Siprec/{sid}.json")
    return SiprecInstance(version, payload, account_sid=ACCOUNT, call_sid=call_sid, sid=sid)


def until(check: Any, timeout: float = 6.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_fetch_shows_the_recorders_refusal(server: Server, recorders: Recorders) -> None:
    call = server.register()
    sid = call["call_sid"]
    client = server.client()
    siprec = client.calls(sid).siprec.create(name="refused", connector_name="Rejecting")
    view = until(lambda: (v := fetch_raw(server, sid, siprec.sid))["status"] == "stopped" and v)
    error = view["error"]
    assert error["sip_status"] == 488 and error["phase"] == "set-up", error
    assert isinstance(error["code"], int) and "488" in error["message"]
    assert error["recorder"].startswith("sip:recorder@127.0.0.1:")
    assert view["streams"] == []  # the forks went with the session
    # The official client ignores the extension and still fetches the resource.
    fetched = client_fetch(client, sid, siprec.sid)
    assert fetched.sid == siprec.sid and fetched.status == "stopped"
    assert server.host("DELETE", f"/v1/Calls/{sid}").status_code == 204


def test_fetch_shows_stream_counters_after_media(server: Server, recorders: Recorders) -> None:
    call = server.register(sources={"inbound": "127.0.0.1", "outbound": "127.0.0.1"})
    sid = call["call_sid"]
    client = server.client()
    siprec = client.calls(sid).siprec.create(name="media")
    recorders.recorded(recorders.default, sid)
    view = fetch_raw(server, sid, siprec.sid)
    assert view["error"] is None
    assert [(s["label"], s["track"]) for s in view["streams"]] == [("1", "inbound"),
                                                                   ("2", "outbound")]
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ingress = call["ingress"]
    try:
        for i in range(25):
            for track in ("inbound", "outbound"):
                sender.sendto(rtp(i, i * 160),
                              (ingress[track]["address"], ingress[track]["port"]))
            time.sleep(0.004)
    finally:
        sender.close()

    def counted() -> dict[str, Any] | None:
        v = fetch_raw(server, sid, siprec.sid)
        streams = v["streams"]
        ok = all(s["sent"] >= 25 and s["recorder_lost"] is not None for s in streams)
        return v if streams and ok else None
    # The reference recorder's receiver reports come every 1-3 s.
    view = until(counted, timeout=8.0)
    for stream in view["streams"]:
        assert stream["sent"] == 25 and stream["dropped"] == 0, stream
        assert stream["recorder_lost"] == 0 and stream["recorder_jitter_ms"] >= 0, stream
    assert view["error"] is None and view["status"] == "in-progress"
    fetched = client_fetch(client, sid, siprec.sid)
    assert fetched.status == "in-progress" and fetched.name == "media"
    assert server.host("DELETE", f"/v1/Calls/{sid}").status_code == 204
