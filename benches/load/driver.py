"""Load and soak driver (`scripts/load`, issue 7 §3).

Three processes besides this one, so that each is measured on its own:

* the **daemon**: ``mediafork serve`` with a config file (API and SIP on free loopback ports,
  a ``Default`` connector to the recorder with ``secure=true``: SIP over TLS, SRTP forks);
* the **recorder**: the reference recorder with count-only media (``sink_ports``): every
  INVITE/ACK/BYE is real, every stream is answered with a port of the generator's sink;
* the **generator**: ``_fastpath.run_loadgen``, a paced C generator (PCMU, 50 pps per track,
  two tracks per call) that also runs the C sink counting what the forks send.

This process registers the calls over ``/v1/Calls``, starts the Siprecs over the
Twilio-compatible REST API at a fixed rate (open loop, so the latency is not shaped by our own
back-pressure), receives the status callbacks on a local HTTP endpoint, samples the daemon's
VmRSS and CPU, stops everything in order and checks: zero packet loss inside mediafork, every
callback delivered exactly once, RSS flat after warm-up. Every phase has a deadline, and the
generator stops by itself after the duration it is given.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import resource
import secrets
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from mediafork.control.signature import compute_signature

from .procs import die_with_parent, raise_nofile

API = "/2010-04-01"
HOST = "127.0.0.1"
MEDIA_PORTS = (10000, 31999)
"""Below the ephemeral range, so API/SIP/recorder ports picked by the OS never collide; room
for 2,000 calls at 10 ports each (2 ingress + 4 forks x RTP/RTCP)."""
ROOT = Path(__file__).resolve().parents[2]

Say = Callable[[str], None]


@dataclass
class LoadConfig:
    calls: int = 50
    siprecs_per_call: int = 2
    soak_seconds: float = 20.0
    """Steady state with every Siprec running (after the ramp, before the stops)."""
    create_rate: float = 20.0
    """Siprec creates per second, open loop."""
    stop_rate: float = 200.0
    sip_transport: str = "tls"
    """``tls`` (the default for a secure connector), ``tcp`` or ``udp`` (SDES keys in clear)."""
    io: str | None = None
    """The daemon's ``[media] io``; None: its default."""
    sample_interval: float = 2.0
    warmup_seconds: float | None = None
    """RSS samples before this (after the last siprec-started) are warm-up; default 10% of the
    soak, at least 5 s and at most 60 s."""
    setup_before_media: bool = False
    """Start every Siprec before the media: isolates the data plane's capacity from the
    session setup rate under load (which churn_rate then measures)."""
    churn_rate: float = 0.0
    """Siprecs replaced per second during the soak (stop one, start one on the same call)."""
    ramp_slack: float = 20.0
    """Seconds allowed beyond creates/create_rate for every siprec-started to arrive."""
    stop_slack: float = 15.0
    sinks: int = 8
    workdir: Path | None = None


@dataclass
class Callback:
    event: str
    sid: str
    at: float
    signed: bool
    error: str = ""


@dataclass
class Samples:
    t: list[float] = field(default_factory=list)
    rss_kb: list[int] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)


