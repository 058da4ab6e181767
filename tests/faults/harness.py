"""The fault matrix harness: the real daemon, a real SRS, HTTP in, signed callbacks out.

Every case runs on one fresh uvloop (:func:`run`): an in-process :class:`~mediafork.daemon.Daemon`
on port 0 with SQLite in ``tmp_path``, the SRS (the ReferenceRecorder on the same loop, or sipp
as a subprocess), a callback receiver, and an aiohttp client speaking Basic auth to the host
call API (``/v1``) and the Twilio REST API (``/2010-04-01``). Where a process must die the daemon
is ``mediafork serve`` in a subprocess (:class:`ChildDaemon`).

Small SIP timers: ``Daemon`` builds ``SipRecorderLinks`` itself and the config has no timer keys,
so :func:`link_options` swaps the class in ``mediafork.daemon.process`` for a partial with the options
while ``start()`` runs (tests run one at a time, so the swap is never seen by anyone else).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import uvloop
from aiohttp import web
from fdcheck import DescriptorCheck
from sip_e2e.harness import Sipp as _E2eSipp

import mediafork.daemon.process as daemon_module
from mediafork.control.signature import compute_signature
from mediafork.daemon.config import (
    AccountConfig,
    ApiConfig,
    CallbackConfig,
    Config,
    MediaConfig,
    SipConfig,
    StorageConfig,
)
from mediafork.daemon.process import Daemon
from mediafork.engine import Engine
from mediafork.recorder_api import Connector
from mediafork.sip.transaction import TimerConfig

ACCOUNT = "AC" + "f0" * 16
TOKEN = "tok-" + "fault" * 6
API = f"/2010-04-01/Accounts/{ACCOUNT}"
SCENARIOS = Path(__file__).parent / "scenarios"
SIPP = shutil.which("sipp")
FAST_TIMERS = TimerConfig(t1=0.02, t2=0.2, t4=0.2, d=0.5)
"""T1 = 20 ms: Timer B (64*T1) fires after 1.28 s instead of 32 s."""
FAST_LINKS: dict[str, Any] = {"timers": FAST_TIMERS, "stop_timeout": 1.0, "setup_timeout": 5.0}

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 40.0) -> T:
    """Run one case on a fresh uvloop (the daemon's loop), bounded so a hang fails it."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(bounded())


def free_port(kind: int = socket.SOCK_DGRAM, ip: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def media_range(size: int = 500) -> tuple[int, int]:
    """A random slice of ``size`` media ports in 61000-65499: above the kernel's ephemeral
    range (32768-60999: sipp and free_port() live there) and away from the ReferenceRecorder
    (40000-49999), the load driver (10000 and up) and the ranges the other suites pick, so
    a case does not run out of ports because a neighbour holds them."""
    first = 61000 + secrets.randbelow((4500 - size) // 100 + 1) * 100
    return first, first + size - 1


async def eventually(check: Callable[[], bool], timeout: float = 3.0, what: str = "") -> None:
    """Wait for ``check()``; the engine frees a closed call's memory on its worker thread."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not met in {timeout} s: {what}")
        await asyncio.sleep(0.02)


def allocations_now() -> int:
    """Data-plane allocations alive now."""
    return Engine.live_allocations()


async def allocations_back_to(baseline: int) -> None:
    """The data plane frees a call's memory when the call is closed (not when its last
    Python reference goes), so no garbage collection: what is still allocated once the
    worker has let go is a leak."""

    def freed() -> bool:
        return Engine.live_allocations() <= baseline

    await eventually(freed, 3.0,
                     f"engine allocations back to {baseline} (now {Engine.live_allocations()})")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def cpu_seconds(pid: int | None = None) -> float:
    """User+system CPU time of a process (all threads), from /proc."""
    fields = Path(f"/proc/{pid or os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


# --- configuration ----------------------------------------------------------------------------


def connector(name: str, srs: str, *standby: str, **extra: Any) -> Connector:
    return Connector(ACCOUNT, name, srs, standby_srs=tuple(standby), **extra)


def make_config(
    tmp: Path,
    connectors: list[Connector],
    *,
    callback_timeout: float = 2.0,
    callback_attempts: int = 3,
    tls_ca_file: Path | None = None,
    port_range: tuple[int, int] | None = None,
) -> Config:
    data = tmp / "data"
    return Config(
        api=ApiConfig(host="127.0.0.1", port=0),
        storage=StorageConfig(data / "mediafork.db"),
        media=MediaConfig("127.0.0.1", port_range or media_range()),
        accounts=(AccountConfig(ACCOUNT, TOKEN),),
        connectors=tuple(connectors),
        callbacks=CallbackConfig(timeout=callback_timeout, max_attempts=callback_attempts),
        sip=SipConfig(port=0, tls_ca_file=tls_ca_file),
    )


def config_toml(config: Config) -> str:
    """The TOML a ``mediafork serve`` child reads for ``config`` (no secrets beyond the
    test account's token)."""
    lines = [
        "[api]",
        f'listen = "{config.api.host}:{config.api.port}"',
        "[storage]",
        f'path = "{config.storage.path}"',
        "[media]",
        f'address = "{config.media.address}"',
        f"port_range = [{config.media.port_range[0]}, {config.media.port_range[1]}]",
        "[[accounts]]",
        f'sid = "{ACCOUNT}"',
        f'auth_token = "{TOKEN}"',
    ]
    for c in config.connectors:
        lines += ["[[connectors]]", f'account_sid = "{c.account_sid}"',
                  f'unique_name = "{c.unique_name}"', f'srs = "{c.srs}"']
        if c.standby_srs:
            lines.append("standby_srs = [" + ", ".join(f'"{s}"' for s in c.standby_srs) + "]")
    lines += ["[callbacks]", f"timeout = {config.callbacks.timeout}",
              f"max_attempts = {config.callbacks.max_attempts}",
              "[sip]", f"port = {config.sip.port}"]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def link_options(**options: Any) -> Iterator[None]:
    """Make the Daemon build its SipRecorderLinks with ``options`` (timers...)."""
    original = daemon_module.SipRecorderLinks
    daemon_module.SipRecorderLinks = functools.partial(original, **options)  # type: ignore[misc]
    try:
        yield
    finally:
        daemon_module.SipRecorderLinks = original  # type: ignore[misc]


# --- callback receiver ------------------------------------------------------------------------


@dataclass
class Hit:
    """One callback request (every attempt, retries included)."""

    path: str
    params: dict[str, str]
    signed: bool
    at: float

    @property
    def event(self) -> str:
        return self.params.get("SiprecEvent") or self.params.get("RecordingStatus", "?")

    @property
    def sid(self) -> str:
        return self.params.get("SiprecSid") or self.params.get("RecordingSid", "?")


@dataclass
class Receiver:
    """Status callbacks: ``/ok/…`` answers 200, ``/slow/…`` answers after ``slow_seconds``
    (set longer than the daemon's callback timeout), ``/fail500/…`` answers 500. Every
    ``X-Twilio-Signature`` is checked with the account token."""

    slow_seconds: float = 3.0
    hits: list[Hit] = field(default_factory=list)
    base: str = ""
    _runner: web.AppRunner | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # Stopping does not wait out a slow handler's sleep.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    def url(self, kind: str = "ok", tag: str = "x") -> str:
        return f"{self.base}/{kind}/{tag}"

    async def _handle(self, request: web.Request) -> web.Response:
        form = dict(await request.post()) if request.method == "POST" else {}
        params = {**dict(request.query), **{k: str(v) for k, v in form.items()}}
        url = f"{self.base}{request.path}" if request.method == "POST" else \
            f"{self.base}{request.rel_url}"
        expected = compute_signature(TOKEN, url, form if request.method == "POST" else {})
        hit = Hit(request.path, params, request.headers.get("X-Twilio-Signature") == expected,
                  time.monotonic())
        self.hits.append(hit)
        self._changed.set()
        if request.path.startswith("/slow/"):
            await asyncio.sleep(self.slow_seconds)
        if request.path.startswith("/fail500/"):
            return web.Response(status=500, text="receiver broken")
        return web.Response(text="ok")

    def for_sid(self, sid: str) -> list[Hit]:
        return [h for h in self.hits if h.sid == sid]

    def events(self, sid: str) -> list[str]:
        return [h.event for h in self.for_sid(sid)]

    async def wait(self, check: Callable[[], bool], timeout: float = 8.0, what: str = "") -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not check():
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what or 'callbacks'}; got "
                                     f"{[(h.path, h.sid[-6:], h.event) for h in self.hits]}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.1))

    async def wait_events(self, sid: str, events: list[str], timeout: float = 8.0) -> None:
        await self.wait(lambda: self.events(sid)[: len(events)] == events
                        and len(self.events(sid)) >= len(events), timeout,
                        f"{events} for {sid}")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


# --- the API client ---------------------------------------------------------------------------


class Api:
    """The host call API and the Twilio REST API of one daemon, with Basic auth."""

    def __init__(self, base_url: str) -> None:
        self.base = base_url
        self.http = aiohttp.ClientSession(
            headers={"Authorization": aiohttp.encode_basic_auth(ACCOUNT, TOKEN)},
            timeout=aiohttp.ClientTimeout(total=20))

    async def close(self) -> None:
        await self.http.close()

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.http.request(method, self.base + path, **kwargs) as r:
            if r.content_type == "application/json":
                return r.status, await r.json()
            return r.status, await r.text()

    async def register(self, call_sid: str | None = None) -> dict[str, Any]:
        body = {"call_sid": call_sid or "CA" + secrets.token_hex(16), "account_sid": ACCOUNT,
                "from": "sip:+15551230000@pbx.example", "to": "sip:+15559870000@pbx.example",
                "codec": {"name": "PCMU", "payload_type": 0, "clock_rate": 8000}}
        status, view = await self.request("POST", "/v1/Calls", json=body)
        assert status == 201, view
        return dict(view)

    async def call(self, call_sid: str) -> tuple[int, Any]:
        return await self.request("GET", f"/v1/Calls/{call_sid}")

    async def end_call(self, call_sid: str) -> None:
        status, body = await self.request("DELETE", f"/v1/Calls/{call_sid}")
        assert status == 204, body

    async def create_siprec(self, call_sid: str, connector: str, callback: str,
                            track: str = "both_tracks", name: str | None = None) -> str:
        form = {"ConnectorName": connector, "Track": track, "StatusCallback": callback}
        if name:
            form["Name"] = name
        status, body = await self.request("POST", f"{API}/Calls/{call_sid}/Siprec.json",
                                          data=form)
        assert status == 201, body
        assert body["status"] == "in-progress", body
        return str(body["sid"])

    async def siprec(self, call_sid: str, sid: str) -> dict[str, Any]:
        status, body = await self.request("GET", f"{API}/Calls/{call_sid}/Siprec/{sid}.json")
        assert status == 200, body
        return dict(body)

    async def stop_siprec(self, call_sid: str, sid: str) -> dict[str, Any]:
        status, body = await self.request("POST", f"{API}/Calls/{call_sid}/Siprec/{sid}.json",
                                          data={"Status": "stopped"})
        assert status == 200, body
        return dict(body)

    async def metrics(self) -> dict[str, float]:
        """``/metrics`` as {'name{labels}': value}."""
        status, text = await self.request("GET", "/metrics")
        assert status == 200
        out: dict[str, float] = {}
        for line in str(text).splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out


# --- the in-process daemon --------------------------------------------------------------------


@dataclass
class Stack:
    daemon: Daemon
    api: Api
    receiver: Receiver
    stopped: bool = False

    @property
    def engine(self) -> Engine:
        assert self.daemon.engine is not None
        return self.daemon.engine

    async def shutdown(self) -> None:
        """The daemon's graceful stop (what SIGTERM runs), once."""
        if not self.stopped:
            self.stopped = True
            await self.daemon.shutdown()

    def live_forks(self) -> int:
        return sum(len(call.forks) for call in self.engine.calls)

    async def wait_stopped(self, call_sid: str, sid: str, timeout: float = 5.0) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            view = await self.api.siprec(call_sid, sid)
            if view["status"] == "stopped" or asyncio.get_running_loop().time() > deadline:
                return view
            await asyncio.sleep(0.05)

    async def serves_a_fresh_call(self, connector: str = "Healthy") -> None:
        """The daemon still works: register, Siprec to a healthy SRS, started, stopped."""
        call = await self.api.register()
        sid = await self.api.create_siprec(call["call_sid"], connector,
                                           self.receiver.url("ok", "fresh"))
        await self.receiver.wait_events(sid, ["siprec-started"])
        await self.api.end_call(call["call_sid"])
        await self.receiver.wait_events(sid, ["siprec-started", "siprec-stopped"])
        assert all(h.signed for h in self.receiver.for_sid(sid))


@contextlib.asynccontextmanager
async def daemon_stack(config: Config, receiver: Receiver | None = None,
                       **links: Any) -> AsyncIterator[Stack]:
    """A started Daemon (SIP links built with ``links`` options), its API and a receiver
    (a new one, stopped at the end, unless one that outlives the daemon is given).

    When the case passes, the daemon's shutdown must have closed every descriptor it (and
    the API client) opened: checked before the receiver, which predates the daemon, stops.
    """
    own = receiver is None
    receiver = receiver or await Receiver().start()
    descriptors = DescriptorCheck("daemon")
    daemon = Daemon(config, shutdown_timeout=5.0)
    with link_options(**{**FAST_LINKS, **links}):
        await daemon.start()
    api = Api(daemon.base_url)
    stack = Stack(daemon, api, receiver)
    try:
        yield stack
        await api.close()
        await stack.shutdown()
        descriptors.assert_released()
    finally:
        await api.close()
        await stack.shutdown()
        if own:
            await receiver.stop()


def error_hit(hits: list[Hit]) -> Hit:
    (hit,) = [h for h in hits if h.event == "siprec-error"]
    return hit


# --- sipp as the SRS --------------------------------------------------------------------------


class Sipp(_E2eSipp):
    """The sip_e2e sipp runner with this suite's scenarios (no auto-answers: the fault
    scenarios handle every request themselves)."""

    def __init__(self, scenario: str, workdir: Path, **kwargs: Any) -> None:
        super().__init__(scenario, workdir, scenarios=SCENARIOS, auto_answer=False, **kwargs)

    def saw(self, text: str) -> bool:
        """Has ``text`` appeared in the messages sipp traced so far?"""
        return self.log.exists() and text in self.log.read_text(errors="replace")


class MediaSink:
    """A UDP RTP/RTCP pair that an SDP answer (sipp's) points media at; counts packets."""

    def __init__(self) -> None:
        for _ in range(100):
            port = free_port()
            if port % 2 or port > 65530:
                continue
            self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                self.rtp.bind(("127.0.0.1", port))
                self.rtcp.bind(("127.0.0.1", port + 1))
            except OSError:
                self.rtp.close()
                self.rtcp.close()
                continue
            self.rtp.setblocking(False)
            self.port = port
            return
        raise RuntimeError("no free RTP/RTCP pair")

    def drain(self) -> int:
        n = 0
        with contextlib.suppress(BlockingIOError):
            while True:
                self.rtp.recv(2048)
                n += 1
        return n

    def close(self) -> None:
        self.rtp.close()
        self.rtcp.close()


class Talker:
    """Plays PCMU at 50 pps into a call's ingress ports (a media server mirroring a call)."""

    def __init__(self, ingress: dict[str, Any]) -> None:
        self.targets = [(a["address"], a["port"]) for a in ingress.values()]
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.seq = 0
        self.task: asyncio.Task[None] | None = None

    def start(self) -> Talker:
        self.task = asyncio.ensure_future(self._run())
        return self

    async def _run(self) -> None:
        import struct

        while True:
            self.seq += 1
            for i, target in enumerate(self.targets):
                packet = struct.pack("!BBHII", 0x80, 0, self.seq & 0xFFFF, self.seq * 160,
                                     0x7000 + i) + b"\xff" * 160
                with contextlib.suppress(OSError):
                    self.sock.sendto(packet, target)
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.sock.close()


# --- a daemon in a subprocess -----------------------------------------------------------------


class ChildDaemon:
    """``mediafork serve --config FILE`` in a subprocess (for SIGTERM and SIGKILL)."""

    def __init__(self, config: Config, workdir: Path, name: str = "child") -> None:
        path = workdir / f"{name}.toml"
        path.write_text(config_toml(config))
        self.log = workdir / f"{name}.log"
        self._log_file = self.log.open("w")
        exe = Path(sys.executable).with_name("mediafork")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-c",
                                               "from mediafork.cli import main; main()"]
        self.proc = subprocess.Popen([*cmd, "serve", "--config", str(path), "--log-level",
                                      "warning"], stdout=subprocess.PIPE,
                                     stderr=self._log_file, text=True)
        self.base_url = ""

    async def ready(self, timeout: float = 15.0) -> str:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), timeout)
        match = re.search(r"ready on (\S+)", line)
        assert match, f"no ready line: {line!r}; log: {self.log.read_text()[-2000:]}"
        self.base_url = match.group(1)
        return self.base_url

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def wait(self, timeout: float) -> int:
        return await asyncio.wait_for(asyncio.to_thread(self.proc.wait), timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log_file.close()


def replace_config(config: Config, **changes: Any) -> Config:
    return dataclasses.replace(config, **changes)
