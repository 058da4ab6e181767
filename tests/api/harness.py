"""A running mediafork control server for the API tests, plus a callback receiver.

Everything is real except the RecorderLinks: :class:`FakeLinks` stands in for
``mediafork.sip.links.SipRecorderLinks`` until that lands (tests that depend on it are marked
``fake_links`` so they can be switched to the real links). It does create real engine forks
(drain mode), so budgets, counters and call end exercise the engine.

The server runs on its own thread with a uvloop loop, so tests can drive it with the official
(synchronous) ``twilio`` client.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import uvloop
from aiohttp import web
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from mediafork.api import build_app
from mediafork.config import Config, load_config
from mediafork.control.store import AsyncStore
from mediafork.engine import Call, Engine, Track
from mediafork.links import LinkError, LinkEvent, LinkEventSink, SiprecStart
from mediafork.service import ControlService

ACCOUNT = "AC" + "a1" * 16
OTHER = "AC" + "b2" * 16
TOKEN = "tok-" + "s3cr3t" * 5
OTHER_TOKEN = "tok-" + "0th3r" * 6
CONNECTOR_SECRET = "connector-secret-" + "x9" * 8


def write_config(directory: Path, *, receiver: str = "") -> Path:
    path = directory / "mediafork.toml"
    first = 20000 + secrets.randbelow(400) * 100
    path.write_text(f"""
[api]
listen = "127.0.0.1:0"
[storage]
path = "data/mediafork.db"
[media]
address = "127.0.0.1"
port_range = [{first}, {first + 99}]
[[accounts]]
sid = "{ACCOUNT}"
auth_token = "{TOKEN}"
[[accounts]]
sid = "{OTHER}"
auth_token = "{OTHER_TOKEN}"
[[edges]]
name = "local"
address = "127.0.0.1"
default = true
[[connectors]]
account_sid = "{ACCOUNT}"
unique_name = "Default"
srs = "sip:recorder@127.0.0.1:5070"
credentials_header = "X-Auth-Token"
credentials = "{CONNECTOR_SECRET}"
[[connectors]]
account_sid = "{ACCOUNT}"
unique_name = "Gridspace_1"
srs = "sip:recorder@127.0.0.1:5072;secure=true&edge=local"
[[connectors]]
account_sid = "{ACCOUNT}"
unique_name = "NoPorts"
srs = "sip:fail-start@127.0.0.1:5074"
[[connectors]]
account_sid = "{ACCOUNT}"
unique_name = "Rejecting"
srs = "sip:reject@127.0.0.1:5076"
[[connectors]]
account_sid = "{OTHER}"
unique_name = "Default"
srs = "sip:recorder@127.0.0.1:5078"
[callbacks]
timeout = 1.0
max_attempts = 2
""")
    return path


class FakeLinks:
    """In-test RecorderLinks (the only fake): behaviour chosen by the SRS URI's user part.

    ``recorder``: started shortly after start(); ``fail-start``: LinkError before anything
    is sent; ``reject``: an error event (as for a 488 from the recorder).
    """

    def __init__(self, on_event: LinkEventSink) -> None:
        self.on_event = on_event
        self.sessions: dict[str, tuple[Call, list[Any]]] = {}
        self.starts: list[SiprecStart] = []
        self.participants: list[tuple[str, str, str]] = []

    async def start(self, call: Call, request: SiprecStart) -> None:
        self.starts.append(request)
        if "fail-start" in request.connector.srs:
            raise LinkError("no free media port on edge local", 900014)
        tracks = {"inbound_track": [Track.INBOUND], "outbound_track": [Track.OUTBOUND],
                  "both_tracks": [Track.INBOUND, Track.OUTBOUND]}[request.track]
        forks = [call.add_fork(t, drain=True) for t in tracks]
        self.sessions[request.siprec_sid] = (call, forks)
        loop = asyncio.get_running_loop()
        if "reject" in request.connector.srs:
            loop.call_later(0.02, self._fail, request.siprec_sid)
        else:
            loop.call_later(0.02, self.on_event, LinkEvent(request.siprec_sid, "started"))

    def _fail(self, sid: str) -> None:
        self._close_forks(sid)
        self.on_event(LinkEvent(sid, "error", error_code=900014,
                                error_message="recorder answered 488 Not Acceptable Here",
                                sip_status=488))

    def _close_forks(self, sid: str) -> bool:
        session = self.sessions.pop(sid, None)
        if session is None:
            return False
        for fork in session[1]:
            fork.close()
        return True

    async def stop(self, siprec_sid: str, reason: str = "stopped") -> None:
        if self._close_forks(siprec_sid):
            self.on_event(LinkEvent(siprec_sid, "stopped"))

    async def pause(self, siprec_sid: str) -> None:
        pass

    async def resume(self, siprec_sid: str) -> None:
        pass

    async def update_participants(self, call_sid: str, caller: str, callee: str) -> None:
        self.participants.append((call_sid, caller, callee))

    async def close(self, timeout: float = 5.0) -> None:
        for sid in list(self.sessions):
            await self.stop(sid)


@dataclass
class Received:
    path: str
    method: str
    url: str
    params: dict[str, str]
    signature: str
    at: float


@dataclass
class Receiver:
    """A status-callback receiver; ``/slow/…`` paths never answer in time."""

    loop: asyncio.AbstractEventLoop
    base: str = ""
    received: list[Received] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.base = f"http://127.0.0.1:{port}"

    async def _handle(self, request: web.Request) -> web.Response:
        form = dict(await request.post()) if request.method == "POST" else {}
        params = {**{k: v for k, v in request.query.items()}, **{k: str(v) for k, v in
                                                                  form.items()}}
        item = Received(request.path, request.method,
                        f"{self.base}{request.rel_url}", params,
                        request.headers.get("X-Twilio-Signature", ""), time.monotonic())
        if request.path.startswith("/slow/"):
            await asyncio.sleep(3)  # > the 1 s callback timeout
        with self.cond:
            self.received.append(item)
            self.cond.notify_all()
        return web.Response(text="ok")

    def wait(self, predicate: Callable[[list[Received]], bool], timeout: float = 10.0
             ) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self.received):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out; received {[(r.path, r.params.get('SiprecEvent')) for r in self.received]}")
                self.cond.wait(left)
            return list(self.received)

    def for_sid(self, sid: str) -> list[Received]:
        with self.cond:
            return [r for r in self.received if r.params.get("SiprecSid") == sid]

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()


class LoopThread:
    """A uvloop event loop on a daemon thread; ``run(coro)`` from the test thread."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class LocalHttpClient(TwilioHttpClient):
    """The official client's HTTP client, sending to the local server instead of Twilio."""

    def __init__(self, base_url: str) -> None:
        super().__init__(timeout=30)
        self.base_url = base_url.rstrip("/")

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        for prefix in ("https://api.twilio.com",):
            if url.startswith(prefix):
                url = self.base_url + url[len(prefix):]
        return super().request(method, url, *args, **kwargs)