class CallbackReceiver:
    """The application's status-callback endpoint; checks every signature."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.received: list[Callback] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/cb", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://{HOST}:{port}/cb"

    async def _handle(self, request: web.Request) -> web.Response:
        at = time.monotonic()
        params = {k: str(v) for k, v in (await request.post()).items()}
        signed = request.headers.get("X-Twilio-Signature") == compute_signature(
            self.token, self.url, params)
        error = params.get("SiprecErrorCode", "")
        if error:
            error += " " + params.get("SiprecError", "")[:80]
        self.received.append(Callback(params.get("SiprecEvent", "?"),
                                      params.get("SiprecSid", "?"), at, signed, error))
        return web.Response(text="ok")

    def count(self, event: str) -> int:
        return sum(1 for c in self.received if c.event == event)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class Child:
    """A child process speaking JSON lines on stdout."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.name = name
        self.proc = proc
        self.log = log

    @classmethod
    async def start(cls, name: str, argv: list[str], workdir: Path) -> Child:
        log = workdir / f"{name}.log"
        with open(log, "wb") as err:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=err, cwd=str(ROOT), preexec_fn=_child_setup,
                limit=1 << 20,
            )
        return cls(name, proc, log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def read(self, key: str, timeout: float) -> Any:
        """The next JSON line carrying ``key`` (other lines are skipped)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.name}: no {key!r} within {timeout:.0f}s")
            line = await asyncio.wait_for(self.proc.stdout.readline(), remaining)
            if not line:
                raise RuntimeError(f"{self.name} exited: {self.tail()}")
            text = line.decode(errors="replace").strip()
            if key == "ready" and text.startswith("mediafork ready on "):
                return text.rsplit(" ", 1)[1]
            with contextlib.suppress(ValueError):
                obj = json.loads(text)
                if isinstance(obj, dict) and key in obj:
                    return obj if key == "udp" else obj[key]

    def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())

    async def stop(self, timeout: float = 20.0) -> int:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
            return -9

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


def _child_setup() -> None:
    die_with_parent()
    raise_nofile()


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _host_busy_seconds() -> float:
    """CPU seconds all CPUs spent not idle (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def parse_metrics(text: str) -> dict[str, float]:
    """Sample name (with its labels) -> value; per-worker families are also summed under
    their bare name (the daemon's CPU and busy time across its media workers)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
                base, brace, _ = name.partition("{")
                if brace and base.startswith("mediafork_worker_"):
                    out[base] = out.get(base, 0.0) + float(value)
    return out


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def _config_toml(workdir: Path, sid: str, token: str, recorder: dict[str, Any], ca: Path,
                 transport: str, io: str | None = None) -> Path:
    if transport == "tls":
        srs = f"sips:recorder@{HOST}:{recorder['tls']};secure=true"
    else:
        suffix = ";transport=tcp" if transport == "tcp" else ""
        srs = f"sip:recorder@{HOST}:{recorder['udp']}{suffix};secure=true"
    text = f"""
[api]
listen = "{HOST}:0"
[storage]
path = "{workdir / 'mediafork.db'}"
[media]
address = "{HOST}"
port_range = [{MEDIA_PORTS[0]}, {MEDIA_PORTS[1]}]
{f'io = "{io}"' if io else ""}
[[accounts]]
sid = "{sid}"
auth_token = "{token}"
[[connectors]]
account_sid = "{sid}"
unique_name = "Default"
srs = "{srs}"
[callbacks]
timeout = 10.0
max_attempts = 4
[sip]
port = 0
[sip.tls]
ca_file = "{ca}"
"""
    path = workdir / "mediafork.toml"
    path.write_text(text)
    return path


class LoadRun:
    """One run: start the processes, drive the load, check, stop everything."""

    def __init__(self, cfg: LoadConfig, say: Say) -> None:
        self.cfg = cfg
        self.say = say
        self.sid = "AC" + secrets.token_hex(16)
        self.token = secrets.token_hex(16)
        self.children: list[Child] = []
        self.samples = Samples()
        self.t0 = time.monotonic()
        self.create_at: dict[str, float] = {}
        self.created_201: list[float] = []
        self.create_errors: list[str] = []
        self.stop_errors: list[str] = []
        self.sids: list[str] = []
        self._sid_call: dict[str, str] = {}
        self._sid_index: dict[str, int] = {}
        self.active: list[str] = []
        """Siprecs not yet stopped, oldest first (churn replaces from the front)."""
        self.churn_sids: set[str] = set()
        self.churn_201: list[float] = []
        self.others_cpu_pct = 0.0
        self.loadavg: tuple[float, float, float] = (0.0, 0.0, 0.0)

    async def run(self) -> dict[str, Any]:
        cfg = self.cfg
        with tempfile.TemporaryDirectory(prefix="mediafork-load-") as tmp:
            workdir = cfg.workdir or Path(tmp)
            workdir.mkdir(parents=True, exist_ok=True)
            try:
                return await self._run(workdir)
            finally:
                for child in reversed(self.children):
                    await child.stop(timeout=5)

    async def _start_processes(self, workdir: Path) -> tuple[Child, Child, Child, str]:
        from mediafork.tlsutil import self_signed

        py = sys.executable
        gen = await Child.start("generator", [py, "-m", "benches.load.procs", "generator",
                                              "--sinks", str(self.cfg.sinks)], workdir)
        self.children.append(gen)
        sink_ports = await gen.read("sink_ports", 20)
        cert, key = self_signed(workdir / "tls", "recorder")
        rec = await Child.start("recorder", [
            py, "-m", "benches.load.procs", "recorder", "--out", str(workdir / "srs"),
            "--tls-cert", str(cert), "--tls-key", str(key),
            "--sink-ports", *map(str, sink_ports)], workdir)
        self.children.append(rec)
        ports = await rec.read("udp", 30)
        conf = _config_toml(workdir, self.sid, self.token, ports, cert, self.cfg.sip_transport,
                            self.cfg.io)
        daemon = await Child.start("daemon", [
            py, "-c", "import sys; from mediafork.cli import main; sys.exit(main())",
            "serve", "--config", str(conf), "--log-level", "warning"], workdir)
        self.children.append(daemon)
        base = await daemon.read("ready", 60)
        return gen, rec, daemon, base

    async def _run(self, workdir: Path) -> dict[str, Any]:
        cfg = self.cfg
        say = self.say
        n_siprecs = cfg.calls * cfg.siprecs_per_call
        gen, rec, daemon, base = await self._start_processes(workdir)
        say(f"  daemon pid {daemon.pid} on {base}; recorder pid {rec.pid}; generator pid "
            f"{gen.pid}")
        receiver = CallbackReceiver(self.token)
        await receiver.start()
        auth = "Basic " + base64.b64encode(f"{self.sid}:{self.token}".encode()).decode()
        connector = aiohttp.TCPConnector(limit=64)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(headers={"Authorization": auth}, connector=connector,
                                         timeout=timeout) as http:
            # -- calls --------------------------------------------------------------------
            ingress = await self._register_calls(http, base)
            rss_registered = _rss_kb(daemon.pid)
            ramp_budget = n_siprecs / cfg.create_rate + cfg.ramp_slack
            stop_budget = n_siprecs / cfg.stop_rate + cfg.stop_slack
            sampler = asyncio.create_task(self._sample(daemon.pid))
            dests = [ingress[i][t] for i in range(cfg.calls) for t in ("inbound", "outbound")]

            async def ramp(deadline: float) -> bool:
                """Every Siprec, open loop; True when all were started by the deadline."""
                await self._paced(n_siprecs, cfg.create_rate,
                                  lambda k: self._create(http, base, receiver.url, k))
                return await self._wait(
                    lambda: receiver.count("siprec-started") + len(self.create_errors)
                    >= n_siprecs, deadline)

            if cfg.setup_before_media:
                # Sessions first, then media: the data plane's capacity measured apart from
                # how fast the control plane starts sessions under media load.
                t_ramp = time.monotonic()
                say(f"  starting {n_siprecs} Siprecs at {cfg.create_rate:.0f}/s before media")
                all_started = await ramp(t_ramp + ramp_budget)
                t_started = time.monotonic()
                ramp_seconds = t_started - t_ramp
                duration = 1.0 + cfg.soak_seconds + stop_budget
            else:
                duration = 1.0 + ramp_budget + cfg.soak_seconds + stop_budget
            # -- media --------------------------------------------------------------------
            gen.send({"dests": dests, "duration": duration, "drain": 1.5})
            await gen.read("started", 30)
            t_media = time.monotonic()
            metrics0 = await self._metrics(http, base)
            cpu0 = _cpu_seconds(daemon.pid)
            say(f"  media: {len(dests)} streams at 50 pps for {duration:.0f}s")
            await asyncio.sleep(1.0)
            if not cfg.setup_before_media:
                say(f"  starting {n_siprecs} Siprecs at {cfg.create_rate:.0f}/s under media")
                all_started = await ramp(t_media + ramp_budget)
                t_started = time.monotonic()
                ramp_seconds = t_started - t_media - 1.0
            say(f"  {receiver.count('siprec-started')}/{n_siprecs} siprec-started after "
                f"{ramp_seconds:.1f}s" + ("" if all_started else " (ramp budget exceeded)"))
            # -- soak -----------------------------------------------------------------------
            # The generator's duration was fixed up front; ramp time not used is soak time.
            if cfg.setup_before_media:
                soak_end = t_media + 1.0 + cfg.soak_seconds
            else:
                soak_end = max(t_started, t_media + 1.0 + ramp_budget) + cfg.soak_seconds
            t_steady = max(t_started, t_media + 1.0)
            churn = asyncio.create_task(self._churn(http, base, receiver.url, soak_end - 3.0))
            metrics_a = await self._metrics(http, base)
            cpu_a, t_a = _cpu_seconds(daemon.pid), time.monotonic()
            ours_a = self._our_cpu(gen, rec, daemon)
            host_a = _host_busy_seconds()
            while (now := time.monotonic()) < soak_end:
                await asyncio.sleep(min(10.0, soak_end - now))
                now = time.monotonic()
                m = await self._metrics(http, base)
                rss = self.samples.rss_kb[-1] if self.samples.rss_kb else 0
                say(f"  t+{now - t_media:5.0f}s rx {m.get('mediafork_packets_received_total', 0):.0f}"
                    f" sent {m.get('mediafork_packets_sent_total', 0):.0f}"
                    f" dropped {_drops(m):.0f} rss {rss / 1024:.1f} MiB")
            await churn
            metrics_b = await self._metrics(http, base)
            cpu_b, t_b = _cpu_seconds(daemon.pid), time.monotonic()
            # What the rest of the machine used meanwhile: measurements on a shared box are
            # only comparable with this next to them.
            others = (_host_busy_seconds() - host_a) - (self._our_cpu(gen, rec, daemon) - ours_a)
            self.others_cpu_pct = round(100.0 * others / max(1e-9, t_b - t_a), 1)
            self.loadavg = os.getloadavg()
            # -- stop every Siprec while media still flows ----------------------------------
            sids = list(self.sids)
            await self._paced(len(sids), cfg.stop_rate,
                              lambda k: self._stop_siprec(http, base, sids[k]))
            all_stopped = await self._wait(
                lambda: receiver.count("siprec-stopped") >= len(sids),
                time.monotonic() + stop_budget)
            say(f"  {receiver.count('siprec-stopped')}/{len(sids)} siprec-stopped")
            # -- the generator ends by itself; then the counters settle ----------------------
            result = await gen.read("result", duration + 120)  # its sinks stay bound
            final = await self._settled_metrics(http, base)
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            rss_end = _rss_kb(daemon.pid)
            await self._end_calls(http, base, ingress)
        await receiver.stop()
        daemon_rc = await daemon.stop(timeout=30)
        for child in (gen, rec):  # end of input: the generator unbinds, the recorder stops
            assert child.proc.stdin is not None
            child.proc.stdin.close()
        recorder_summary = await rec.read("summary", 60)
        await rec.stop()
        return self._report(
            receiver=receiver, gen=result, final=final, metrics0=metrics0,
            window=(metrics_a, metrics_b, cpu_b - cpu_a, t_b - t_a, t_a, t_b),
            t_steady=t_steady, ramp_seconds=ramp_seconds, all_started=all_started,
            all_stopped=all_stopped, recorder=recorder_summary, daemon_rc=daemon_rc,
            rss_registered=rss_registered, rss_end=rss_end, cpu0=cpu0)

    # -- steps ------------------------------------------------------------------------------
    async def _register_calls(self, http: aiohttp.ClientSession,
                              base: str) -> list[dict[str, list[Any]]]:
        out: list[dict[str, list[Any]]] = [{} for _ in range(self.cfg.calls)]
        sem = asyncio.Semaphore(32)

        async def register(i: int) -> None:
            body = {"call_sid": _call_sid(i), "account_sid": self.sid,
                    "from": f"sip:+1555{i:07d}@pbx.example", "to": "sip:+15559870000@pbx.example",
                    "codec": {"name": "PCMU", "payload_type": 0, "clock_rate": 8000}}
            async with sem, http.post(f"{base}/v1/Calls", json=body) as r:
                answer = await r.json()
                if r.status != 201:
                    raise RuntimeError(f"register call {i}: {r.status} {answer}")
            out[i] = {t: [a["address"], a["port"]] for t, a in answer["ingress"].items()}

        await asyncio.gather(*(register(i) for i in range(self.cfg.calls)))
        return out

    async def _paced(self, n: int, rate: float, make: Callable[[int], Any]) -> None:
        """Start ``make(k)`` at ``rate`` per second regardless of how long each takes."""
        start = time.monotonic()
        tasks = []
        for k in range(n):
            delay = start + k / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(make(k)))
        await asyncio.gather(*tasks)

    async def _churn(self, http: aiohttp.ClientSession, base: str, cb_url: str,
                     until: float) -> None:
        """During the soak, replace Siprecs at ``churn_rate`` (stop one, start another on
        the same call): create latency under full media load, and RSS flat despite churn."""
        if self.cfg.churn_rate <= 0:
            return
        tasks = []
        k = 0
        while time.monotonic() < until and self.active:
            tasks.append(asyncio.create_task(self._replace(http, base, cb_url, k)))
            k += 1
            await asyncio.sleep(1.0 / self.cfg.churn_rate)
        await asyncio.gather(*tasks)

    async def _replace(self, http: aiohttp.ClientSession, base: str, cb_url: str,
                       k: int) -> None:
        sid = self.active.pop(0)
        await self._stop_siprec(http, base, sid)
        await self._create(http, base, cb_url, self._sid_index[sid], name=f"churn{k}",
                           churn=True)

    async def _create(self, http: aiohttp.ClientSession, base: str, cb_url: str, k: int,
                      name: str | None = None, churn: bool = False) -> None:
        call, j = divmod(k, self.cfg.siprecs_per_call)
        form = {"Name": name or f"load{j}", "ConnectorName": "Default",
                "Track": "both_tracks", "StatusCallback": cb_url}
        url = f"{base}{API}/Accounts/{self.sid}/Calls/{_call_sid(call)}/Siprec.json"
        t = time.monotonic()
        try:
            async with http.post(url, data=form) as r:
                body = await r.json()
                if r.status != 201:
                    self.create_errors.append(f"{r.status} {body.get('message')}")
                    return
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.create_errors.append(repr(exc))
            return
        (self.churn_201 if churn else self.created_201).append(time.monotonic() - t)
        sid = body["sid"]
        self.create_at[sid] = t
        self.sids.append(sid)
        self.active.append(sid)
        self._sid_call[sid] = _call_sid(call)
        self._sid_index[sid] = k
        if churn:
            self.churn_sids.add(sid)

    async def _stop_siprec(self, http: aiohttp.ClientSession, base: str, sid: str) -> None:
        url = f"{base}{API}/Accounts/{self.sid}/Calls/{self._sid_call[sid]}/Siprec/{sid}.json"
        try:
            async with http.post(url, data={"Status": "stopped"}) as r:
                if r.status != 200:
                    self.stop_errors.append(f"{r.status} {await r.text()}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.stop_errors.append(repr(exc))

    async def _end_calls(self, http: aiohttp.ClientSession, base: str,
                         ingress: list[Any]) -> None:
        sem = asyncio.Semaphore(32)

        async def end(i: int) -> None:
            async with sem, http.delete(f"{base}/v1/Calls/{_call_sid(i)}") as r:
                if r.status != 204:
                    self.stop_errors.append(f"DELETE call {i}: {r.status}")

        await asyncio.gather(*(end(i) for i in range(len(ingress))), return_exceptions=True)

    async def _metrics(self, http: aiohttp.ClientSession, base: str) -> dict[str, float]:
        async with http.get(f"{base}/metrics") as r:
            return parse_metrics(await r.text())

    async def _settled_metrics(self, http: aiohttp.ClientSession,
                               base: str) -> dict[str, float]:
        """Counters once the worker has nothing left in flight (two equal readings)."""
        last: dict[str, float] = {}
        for _ in range(50):
            m = await self._metrics(http, base)
            keys = ("mediafork_packets_received_total", "mediafork_packets_sent_total")
            if last and all(m.get(k) == last.get(k) for k in keys):
                return m
            last = m
            await asyncio.sleep(0.3)
        return last

    async def _wait(self, predicate: Callable[[], bool], deadline: float) -> bool:
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.1)
        return True

    @staticmethod
    def _our_cpu(*children: Child) -> float:
        total = 0.0
        for child in children:
            with contextlib.suppress(OSError):
                total += _cpu_seconds(child.pid)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return total + usage.ru_utime + usage.ru_stime

    async def _sample(self, pid: int) -> None:
        while True:
            with contextlib.suppress(OSError):
                self.samples.t.append(time.monotonic())
                self.samples.rss_kb.append(_rss_kb(pid))
                self.samples.cpu_s.append(_cpu_seconds(pid))
            await asyncio.sleep(self.cfg.sample_interval)

    # -- report -----------------------------------------------------------------------------
    def _report(self, *, receiver: CallbackReceiver, gen: dict[str, Any],
                final: dict[str, float], metrics0: dict[str, float],
                window: tuple[Any, ...], t_steady: float, ramp_seconds: float,
                all_started: bool, all_stopped: bool, recorder: dict[str, Any],
                daemon_rc: int, rss_registered: int, rss_end: int,
                cpu0: float) -> dict[str, Any]:
        cfg = self.cfg
        n = cfg.calls * cfg.siprecs_per_call
        m = final
        ma, mb, cpu_s, wall = window[0], window[1], window[2], window[3]
        received = int(m.get("mediafork_packets_received_total", 0))
        forwarded = int(m.get("mediafork_packets_forwarded_total", 0))
        sent = int(m.get("mediafork_packets_sent_total", 0))
        drops = {k.split('"')[1]: int(v) for k, v in m.items()
                 if k.startswith("mediafork_packets_dropped_total")}
        generated = int(gen["sent"])
        # Loss inside mediafork: not read from an ingress socket in time (generated but not
        # received), or a counted drop (ring full, send or SRTP error, oversize).
        loss_inside = ((generated - received) + drops.get("ring_full", 0)
                       + drops.get("send_error", 0) + drops.get("srtp_error", 0)
                       + drops.get("oversize", 0))
        # forwarded - sent: packets still queued in a fork when its Siprec was stopped. The
        # worker detaches a removed fork without flushing or counting them (csrc/engine.c
        # detach_fork), so they are reported apart; at 50 pps a fork holds at most the packet
        # of the worker's last loop. In steady state (the soak window) forwarded == sent
        # up to the packets in flight, see in_flight_growth.
        unsent_at_removal = forwarded - sent
        events_dropped = int(m.get("mediafork_engine_events_dropped_total", 0))

        # Callbacks: exactly one started and one stopped per Siprec, nothing else.
        by_sid: dict[str, list[str]] = {}
        for c in receiver.received:
            by_sid.setdefault(c.sid, []).append(c.event)
        complete = sum(1 for sid in self.sids
                       if by_sid.get(sid) == ["siprec-started", "siprec-stopped"])
        started_at = {c.sid: c.at for c in receiver.received if c.event == "siprec-started"}
        to_started = [started_at[s] - t for s, t in self.create_at.items()
                      if s in started_at and s not in self.churn_sids]
        churn_started = [started_at[s] - self.create_at[s] for s in self.churn_sids
                         if s in started_at]
        unsigned = sum(1 for c in receiver.received if not c.signed)
        other = sum(1 for c in receiver.received
                    if c.event not in ("siprec-started", "siprec-stopped"))
        error_kinds = Counter(c.error for c in receiver.received if c.error)

        # RSS after warm-up, inside the soak window.
        warm = cfg.warmup_seconds
        if warm is None:
            warm = min(60.0, max(5.0, cfg.soak_seconds * 0.1))
        a_t, b_t = window[4], window[5]
        rss = [r for t, r in zip(self.samples.t, self.samples.rss_kb, strict=False)
               if t_steady + warm <= t <= b_t]
        rss_stats: dict[str, Any] = {"samples": len(rss), "warmup_s": warm,
                                     "after_register_kb": rss_registered, "end_kb": rss_end}
        if len(rss) >= 2:
            k = max(1, len(rss) // 10)
            first, last = statistics.mean(rss[:k]), statistics.mean(rss[-k:])
            rss_stats.update({
                "min_kb": min(rss), "max_kb": max(rss), "first_kb": round(first),
                "last_kb": round(last),
                "growth_pct": round(100.0 * (last - first) / first, 2),
                "spread_pct": round(100.0 * (max(rss) - min(rss)) / min(rss), 2),
            })
        window_sent = mb.get("mediafork_packets_sent_total", 0) - ma.get(
            "mediafork_packets_sent_total", 0)
        window_rx = mb.get("mediafork_packets_received_total", 0) - ma.get(
            "mediafork_packets_received_total", 0)
        worker = mb.get("mediafork_worker_cpu_seconds_total", 0) - ma.get(
            "mediafork_worker_cpu_seconds_total", 0)
        del a_t, metrics0, cpu0
        result: dict[str, Any] = {
            "config": {k: v for k, v in asdict(cfg).items() if k != "workdir"},
            "siprecs": n,
            "forked_streams": n * 2,
            "packets": {
                "generated": generated, "generator_send_errors": int(gen["send_errors"]),
                "received": received, "forwarded": forwarded, "sent": sent,
                "sink_received": int(gen["sink_received"]),
                "drops": drops, "loss_inside": loss_inside, "events_dropped": events_dropped,
                "unsent_at_removal": unsent_at_removal,
                "in_flight_growth": int(
                    (mb.get("mediafork_packets_forwarded_total", 0)
                     - mb.get("mediafork_packets_sent_total", 0))
                    - (ma.get("mediafork_packets_forwarded_total", 0)
                       - ma.get("mediafork_packets_sent_total", 0))),
                "generator_late_ticks": int(gen["late_ticks"]),
            },
            "rates": {
                "in_pps": round(window_rx / wall) if wall > 0 else 0,
                "out_pps": round(window_sent / wall) if wall > 0 else 0,
                "daemon_cpu_pct": round(100 * cpu_s / wall, 1) if wall > 0 else 0,
                "worker_cpu_pct": round(100 * worker / wall, 1) if wall > 0 else 0,
                "worker_us_per_out_pkt": round(worker * 1e6 / window_sent, 3)
                if window_sent else None,
                "generator_cpu_pct": round(100 * gen["cpu_seconds"] / gen["wall_seconds"], 1),
                "soak_seconds": round(wall, 1),
                "others_cpu_pct": self.others_cpu_pct,
                "loadavg_at_soak_end": [round(x, 2) for x in self.loadavg],
            },
            "callbacks": {
                "started": receiver.count("siprec-started"),
                "stopped": receiver.count("siprec-stopped"),
                "other": other, "complete": complete, "unsigned": unsigned,
                "errors": dict(error_kinds.most_common(5)),
                "all_started_in_budget": all_started, "all_stopped_in_budget": all_stopped,
            },
            "latency_ms": {
                "create_201_p50": _ms(percentile(self.created_201, 50)),
                "create_201_p99": _ms(percentile(self.created_201, 99)),
                "create_201_max": _ms(max(self.created_201, default=None)),
                "create_to_started_p50": _ms(percentile(to_started, 50)),
                "create_to_started_p99": _ms(percentile(to_started, 99)),
                "create_to_started_max": _ms(max(to_started, default=None)),
                "churn_replacements": len(self.churn_sids),
                "churn_create_201_p50": _ms(percentile(self.churn_201, 50)),
                "churn_create_201_p99": _ms(percentile(self.churn_201, 99)),
                "churn_create_to_started_p50": _ms(percentile(churn_started, 50)),
                "churn_create_to_started_p99": _ms(percentile(churn_started, 99)),
                "churn_create_to_started_max": _ms(max(churn_started, default=None)),
            },
            "ramp_seconds": round(ramp_seconds, 1),
            "rss": rss_stats,
            "errors": {"create": self.create_errors[:5], "create_count": len(self.create_errors),
                       "stop": self.stop_errors[:5], "stop_count": len(self.stop_errors)},
            "recorder": recorder,
            "daemon_exit": daemon_rc,
        }
        result["checks"] = checks(result)
        result["loss_free"] = result["checks"]["zero_loss_inside"] and \
            result["checks"]["sink_got_everything"]
        result["passed"] = all(result["checks"].values())
        return result


def checks(r: dict[str, Any], rss_limit_pct: float = 5.0) -> dict[str, bool]:
    p, cb, n = r["packets"], r["callbacks"], r["siprecs"]
    rss = r["rss"]
    return {
        "zero_loss_inside": p["generated"] > 0 and p["loss_inside"] == 0
        and p["generator_send_errors"] == 0 and p["events_dropped"] == 0
        and 0 <= p["unsent_at_removal"] <= r["forked_streams"]
        + 2 * r["latency_ms"].get("churn_replacements", 0),
        "sink_got_everything": p["sink_received"] == p["sent"],
        "every_callback": cb["complete"] == n + r["latency_ms"].get("churn_replacements", 0)
        and cb["other"] == 0 and cb["unsigned"] == 0
        and r["errors"]["create_count"] == 0 and r["errors"]["stop_count"] == 0,
        "rss_flat": "spread_pct" in rss and abs(rss["growth_pct"]) <= rss_limit_pct
        and rss["spread_pct"] <= rss_limit_pct,
        "clean_exit": r["daemon_exit"] == 0,
    }


def _drops(m: dict[str, float]) -> float:
    return sum(v for k, v in m.items() if k.startswith("mediafork_packets_dropped_total")
               and "rtcp_on_media_port" not in k)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 1)


def _call_sid(i: int) -> str:
    return f"CA{i:032x}"


async def run_load(cfg: LoadConfig, say: Say = print) -> dict[str, Any]:
    """One bounded run (processes started and stopped inside)."""
    run = LoadRun(cfg, say)
    return await run.run()


# -- table and results file ---------------------------------------------------------------

def table(results: list[dict[str, Any]]) -> str:
    head = (f"{'calls':>5} {'forks':>5} {'in pps':>7} {'out pps':>7} {'generated':>10} "
            f"{'lost in':>7} {'sink':>10} {'cb ok':>9} {'201 p99':>8} {'start p99':>9} "
            f"{'rss MiB':>8} {'rss Δ%':>7} {'daemon%':>7} {'worker%':>7} {'others%':>7}  result")
    lines = [head, "-" * len(head)]
    for r in results:
        p, lat, rss, rates = r["packets"], r["latency_ms"], r["rss"], r["rates"]
        bad = [k for k, v in r["checks"].items() if not v]
        lines.append(
            f"{r['config']['calls']:>5} {r['forked_streams']:>5} {rates['in_pps']:>7} "
            f"{rates['out_pps']:>7} {p['generated']:>10} {p['loss_inside']:>7} "
            f"{p['sink_received']:>10} {r['callbacks']['complete']:>4}/"
            f"{r['siprecs'] + r['latency_ms'].get('churn_replacements', 0):<4} "
            f"{_fmt(lat['create_201_p99']):>8} {_fmt(lat['create_to_started_p99']):>9} "
            f"{_fmt(rss.get('max_kb', 0) / 1024):>8} {_fmt(rss.get('spread_pct')):>7} "
            f"{rates['daemon_cpu_pct']:>7} {rates['worker_cpu_pct']:>7} "
            f"{rates['others_cpu_pct']:>7}  "
            + ("ok" if not bad else "FAIL: " + ", ".join(bad)))
    return "\n".join(lines)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def write_results(path: Path, section: str, payload: Any) -> None:
    """Merge one section (``soak`` or ``step``) into the results file."""
    data: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
    data[section] = payload
    data["host"] = {"cpus": os.cpu_count(), "uname": " ".join(os.uname()),
                    "loadavg_at_write": os.getloadavg()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


async def main_async(args: argparse.Namespace) -> int:
    def say(text: str) -> None:
        print(text, flush=True)

    base = LoadConfig(calls=args.calls, siprecs_per_call=args.siprecs_per_call,
                      soak_seconds=args.minutes * 60.0, create_rate=args.create_rate,
                      sip_transport=args.sip_transport,
                      io=args.io,
                      setup_before_media=args.setup_before_media, churn_rate=args.churn_rate)
    out = Path(args.out)
    if args.step:
        results = []
        best = None
        calls = args.step_start
        while calls <= args.calls:
            cfg = LoadConfig(**{**asdict(base), "calls": calls, "soak_seconds": args.step_seconds})
            say(f"step: {calls} calls x {cfg.siprecs_per_call} Siprecs, {args.step_seconds:.0f}s "
                f"soak (load average {os.getloadavg()[0]:.2f})")
            r = await run_load(cfg, say)
            results.append(r)
            say(table([r]))
            if not r["loss_free"] and args.step_retries:
                # A shared machine can spoil one step: measure it once more before
                # concluding (both runs are kept in the results).
                say(f"  repeating ({r['rates']['others_cpu_pct']}% CPU used by others)")
                r = await run_load(cfg, say)
                results.append(r)
                say(table([r]))
            if not r["loss_free"]:
                break
            best = calls
            calls += args.step_size
        say("\n" + table(results))
        say(f"largest loss-free load: {best} calls ({(best or 0) * cfg.siprecs_per_call * 2} "
            f"SRTP forks)")
        write_results(out, "step", {"largest_loss_free_calls": best, "runs": results})
        return 0
    say(f"soak: {base.calls} calls x {base.siprecs_per_call} Siprecs for {args.minutes:g} min "
        f"(load average {os.getloadavg()[0]:.2f})")
    r = await run_load(base, say)
    say("\n" + table([r]))
    say(json.dumps({"checks": r["checks"], "latency_ms": r["latency_ms"], "rss": r["rss"]},
                   indent=1))
    write_results(out, "soak", r)
    return 0 if r["passed"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/load", description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--siprecs-per-call", type=int, default=2, choices=(1, 2))
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--step", action="store_true",
                        help="step the calls up from --step-start by --step-size until loss")
    parser.add_argument("--step-start", type=int, default=100)
    parser.add_argument("--step-size", type=int, default=100)
    parser.add_argument("--step-seconds", type=float, default=60.0)
    parser.add_argument("--step-retries", type=int, default=1, choices=(0, 1))
    parser.add_argument("--create-rate", type=float, default=20.0,
                        help="Siprec creates per second (open loop)")
    parser.add_argument("--sip-transport", choices=("tls", "tcp", "udp"), default="tls")
    parser.add_argument("--io", choices=("auto", "io_uring", "epoll"), default=None,
                        help="the daemon's [media] io (default: its own default, auto)")
    parser.add_argument("--setup-before-media", action="store_true",
                        help="start every Siprec before the media (data-plane capacity apart "
                        "from the session setup rate under load)")
    parser.add_argument("--churn-rate", type=float, default=0.0,
                        help="Siprecs replaced per second during the soak")
    parser.add_argument("--out", default=str(ROOT / "benches/results/load.json"))
    args = parser.parse_args(argv)
    raise_nofile()
    try:
        import uvloop

        return uvloop.run(main_async(args))
    except ImportError:  # pragma: no cover
        return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
