"""A running mediafork control server for the API tests, its recorders, and a callback receiver.

Nothing is faked: the server has the real engine (its forks send RTP), SQLite, and the real
``SipRecorderLinks`` talking SIP over UDP (and TLS for the secure connector) to real
:class:`~mediafork.srs.ReferenceRecorder` instances started on free ports; the config's
connectors point at their actual addresses. Engine events reach the links as in the daemon.

The server runs on its own thread with a uvloop loop, so tests can drive it with the official
(synchronous) ``twilio`` client; the recorders run on the same loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
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
from fdcheck import ONE_SHOT_HEADERS, DescriptorCheck
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from mediafork.api import build_app
from mediafork.control.store import AsyncStore
from mediafork.daemon.config import Config, load_config
from mediafork.daemon.service import ControlService
from mediafork.engine import Engine
from mediafork.recorder_api import Connector
from mediafork.sip.recorder_links import SipRecorderLinks
from mediafork.sip.transaction import TimerConfig
from mediafork.srs import ReferenceRecorder
from mediafork.tlsutil import self_signed

ACCOUNT = "AC" + "a1" * 16
OTHER = "AC" + "b2" * 16
TOKEN = "tok-" + "s3cr3t" * 5
OTHER_TOKEN = "tok-" + "0th3r" * 6
CONNECTOR_SECRET = "connector-secret-" + "x9" * 8

CALLER = "sip:+15551230000@pbx.example"
CALLEE = "sip:+15559870000@pbx.example"
"""The From and To of calls made with :meth:`Server.register`."""

SIP_TIMERS = TimerConfig(t1=0.05, t2=0.4, t4=0.5, d=0.5)
"""Small RFC 3261 timers: everything is on loopback, and waits for failures stay short."""


@dataclass
class Recorders:
    """The reference recorders the harness's connectors point at (on a LoopThread).

    ``default``: our account's ``Default``; it checks the connector's credentials header
    (403 without it). ``secure``: UDP and TLS; ``Gridspace_1`` (TLS, SRTP) and the other
    account's ``Default``. ``rejecting``: answers every INVITE 488 (``Rejecting``).
    """

    lt: LoopThread
    default: ReferenceRecorder
    secure: ReferenceRecorder
    rejecting: ReferenceRecorder
    ca_file: Path

    @classmethod
    def start(cls, lt: LoopThread, directory: Path) -> Recorders:
        cert, key = self_signed(directory / "tls", "recorder")

        async def start() -> Recorders:
            def make(name: str, **kwargs: Any) -> ReferenceRecorder:
                return ReferenceRecorder(port=0, out_dir=directory / name, timers=SIP_TIMERS,
                                         **kwargs)
            made = cls(lt,
                       make("default",
                            credentials_header=("X-Auth-Token", CONNECTOR_SECRET)),
                       make("secure", tls_cert=str(cert), tls_key=str(key)),
                       make("rejecting", answer=488), cert)
            for recorder in made.all():
                await recorder.start()
            return made
        return lt.run(start())

    def all(self) -> list[ReferenceRecorder]:
        return [self.default, self.secure, self.rejecting]

    def total(self) -> int:
        """INVITEs that opened a session at any recorder (accepted or not)."""
        return self.lt.run(self._total())

    async def _total(self) -> int:
        return sum(len(r.sessions) for r in self.all())

    def recorded(self, recorder: ReferenceRecorder, call_sid: str,
                 until: Callable[[list[dict[str, Any]]], bool] | None = None,
                 timeout: float = 5.0) -> list[dict[str, Any]]:
        """Summaries of ``recorder``'s sessions for the call (by the metadata's SIP session
        id), once ``until(summaries)`` holds (default: one session, established)."""
        def established(got: list[dict[str, Any]]) -> bool:
            return len(got) == 1 and got[0]["state"] == "established"
        check = until or established

        def mine(r: ReferenceRecorder) -> list[dict[str, Any]]:
            summaries = [s.summary() for s in r.sessions]
            return [s for s in summaries if call_sid in s["metadata"]["sip_session_ids"]]

        async def wait() -> list[dict[str, Any]]:
            try:
                await recorder.wait_for(lambda r: check(mine(r)), timeout)
            except TimeoutError:
                raise AssertionError(f"recorder: condition not met; got {mine(recorder)}"
                                     ) from None
            return mine(recorder)
        return self.lt.run(wait())

    def last(self, recorder: ReferenceRecorder, n: int) -> list[dict[str, Any]]:
        """Summaries of the recorder's last ``n`` sessions (of any call, in any state)."""
        async def get() -> list[dict[str, Any]]:
            return [s.summary() for s in recorder.sessions[-n:]]
        return self.lt.run(get())

    def close_media(self, recorder: ReferenceRecorder, call_sid: str) -> int:
        """Close the media sockets of the recorder's sessions for the call (signalling stays
        up): RTP sent there now gets ICMP port unreachable. Returns how many sessions."""
        async def close() -> int:
            mine = [s for s in recorder.sessions
                    if call_sid in s.summary()["metadata"]["sip_session_ids"]]
            for session in mine:
                await session.close_media()
            return len(mine)
        return self.lt.run(close())

    def stop(self) -> None:
        async def stop() -> None:
            for recorder in self.all():
                await recorder.stop(bye_timeout=0.5)
        self.lt.run(stop())