class Server:
    """ControlService + app + real engine + SQLite on a LoopThread."""

    def __init__(self, config: Config, loop: LoopThread, *, links: bool = True) -> None:
        self.config = config
        self.lt = loop
        self.engine = Engine(media_address=config.media.address,
                             port_range=config.media.port_range)
        self.links: FakeLinks | None = None
        self.service: ControlService = self.lt.run(self._start(links))
        self.base_url = f"http://127.0.0.1:{self.port}"

    async def _start(self, links: bool) -> ControlService:
        self.store = await AsyncStore.open(self.config.storage.path)
        service = ControlService(self.config, engine=self.engine, store=self.store,
                                 callback_options={"backoff_initial": 0.05})
        if links:
            self.links = FakeLinks(service.on_link_event)
            service.set_links(self.links)
        from mediafork.recording.manager import RecordingManager
        service.set_recordings(RecordingManager(
            engine=self.engine, store=self.store, outbox=service.outbox,
            storage_dir=self.config.storage.data_dir / "recordings",
            public_base_url=None))
        await service.start()
        self.app = build_app(service)
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return service

    def client(self, account: str = ACCOUNT, token: str = TOKEN) -> Client:
        return Client(account, token, http_client=LocalHttpClient(self.base_url))

    def host(self, method: str, path: str, json: Any = None, auth: tuple[str, str] | None =
             (ACCOUNT, TOKEN)) -> requests.Response:
        return requests.request(method, self.base_url + path, json=json, auth=auth, timeout=30)

    def host_form(self, method: str, path: str, data: dict[str, str]) -> requests.Response:
        return requests.request(method, self.base_url + path, data=data, auth=(ACCOUNT, TOKEN),
                                timeout=30)

    def register(self, call_sid: str | None = None, **extra: Any) -> dict[str, Any]:
        call_sid = call_sid or "CA" + secrets.token_hex(16)
        body = {"call_sid": call_sid, "account_sid": ACCOUNT,
                "from": "sip:+15551230000@pbx.example", "to": "sip:+15559870000@pbx.example",
                "codec": {"name": "PCMU", "payload_type": 0, "clock_rate": 8000},
                "dtmf_payload_type": 101, **extra}
        response = self.host("POST", "/v1/Calls", json=body)
        assert response.status_code == 201, response.text
        return response.json()

    def close(self) -> None:
        async def shutdown() -> None:
            await self.runner.cleanup()
            await self.service.close(timeout=2)
            await self.store.close()
        self.lt.run(shutdown())
        self.engine.close()


def load(directory: Path) -> Config:
    return load_config(write_config(directory))
