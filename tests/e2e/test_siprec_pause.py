"""Pause and resume of a Siprec end to end: the real daemon (``Daemon`` with its embedded
reference recorder, SIP over TLS and SRTP through the ``Secure`` connector), driven by the
official ``twilio`` client, the msgpack control socket and the Python API; status callbacks to
a real HTTP server; media from one socket per call, as a media server mirrors it.

What the recorder sees is read from the recorder itself: the direction of every SDP offer it
got, and per stream the datagrams that arrived (before SRTP), the packets it decrypted
(pylibsrtp), sequence gaps and loss."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import requests
from daemon.harness import CallbackSink, wait_until
from fdcheck import ONE_SHOT_HEADERS, DescriptorCheck
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from mediafork.daemon.config import default_config
from mediafork.daemon.process import Daemon
from mediafork.synth import tone_packets

CALLER = "sip:+15551230000@pbx.example"
CALLEE = "sip:+15559870000@pbx.example"
PAUSED_WINDOW = 1.0
"""How long the tests watch a paused Siprec for packets (50 per track are sent meanwhile)."""
GRACE = 0.25
"""After a pause returns, datagrams already on the loopback may still be read: skip them."""


class LocalHttpClient(TwilioHttpClient):
    """The official client's HTTP layer, sent to the local daemon instead of Twilio."""

    def __init__(self, base_url: str) -> None:
        super().__init__(timeout=30)
        self.base_url = base_url.rstrip("/")

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        url = url.replace("https://api.twilio.com", self.base_url, 1)
        return super().request(method, url, *args, **kwargs)


class DaemonThread:
    """``Daemon`` with the embedded recorder and a control socket, on its own loop thread."""

    def __init__(self, tmp_path: Path) -> None:
        self.descriptors = DescriptorCheck("daemon")  # before the loop: it is counted too
        config = default_config(tmp_path / "data")
        self.config = dataclasses.replace(
            config, api=dataclasses.replace(config.api, port=0),
            sip=dataclasses.replace(config.sip, port=0),
            control_socket=tmp_path / "ctl.sock")
        self.account = self.config.accounts[0]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.daemon = Daemon(self.config, embedded_recorder=True, recorder_port=0)
        self.run(self.daemon.start())
        self.base = self.daemon.base_url

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.run(self.daemon.shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()
        self.descriptors.assert_released()

    @property
    def auth(self) -> tuple[str, str]:
        return (self.account.sid, self.account.auth_token)

    def register(self, call_sid: str) -> dict[str, tuple[str, int]]:
        answer = requests.post(f"{self.base}/v1/Calls", auth=self.auth, timeout=10,
                               headers=ONE_SHOT_HEADERS, json={
                                   "call_sid": call_sid, "account_sid": self.account.sid,
                                   "from": CALLER, "to": CALLEE,
                                   "codec": {"name": "PCMU", "payload_type": 0,
                                             "clock_rate": 8000},
                                   "dtmf_payload_type": 101})
        assert answer.status_code == 201, answer.text
        return {t: (a["address"], a["port"]) for t, a in answer.json()["ingress"].items()}

    def siprec_path(self, call_sid: str, sid: str) -> str:
        return (f"{self.base}/2010-04-01/Accounts/{self.account.sid}/Calls/{call_sid}"
                f"/Siprec/{sid}.json")

    def fetch(self, call_sid: str, sid: str) -> dict[str, Any]:
        got = requests.get(self.siprec_path(call_sid, sid), auth=self.auth, timeout=10,
                           headers=ONE_SHOT_HEADERS)
        assert got.status_code == 200, got.text
        return got.json()

    def recorded(self, call_sid: str) -> dict[str, Any]:
        """The recorder's view of the call's one session: offers' directions and, per
        stream label, what arrived."""
        async def read() -> dict[str, Any] | None:
            for session in self.daemon.recorder.sessions:
                summary = session.summary()
                if call_sid in summary["metadata"]["sip_session_ids"]:
                    return {"directions": summary["offered_directions"],
                            "state": summary["state"],
                            "streams": {s["label"]: s for s in summary["streams"]}}
            return None
        found = self.run(read())
        assert found is not None, f"no recorder session for {call_sid}"
        return found

    def fork_counters(self, call_sid: str) -> list[dict[str, Any]]:
        view = requests.get(f"{self.base}/v1/Calls/{call_sid}", auth=self.auth, timeout=10,
                            headers=ONE_SHOT_HEADERS).json()
        return [f["counters"] for f in view["forks"]]


class Talker:
    """Both tracks' tones from one socket (source latching), 20 ms apart, until stopped."""

    def __init__(self, ingress: dict[str, tuple[str, int]]) -> None:
        self.ingress = ingress
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        streams = [(list(tone_packets(440.0, 30.0, ssrc=0x51)), self.ingress["inbound"]),
                   (list(tone_packets(1000.0, 30.0, ssrc=0x52)), self.ingress["outbound"])]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            start = time.monotonic()
            for n in range(len(streams[0][0])):
                if self.stop_event.is_set():
                    return
                for packets, address in streams:
                    sock.sendto(packets[n], address)
                time.sleep(max(0.0, start + (n + 1) * 0.02 - time.monotonic()))

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(5)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonThread]:
    d = DaemonThread(tmp_path_factory.mktemp("pause"))
    yield d
    d.close()


