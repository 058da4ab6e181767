"""A real daemon for the bad-input and security suites: :class:`Daemon` in-process on free
ports, a :class:`ReferenceRecorder` (UDP, TCP and TLS, requiring a credentials header and a
digest password), a status-callback receiver, two accounts, and every log record captured at
DEBUG level.

The connector secrets are given as ``*_encrypted`` values with a ``[secrets] key_file``, so
every test that runs on this stack also runs the encrypted-at-rest path. Nothing is faked.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from aiohttp import web
from fdcheck import DescriptorCheck

from mediafork.daemon.config import encrypt_secret, generate_secret_key, load_config
from mediafork.daemon.process import Daemon
from mediafork.srs.server import ReferenceRecorder
from mediafork.tlsutil import self_signed

API = "/2010-04-01"
ACCOUNT_A = "AC" + "a1" * 16
ACCOUNT_B = "AC" + "b2" * 16


def run(coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
    """Run a scenario on uvloop (the daemon's loop), bounded so a wedge fails the test."""

    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return uvloop.run(bounded())


class LogCapture(logging.Handler):
    """Every record, formatted with its traceback, *before* any scrubbing: components must not
    log secrets in the first place (the daemon's scrubber is only a second line)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        try:
            self.lines.append(self.format(record))
        except Exception as exc:  # a broken log call is a finding of its own
            self.lines.append(f"UNFORMATTABLE {record.name}: {exc!r}")

    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass
class Secrets:
    """The plaintext secrets of a stack: none of them may leak anywhere."""

    token_a: str = field(default_factory=lambda: "tokA-" + secrets.token_hex(16))
    token_b: str = field(default_factory=lambda: "tokB-" + secrets.token_hex(16))
    credentials: str = field(default_factory=lambda: "cred-" + secrets.token_hex(16))
    digest_password: str = field(default_factory=lambda: "dgpw-" + secrets.token_hex(16))

    def connector_secrets(self) -> list[str]:
        return [self.credentials, self.digest_password]


class Receiver:
    """Status callbacks: every request's form kept (they are grepped for secrets too)."""

    def __init__(self) -> None:
        self.received: list[dict[str, str]] = []
        self.raw: list[bytes] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, host: str = "127.0.0.1") -> None:
        app = web.Application()
        app.router.add_route("*", "/status", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://{host}:{port}/status"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.raw.append(str(request.url).encode() + b"\n" + body)
        form = dict(await request.post()) if request.method == "POST" else dict(request.query)
        self.received.append({k: str(v) for k, v in form.items()})
        return web.Response(text="ok")

    def events(self, siprec_sid: str) -> list[str]:
        return [c.get("SiprecEvent", "") for c in self.received if c.get("SiprecSid") == siprec_sid]

    async def wait_event(self, siprec_sid: str, event: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while event not in self.events(siprec_sid):
            if time.monotonic() > deadline:
                raise AssertionError(f"no {event} for {siprec_sid}; got {self.received}")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@dataclass
class Stack:
    daemon: Daemon
    recorder: ReferenceRecorder
    receiver: Receiver
    folder: Path
    secrets: Secrets
    logs: LogCapture
    key_file: Path
    ca_file: Path
    http: aiohttp.ClientSession
    descriptors: DescriptorCheck
    """Taken just before the daemon started: its shutdown must close all it opened."""
    responses: list[bytes] = field(default_factory=list)
    """Every API response body seen through :meth:`request` (grepped for secrets)."""

    @property
    def base(self) -> str:
        return self.daemon.base_url

    def token(self, account: str) -> str:
        return self.secrets.token_a if account == ACCOUNT_A else self.secrets.token_b

    def auth(self, account: str, token: str | None = None) -> dict[str, str]:
        """The Authorization header (a plain header: aiohttp's ``auth=`` is deprecated)."""
        raw = f"{account}:{self.token(account) if token is None else token}".encode()
        return {"Authorization": "Basic " + base64.b64encode(raw).decode()}

    @property
    def sip_port(self) -> int:
        assert self.daemon.links is not None
        port = self.daemon.links.sip_port("local")
        assert port is not None
        return port

    async def request(self, method: str, path: str, account: str | None = ACCOUNT_A,
                      **kwargs: Any) -> tuple[int, Any, bytes]:
        """One API request; returns (status, parsed JSON or None, raw body)."""
        headers = {**(self.auth(account) if account else {}), **kwargs.pop("headers", {})}
        async with self.http.request(method, self.base + path, headers=headers, **kwargs) as r:
            raw = await r.read()
        self.responses.append(raw)
        try:
            body = await asyncio.to_thread(_json, raw)
        except ValueError:
            body = None
        return r.status, body, raw

    async def register(self, account: str = ACCOUNT_A, **extra: Any) -> dict[str, Any]:
        call_sid = "CA" + secrets.token_hex(16)
        body = {"call_sid": call_sid, "from": "sip:+15551230000@pbx.example",
                "to": "sip:+15559870000@pbx.example",
                "codec": {"name": "PCMU", "payload_type": 0, "clock_rate": 8000}, **extra}
        status, view, raw = await self.request("POST", "/v1/Calls", account, json=body)
        assert status == 201, raw
        return view

    async def start_siprec(self, account: str, call_sid: str, connector: str = "Default",
                           track: str = "both_tracks") -> str:
        status, created, raw = await self.request(
            "POST", f"{API}/Accounts/{account}/Calls/{call_sid}/Siprec.json", account,
            data={"ConnectorName": connector, "Track": track,
                  "StatusCallback": self.receiver.url})
        assert status == 201, raw
        sid = created["sid"]
        await self.receiver.wait_event(sid, "siprec-started")
        return sid

    async def fresh_call_works(self, account: str = ACCOUNT_A, connector: str = "Default") -> None:
        """The proof that the daemon still serves: register, Siprec to the reference
        recorder, started callback, stop, end."""
        view = await self.register(account)
        call_sid = view["call_sid"]
        sid = await self.start_siprec(account, call_sid, connector)
        status, _, raw = await self.request(
            "POST", f"{API}/Accounts/{account}/Calls/{call_sid}/Siprec/{sid}.json", account,
            data={"Status": "stopped"})
        assert status == 200, raw
        await self.receiver.wait_event(sid, "siprec-stopped")
        status, _, raw = await self.request("DELETE", f"/v1/Calls/{call_sid}", account)
        assert status == 204, raw

    async def metrics(self) -> str:
        status, _, raw = await self.request("GET", "/metrics", None)
        assert status == 200
        return raw.decode()


def _json(raw: bytes) -> Any:
    import json

    return json.loads(raw) if raw else None


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of the Prometheus text exposition."""
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
                   if labels else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    raise KeyError(want)


CONFIG = """
[api]
listen = "127.0.0.1:0"
max_request_bytes = {max_request}
[storage]
path = "data/mediafork.db"
[media]
address = "127.0.0.1"
port_range = [{first}, {last}]
[[accounts]]
sid = "{a}"
auth_token_encrypted = "{token_a}"
[[accounts]]
sid = "{b}"
auth_token_encrypted = "{token_b}"
[[edges]]
name = "local"
address = "127.0.0.1"
default = true
[[connectors]]
account_sid = "{a}"
unique_name = "Default"
srs = "{udp}"
credentials_header = "X-Auth-Token"
credentials_encrypted = "{credentials}"
digest_username = "mf"
digest_password_encrypted = "{digest}"
[[connectors]]
account_sid = "{a}"
unique_name = "Secure"
srs = "{tls};secure=true"
credentials_header = "X-Auth-Token"
credentials_encrypted = "{credentials}"
digest_username = "mf"
digest_password_encrypted = "{digest}"
[[connectors]]
account_sid = "{b}"
unique_name = "Default"
srs = "{udp}"
credentials_header = "X-Auth-Token"
credentials_encrypted = "{credentials}"
digest_username = "mf"
digest_password_encrypted = "{digest}"
[callbacks]
timeout = 2.0
max_attempts = 2
{callbacks}
[sip]
port = 0
[sip.tls]
ca_file = "{ca}"
[secrets]
key_file = "secrets.key"
[control_socket]
path = "data/control.sock"
"""


async def start_stack(folder: Path, *, trusted_ca: bool = True,
                      max_request: int = 16384, callbacks: str = "") -> Stack:
    """Everything up and one fresh call proven to work. ``trusted_ca=False`` configures a CA
    file that did not sign the recorder's certificate (TLS verification must then fail).
    ``callbacks``: more TOML lines for the ``[callbacks]`` table (e.g. ``deny = [...]``)."""
    logs = LogCapture()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(logs)
    root.setLevel(logging.DEBUG)
    logs.previous_level = previous  # type: ignore[attr-defined]
    sec = Secrets()
    cert, key = self_signed(folder / "tls", "recorder")
    other_ca, _ = self_signed(folder / "other-tls", "recorder")
    recorder = await ReferenceRecorder(
        host="127.0.0.1", port=0, tcp=True, tls_cert=str(cert), tls_key=str(key),
        out_dir=folder / "srs", credentials_header=("X-Auth-Token", sec.credentials),
        require_auth=("mf", sec.digest_password), media_ports=(46000, 47999),
    ).start()
    receiver = Receiver()
    await receiver.start()
    secret_key = generate_secret_key()
    key_file = folder / "secrets.key"
    key_file.write_bytes(secret_key)
    first = 20000 + secrets.randbelow(90) * 100
    (folder / "mediafork.toml").write_text(CONFIG.format(
        max_request=max_request, first=first, last=first + 99, a=ACCOUNT_A, b=ACCOUNT_B,
        token_a=encrypt_secret(secret_key, sec.token_a),
        token_b=encrypt_secret(secret_key, sec.token_b),
        credentials=encrypt_secret(secret_key, sec.credentials),
        digest=encrypt_secret(secret_key, sec.digest_password),
        udp=recorder.uri("udp"), tls=recorder.uri("tls"),
        ca=cert if trusted_ca else other_ca, callbacks=callbacks,
    ))
    config = load_config(folder / "mediafork.toml")
    descriptors = DescriptorCheck("daemon")
    daemon = Daemon(config, shutdown_timeout=5.0)
    await daemon.start()
    http = aiohttp.ClientSession()
    return Stack(daemon, recorder, receiver, folder, sec, logs, key_file,
                 cert if trusted_ca else other_ca, http, descriptors)


async def stop_stack(stack: Stack, *, check_descriptors: bool = True) -> None:
    """Stop everything; with *check_descriptors*, fail if the daemon's shutdown left a
    descriptor open (checked before the recorder and receiver, which predate it, stop)."""
    try:
        await stack.http.close()
        await stack.daemon.shutdown()
        if check_descriptors:
            stack.descriptors.assert_released()
    finally:
        await _stop_peers(stack)


async def _stop_peers(stack: Stack) -> None:
    try:
        await stack.recorder.stop()
        await stack.receiver.stop()
    finally:
        root = logging.getLogger()
        root.removeHandler(stack.logs)
        root.setLevel(getattr(stack.logs, "previous_level", logging.WARNING))


async def with_stack(folder: Path, scenario: Callable[[Stack], Coroutine[Any, Any, Any]],
                     **options: Any) -> Any:
    stack = await start_stack(folder, **options)
    try:
        result = await scenario(stack)
    except BaseException:
        await stop_stack(stack, check_descriptors=False)  # the case's own failure comes first
        raise
    await stop_stack(stack)
    return result
