"""The msgpack control socket: auth, the host-call operations and the event stream."""

from __future__ import annotations

import os
import secrets
import socket
import stat
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from harness import ACCOUNT, OTHER, OTHER_TOKEN, TOKEN, Server

from mediafork.api.control_socket import ControlSocketServer


class Peer:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.next_id = 0

    def send(self, message: Any) -> None:
        body = msgpack.packb(message)
        self.sock.sendall(struct.pack("!I", len(body)) + body)

    def recv(self) -> Any:
        (length,) = struct.unpack("!I", self._exact(4))
        return msgpack.unpackb(self._exact(length))

    def _exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def call(self, op: str, **args: Any) -> Any:
        self.next_id += 1
        self.send({"id": self.next_id, "op": op, **args})
        while True:
            reply = self.recv()
            if "event" not in reply:
                assert reply["id"] == self.next_id
                return reply
            self.pending.append(reply)

    pending: list[Any]


@pytest.fixture()
def sock_path(server: Server) -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="mf", dir="/tmp"))
    path = directory / "control.sock"
    cs = ControlSocketServer(server.service, path)
    server.lt.run(cs.start())
    yield path
    server.lt.run(cs.close())
    directory.rmdir()


def test_auth_operations_and_events(server: Server, sock_path: Path) -> None:
    assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600
    peer = Peer(sock_path)
    peer.pending = []
    assert peer.call("list")["error"]["code"] == 20003
    assert peer.call("auth", account_sid=ACCOUNT, auth_token="wrong")["error"]["code"] == 20003
    assert peer.call("auth", account_sid=ACCOUNT, auth_token=TOKEN)["ok"]
    assert peer.call("subscribe")["ok"]
    call_sid = "CA" + secrets.token_hex(16)
    reply = peer.call("register", call={"call_sid": call_sid, "from": "alice", "to": "bob"})
    assert reply["ok"], reply
    assert set(reply["result"]["ingress"]) == {"inbound", "outbound"}
    assert peer.call("get", call_sid=call_sid)["result"]["from"] == "alice"
    assert peer.call("update", call_sid=call_sid, to="carol")["result"]["to"] == "carol"
    assert peer.call("register", call={"call_sid": call_sid})["error"]["code"] == 900013

    siprec = server.host_form("POST", f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{call_sid}"
                                      "/Siprec.json", {"Name": "sock"}).json()
    assert peer.call("end", call_sid=call_sid)["ok"]
    assert peer.call("get", call_sid=call_sid)["error"]["status"] == 404
    seen = [(e["event"], e["data"].get("SiprecSid")) for e in peer.pending]
    while ("call-ended", None) not in seen:
        event = peer.recv()
        seen.append((event["event"], event["data"].get("SiprecSid")))
    types = [t for t, _ in seen]
    assert types[0] == "call-registered" and "call-updated" in types
    assert ("siprec-stopped", siprec["sid"]) in seen
    assert types.index("call-updated") < types.index("call-ended")

    # another account's peer sees nothing of ours and cannot touch the call
    other = Peer(sock_path)
    other.pending = []
    assert other.call("auth", account_sid=OTHER, auth_token=OTHER_TOKEN)["ok"]
    assert other.call("get", call_sid=call_sid)["error"]["code"] == 20404
    assert other.call("bogus")["error"]["code"] == 900001
    other.sock.close()
    peer.sock.close()


def test_malformed_frames_close_only_that_connection(server: Server, sock_path: Path) -> None:
    bad = Peer(sock_path)
    bad.sock.sendall(struct.pack("!I", 1 << 30))
    reply = bad.recv()
    assert reply["ok"] is False
    with pytest.raises((EOFError, ConnectionError)):
        bad.recv()
    good = Peer(sock_path)
    good.pending = []
    assert good.call("auth", account_sid=ACCOUNT, auth_token=TOKEN)["ok"]
    good.sock.close()


def test_pause_and_resume_ops_validate_and_isolate(server: Server, sock_path: Path) -> None:
    """pause_siprec / resume_siprec: bad fields are refused before anything changes, another
    account cannot reach the Siprec, and the ops answer the resource as REST does."""
    peer, other = Peer(sock_path), Peer(sock_path)
    peer.pending, other.pending = [], []
    assert peer.call("pause_siprec", call_sid="CA" + "0" * 32, siprec="x")["error"][
        "code"] == 20003  # auth first
    assert peer.call("auth", account_sid=ACCOUNT, auth_token=TOKEN)["ok"]
    assert other.call("auth", account_sid=OTHER, auth_token=OTHER_TOKEN)["ok"]
    call_sid = server.register()["call_sid"]
    base = f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{call_sid}/Siprec"
    siprec = server.host_form("POST", base + ".json", {"Name": "ops"}).json()

    def status() -> str:
        return server.host("GET", f"{base}/{siprec['sid']}.json").json()["status"]

    for fields, http in [({"siprec": "ops"}, 404),                      # no call_sid
                         ({"call_sid": 7, "siprec": "ops"}, 404),
                         ({"call_sid": call_sid}, 400),                  # no siprec
                         ({"call_sid": call_sid, "siprec": 3}, 400),
                         ({"call_sid": call_sid, "siprec": ""}, 400),
                         ({"call_sid": call_sid, "siprec": "nobody"}, 404)]:
        reply = peer.call("pause_siprec", **fields)
        assert not reply["ok"] and reply["error"]["status"] == http, (fields, reply)
    assert other.call("pause_siprec", call_sid=call_sid, siprec="ops")["error"]["code"] == 20404
    assert status() == "in-progress"

    paused = peer.call("pause_siprec", call_sid=call_sid, siprec="ops")
    assert paused["ok"] and paused["result"]["status"] == "paused" == status()
    assert paused["result"]["sid"] == siprec["sid"]
    assert peer.call("pause_siprec", call_sid=call_sid, siprec=siprec["sid"])["ok"]  # again
    resumed = peer.call("resume_siprec", call_sid=call_sid, siprec="ops")
    assert resumed["ok"] and resumed["result"]["status"] == "in-progress" == status()
    assert server.host("DELETE", f"/v1/Calls/{call_sid}").status_code == 204
    late = peer.call("resume_siprec", call_sid=call_sid, siprec="ops")
    assert late["error"]["code"] == 900010 and "stopped" in late["error"]["message"]
    peer.sock.close()
    other.sock.close()