@pytest.fixture
def sink() -> Iterator[CallbackSink]:
    s = CallbackSink()
    yield s
    s.close()


def _arrived(recorded: dict[str, Any]) -> dict[str, int]:
    return {label: s["datagrams"] for label, s in recorded["streams"].items()}


def _decrypted(recorded: dict[str, Any]) -> dict[str, int]:
    return {label: s["packets"] for label, s in recorded["streams"].items()}


def _grows(daemon: DaemonThread, call_sid: str, than: dict[str, int], by: int = 10) -> bool:
    now = _decrypted(daemon.recorded(call_sid))
    return all(now[label] >= than[label] + by for label in than)


def _watch_paused(daemon: DaemonThread, call_sid: str) -> None:
    """Nothing arrives at the recorder, on any stream, for PAUSED_WINDOW seconds."""
    time.sleep(GRACE)
    before = _arrived(daemon.recorded(call_sid))
    skipped = sum(c["skipped"] for c in daemon.fork_counters(call_sid))
    time.sleep(PAUSED_WINDOW)
    after = _arrived(daemon.recorded(call_sid))
    assert after == before, f"packets arrived while paused: {before} -> {after}"
    # ... while the call's media kept coming: the engine skipped it (not loss).
    assert sum(c["skipped"] for c in daemon.fork_counters(call_sid)) >= skipped + 60