def roles(summary: dict[str, Any]) -> dict[str, tuple[list[str], list[str]]]:
    """What a recorder learnt from the metadata: AOR -> (labels it sends, labels it receives),
    for the participants still in the session. Label 1 is the inbound track, 2 outbound."""
    return {aor: (p["send"], p["recv"]) for p in summary["participants"]
            for aor in p["aors"] if not p["disassociated"]}


def ended(summaries: list[dict[str, Any]]) -> bool:
    """For :meth:`Recorders.recorded`: the call's one session has ended."""
    return len(summaries) == 1 and summaries[0]["state"] == "ended"


def write_config(directory: Path, recorders: Recorders) -> Path:
    """The server's TOML, its connectors on the recorders' actual addresses."""
    path = directory / "mediafork.toml"
    # a window of its own, wide enough for schemathesis registering many calls
    first = 20000 + secrets.randbelow(20) * 2000
    default = "{}:{}".format(*recorders.default.address)
    secure = "{}:{}".format(*recorders.secure.address)
    assert recorders.secure.tls_address is not None
    secure_tls = "{}:{}".format(*recorders.secure.tls_address)
    rejecting = "{}:{}".format(*recorders.rejecting.address)
    path.write_text(f"""
[api]
listen = "127.0.0.1:0"
[storage]
path = "data/mediafork.db"
[media]
address = "127.0.0.1"
port_range = [{first}, {first + 1999}]
[sip]
port = 0
[sip.tls]
ca_file = "{recorders.ca_file}"
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
srs = "sip:recorder@{default}"
credentials_header = "X-Auth-Token"
credentials = "{CONNECTOR_SECRET}"
[[connectors]]
account_sid = "{ACCOUNT}"
unique_name = "Gridspace_1"
srs = "sip:recorder@{secure_tls};secure=true&edge=local"
[[connectors]]
account_sid = "{ACCOUNT}"
unique_name = "Rejecting"
srs = "sip:recorder@{rejecting}"
[[connectors]]
account_sid = "{OTHER}"
unique_name = "Default"
srs = "sip:recorder@{secure}"
[callbacks]
timeout = 1.0
max_attempts = 2
""")
    return path


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
    """ControlService + app + real engine + SQLite + SipRecorderLinks on a LoopThread."""

    def __init__(self, config: Config, loop: LoopThread) -> None:
        self.config = config
        self.lt = loop
        # close() must release every descriptor the server opened (the loop thread, the
        # recorders and the receiver outlive it and are not counted).
        self.descriptors = DescriptorCheck("API server")
        self.engine = Engine(media_address=config.media.address,
                             port_range=config.media.port_range)
        self.service: ControlService = self.lt.run(self._start())
        self.base_url = f"http://127.0.0.1:{self.port}"

    async def _start(self) -> ControlService:
        config = self.config
        self.store = await AsyncStore.open(config.storage.path)
        service = ControlService(config, engine=self.engine, store=self.store,
                                 callback_options={"backoff_initial": 0.05})
        self.links = SipRecorderLinks(
            service.on_link_event, config.edges, default_address=config.media.address,
            sip_port=config.sip.port,
            tls_ca_file=str(config.sip.tls_ca_file) if config.sip.tls_ca_file else None,
            timers=SIP_TIMERS, setup_timeout=5.0, stop_timeout=1.0)
        await self.links.open()
        service.set_links(self.links)
        from mediafork.recording.manager import RecordingManager
        service.set_recordings(RecordingManager(
            engine=self.engine, store=self.store, outbox=service.outbox,
            storage_dir=config.storage.data_dir / "recordings",
            public_base_url=None))
        await service.start()
        # As the daemon does: media-worker events (send errors...) go to the links.
        asyncio.get_running_loop().add_reader(self.engine.event_fd, self._on_engine_events)
        self.app = build_app(service)
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return service

    def _on_engine_events(self) -> None:
        for event in self.engine.poll_events():
            self.links.handle_engine_event(event)

    def client(self, account: str = ACCOUNT, token: str = TOKEN) -> Client:
        # One pooled HTTP client per server, closed with it: a new one per Twilio client
        # would leave its keep-alive connection open until garbage collection.
        http: LocalHttpClient | None = self.__dict__.get("_http")
        if http is None:
            http = self._http = LocalHttpClient(self.base_url)
        return Client(account, token, http_client=http)

    def close_clients(self) -> None:
        """Close the Twilio clients' pooled connections."""
        http: LocalHttpClient | None = self.__dict__.pop("_http", None)
        if http is not None and http.session is not None:
            http.session.close()

    def host(self, method: str, path: str, json: Any = None, auth: tuple[str, str] | None =
             (ACCOUNT, TOKEN)) -> requests.Response:
        return requests.request(method, self.base_url + path, json=json, auth=auth, timeout=30,
                                headers=ONE_SHOT_HEADERS)

    def host_form(self, method: str, path: str, data: dict[str, str]) -> requests.Response:
        return requests.request(method, self.base_url + path, data=data, auth=(ACCOUNT, TOKEN),
                                timeout=30, headers=ONE_SHOT_HEADERS)

    def register(self, call_sid: str | None = None, **extra: Any) -> dict[str, Any]:
        call_sid = call_sid or "CA" + secrets.token_hex(16)
        body = {"call_sid": call_sid, "account_sid": ACCOUNT,
                "from": CALLER, "to": CALLEE,
                "codec": {"name": "PCMU", "payload_type": 0, "clock_rate": 8000},
                "dtmf_payload_type": 101, **extra}
        response = self.host("POST", "/v1/Calls", json=body)
        assert response.status_code == 201, response.text
        return response.json()

    def close(self) -> None:
        self.close_clients()

        async def shutdown() -> None:
            await self.runner.cleanup()
            await self.service.close(timeout=2)
            asyncio.get_running_loop().remove_reader(self.engine.event_fd)
            await self.store.close()
        self.lt.run(shutdown())
        self.engine.close()
        self.descriptors.assert_released()


def load(directory: Path, recorders: Recorders) -> Config:
    """The TOML config plus ``NoEdge``, a connector naming an edge that does not exist (the
    loader refuses one, so it is added here): its Siprecs fail before anything is sent."""
    config = load_config(write_config(directory, recorders))
    host, port = recorders.default.address
    no_edge = Connector(ACCOUNT, "NoEdge", f"sip:recorder@{host}:{port};edge=nowhere")
    return dataclasses.replace(config, connectors=(*config.connectors, no_edge))