def test_twilio_client_pauses_and_resumes_a_siprec(daemon: DaemonThread,
                                                   sink: CallbackSink) -> None:
    call_sid = "CA" + "7a" * 16
    talker = Talker(daemon.register(call_sid))
    client = Client(*daemon.auth, http_client=LocalHttpClient(daemon.base))
    try:
        siprec = client.calls(call_sid).siprec.create(
            name="pci", connector_name="Secure", track="both_tracks",
            status_callback=sink.url)
        wait_until(lambda: sink.events(siprec.sid) == ["siprec-started"], 10, "started")
        wait_until(lambda: _grows(daemon, call_sid, {"1": 0, "2": 0}), 10, "media")
        assert daemon.recorded(call_sid)["directions"] == [["sendonly", "sendonly"]]

        paused = client.calls(call_sid).siprec(siprec.sid).update(status="paused")
        assert paused.status == "paused" and paused.sid == siprec.sid
        wait_until(lambda: sink.events(siprec.sid) == ["siprec-started", "siprec-paused"], 5,
                   "the paused callback")
        wait_until(lambda: daemon.recorded(call_sid)["directions"][-1:]
                   == [["inactive", "inactive"]], 5, "the a=inactive re-INVITE")
        _watch_paused(daemon, call_sid)
        assert daemon.fetch(call_sid, siprec.sid)["status"] == "paused"
        metrics = requests.get(f"{daemon.base}/metrics", timeout=10,
                               headers=ONE_SHOT_HEADERS).text
        assert 'mediafork_siprecs{status="paused"} 1.0' in metrics
        assert 'mediafork_siprecs{status="in-progress"} 0.0' in metrics

        # A retry changes nothing: no re-INVITE, no callback.
        again = client.calls(call_sid).siprec("pci").update(status="paused")
        assert again.status == "paused"
        # A bad Status is refused before anything changes.
        with pytest.raises(TwilioRestException) as bad:
            client.calls(call_sid).siprec(siprec.sid).update(status="resumed")
        assert bad.value.status == 400 and bad.value.code == 900010
        for word in ("stopped", "paused", "in-progress"):
            assert word in bad.value.msg
        missing = requests.post(daemon.siprec_path(call_sid, siprec.sid), data={},
                                auth=daemon.auth, timeout=10, headers=ONE_SHOT_HEADERS)
        assert missing.status_code == 400 and "paused" in missing.json()["message"]
        assert daemon.fetch(call_sid, siprec.sid)["status"] == "paused"
        assert len(daemon.recorded(call_sid)["directions"]) == 2
        time.sleep(0.3)  # a callback the retry or the bad request would have caused
        assert sink.events(siprec.sid) == ["siprec-started", "siprec-paused"]

        before = _decrypted(daemon.recorded(call_sid))
        resumed = client.calls(call_sid).siprec(siprec.sid).update(status="in-progress")
        assert resumed.status == "in-progress"
        wait_until(lambda: daemon.recorded(call_sid)["directions"][-1:]
                   == [["sendonly", "sendonly"]], 5, "the a=sendonly re-INVITE")
        wait_until(lambda: _grows(daemon, call_sid, before, by=25), 10, "media again")

        stopped = client.calls(call_sid).siprec(siprec.sid).update(status="stopped")
        assert stopped.status == "stopped"
        wait_until(lambda: daemon.recorded(call_sid)["state"] == "ended", 5, "the BYE")
        with pytest.raises(TwilioRestException) as late:
            client.calls(call_sid).siprec(siprec.sid).update(status="paused")
        assert late.value.status == 400 and "stopped" in late.value.msg
        with pytest.raises(TwilioRestException) as late:
            client.calls(call_sid).siprec(siprec.sid).update(status="in-progress")
        assert late.value.status == 400
        assert daemon.fetch(call_sid, siprec.sid)["status"] == "stopped"
    finally:
        talker.stop()
        client.http_client.session.close()

    recorded = daemon.recorded(call_sid)
    assert recorded["directions"] == [["sendonly", "sendonly"], ["inactive", "inactive"],
                                      ["sendonly", "sendonly"]]
    for label, stream in recorded["streams"].items():
        # SRTP all the way, and the skipped packets left no hole: the sequence numbers
        # continue across the pause, so the recorder counts no loss.
        assert stream["srtp_suite"] == "AES_CM_128_HMAC_SHA1_80", label
        assert stream["srtp_auth_failures"] == 0 and stream["packets"] >= 35, stream
        assert stream["seq_gaps"] == 0 and stream["lost"] == 0, stream
        assert stream["pauses"] == 1, stream

    wait_until(lambda: len(sink.events(siprec.sid)) == 4, 5, "the stop callback")
    assert sink.events(siprec.sid) == ["siprec-started", "siprec-paused", "siprec-resumed",
                                       "siprec-stopped"]
    for form in sink.received:
        assert form["SiprecSid"] == siprec.sid and form["SiprecName"] == "pci"
        assert form["CallSid"] == call_sid and form["AccountSid"] == daemon.account.sid
        assert (form["From"], form["To"], form["ApiVersion"]) == (CALLER, CALLEE, "2010-04-01")
        assert form["Timestamp"] and "SiprecError" not in form
    assert requests.delete(f"{daemon.base}/v1/Calls/{call_sid}", auth=daemon.auth,
                           timeout=10, headers=ONE_SHOT_HEADERS).status_code == 204


def test_callbacks_are_signed(daemon: DaemonThread) -> None:
    """The pause callbacks are signed like every other (aiohttp receiver: full URL)."""
    from aiohttp import web

    got: list[tuple[str, dict[str, str], str]] = []
    lt_loop = asyncio.new_event_loop()
    thread = threading.Thread(target=lt_loop.run_forever, daemon=True)
    thread.start()

    async def handle(request: web.Request) -> web.Response:
        got.append((str(request.url), dict(await request.post()),
                    request.headers.get("X-Twilio-Signature", "")))
        return web.Response(text="ok")

    async def serve() -> tuple[web.AppRunner, int]:
        app = web.Application()
        app.router.add_post("/cb", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, runner.addresses[0][1]

    runner, port = asyncio.run_coroutine_threadsafe(serve(), lt_loop).result(10)
    call_sid = "CA" + "7b" * 16
    daemon.register(call_sid)
    client = Client(*daemon.auth, http_client=LocalHttpClient(daemon.base))
    try:
        siprec = client.calls(call_sid).siprec.create(
            connector_name="Default", status_callback=f"http://127.0.0.1:{port}/cb")
        client.calls(call_sid).siprec(siprec.sid).update(status="paused")
        client.calls(call_sid).siprec(siprec.sid).update(status="in-progress")
        wait_until(lambda: {f["SiprecEvent"] for _, f, _ in got}
                   >= {"siprec-paused", "siprec-resumed"}, 10, "the pause callbacks")
    finally:
        client.http_client.session.close()
        requests.delete(f"{daemon.base}/v1/Calls/{call_sid}", auth=daemon.auth, timeout=10,
                        headers=ONE_SHOT_HEADERS)
        asyncio.run_coroutine_threadsafe(runner.cleanup(), lt_loop).result(10)
        lt_loop.call_soon_threadsafe(lt_loop.stop)
        thread.join(5)
        lt_loop.close()
    validator = RequestValidator(daemon.account.auth_token)
    for url, form, signature in got:
        assert validator.validate(url, form, signature), form


# -- the control socket and the Python API ---------------------------------------------------


class ControlSocket:
    """A blocking msgpack client of the daemon's control socket."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def _read(self) -> Any:
        header = self._exactly(4)
        return msgpack.unpackb(self._exactly(int.from_bytes(header, "big")), raw=False)

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("control socket closed")
            data += chunk
        return data

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        self.next_id += 1
        body = msgpack.packb({"id": self.next_id, "op": op, **fields}, use_bin_type=True)
        self.sock.sendall(len(body).to_bytes(4, "big") + body)
        while True:
            message = self._read()
            if "event" in message:
                self.events.append(message)
                continue
            assert message["id"] == self.next_id
            return message

    def wait_event(self, name: str, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event["event"] == name:
                    self.events.remove(event)
                    return event
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                self.events.append(self._read())
            except TimeoutError:
                raise AssertionError(f"no {name} event; got {self.events}") from None

    def close(self) -> None:
        self.sock.close()


def test_control_socket_and_python_api_pause_and_resume(daemon: DaemonThread,
                                                        sink: CallbackSink) -> None:
    call_sid = "CA" + "7c" * 16
    talker = Talker(daemon.register(call_sid))
    service = daemon.daemon.service
    links = daemon.daemon.links
    assert service is not None and links is not None
    ctl = ControlSocket(daemon.config.control_socket)  # type: ignore[arg-type]
    try:
        assert ctl.call("auth", account_sid=daemon.account.sid,
                        auth_token=daemon.account.auth_token)["ok"]
        assert ctl.call("subscribe")["ok"]
        created = daemon.run(service.create_siprec(daemon.account.sid, call_sid, {
            "Name": "agent", "ConnectorName": "Secure", "StatusCallback": sink.url}))
        sid = created["sid"]
        wait_until(lambda: sink.events(sid) == ["siprec-started"], 10, "started")
        wait_until(lambda: _grows(daemon, call_sid, {"1": 0, "2": 0}), 10, "media")

        # Control socket, by name.
        answer = ctl.call("pause_siprec", call_sid=call_sid, siprec="agent")
        assert answer["ok"] and answer["result"]["status"] == "paused", answer
        assert all(f.paused for f in links.forks(sid))
        event = ctl.wait_event("siprec-paused")
        assert event["data"]["SiprecSid"] == sid and event["data"]["CallSid"] == call_sid
        wait_until(lambda: daemon.recorded(call_sid)["directions"][-1:]
                   == [["inactive", "inactive"]], 5, "a=inactive")
        _watch_paused(daemon, call_sid)

        # Refused requests change nothing.
        unknown = ctl.call("resume_siprec", call_sid=call_sid, siprec="nobody")
        assert not unknown["ok"] and unknown["error"]["status"] == 404
        no_name = ctl.call("resume_siprec", call_sid=call_sid)
        assert not no_name["ok"] and no_name["error"]["status"] == 400
        assert "siprec" in no_name["error"]["message"]
        assert all(f.paused for f in links.forks(sid))

        answer = ctl.call("resume_siprec", call_sid=call_sid, siprec=sid)
        assert answer["ok"] and answer["result"]["status"] == "in-progress", answer
        assert ctl.wait_event("siprec-resumed")["data"]["SiprecSid"] == sid
        wait_until(lambda: daemon.recorded(call_sid)["directions"][-1:]
                   == [["sendonly", "sendonly"]], 5, "a=sendonly")
        before = _decrypted(daemon.recorded(call_sid))
        wait_until(lambda: _grows(daemon, call_sid, before, by=20), 10, "media again")

        # The Python API: ControlService.pause_siprec / resume_siprec.
        got = daemon.run(service.pause_siprec(daemon.account.sid, call_sid, sid))
        assert got["status"] == "paused" and all(f.paused for f in links.forks(sid))
        wait_until(lambda: daemon.recorded(call_sid)["directions"][-1:]
                   == [["inactive", "inactive"]], 5, "a=inactive (Python API)")
        _watch_paused(daemon, call_sid)
        got = daemon.run(service.resume_siprec(daemon.account.sid, call_sid, "agent"))
        assert got["status"] == "in-progress"
        before = _decrypted(daemon.recorded(call_sid))
        wait_until(lambda: _grows(daemon, call_sid, before, by=20), 10, "media (Python API)")

        # Stopping a paused Siprec is a plain stop.
        daemon.run(service.pause_siprec(daemon.account.sid, call_sid, sid))
        stopped = daemon.run(service.update_siprec(daemon.account.sid, call_sid, sid,
                                                   {"Status": "stopped"}))
        assert stopped["status"] == "stopped"
        late = ctl.call("pause_siprec", call_sid=call_sid, siprec=sid)
        assert not late["ok"] and late["error"]["status"] == 400
    finally:
        talker.stop()
        ctl.close()
    recorded = daemon.recorded(call_sid)
    assert [d[0] for d in recorded["directions"]] == [
        "sendonly", "inactive", "sendonly", "inactive", "sendonly", "inactive"]
    for stream in recorded["streams"].values():
        assert stream["seq_gaps"] == 0 and stream["lost"] == 0, stream
    wait_until(lambda: sink.events(sid)[-1:] == ["siprec-stopped"], 5, "stopped")
    assert sink.events(sid) == ["siprec-started", "siprec-paused", "siprec-resumed",
                                "siprec-paused", "siprec-resumed", "siprec-paused",
                                "siprec-stopped"]
    requests.delete(f"{daemon.base}/v1/Calls/{call_sid}", auth=daemon.auth, timeout=10,
                    headers=ONE_SHOT_HEADERS)
