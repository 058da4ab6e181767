"""Real processes and sockets for the daemon tests.

* :class:`DaemonProcess`: ``python -m mediafork.cli serve ...`` as a child process, stdout and
  stderr captured to files (a pipe nobody reads could block the daemon's logging);
* :class:`Recorder`: a :class:`~mediafork.srs.ReferenceRecorder` on its own event loop thread,
  so the (synchronous) tests can talk HTTP to the daemon while the recorder answers SIP;
* :class:`CallbackSink`: a local HTTP endpoint collecting status callbacks, optionally slow;
* :func:`write_config`: a TOML config on free ports;
* :func:`send_tones`: RTP to a call's ingress ports, as a media server would mirror it.

Everything binds 127.0.0.1 and every wait is bounded, so a hang fails a test instead of
stalling the suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from fdcheck import ONE_SHOT_HEADERS

from mediafork.srs import ReferenceRecorder
from mediafork.synth import tone_packets

ACCOUNT = "AC" + "d4" * 16
TOKEN = "daemon-test-token-" + "7q" * 8
CONNECTOR_SECRET = "connector-credential-" + "k3" * 8
WRONG_TOKEN = "not-the-token-" + "w8" * 8
TREE = Path(__file__).resolve().parents[2]  # the checkout: the child imports mediafork from it
API = "/2010-04-01"


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.05) -> Any:
    """Poll until *predicate* is truthy; fail the test with *what* on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def free_tcp_port() -> int:
    """A loopback port p that is free for TCP and UDP with p + 1 free for TCP too: a SIP
    port, whose TLS listener takes the next one. The kernel hands out p from the ephemeral
    range, where p + 1 may be some client's connection; a port whose neighbour is taken is
    skipped (it failed a daemon's start once: "TLS port ...: Address already in use")."""
    for _ in range(100):
        with contextlib.ExitStack() as held:
            first = held.enter_context(socket.socket())
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            try:
                held.enter_context(socket.socket()).bind(("127.0.0.1", port + 1))
                held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)).bind(
                    ("127.0.0.1", port))
            except (OSError, OverflowError):  # taken, or p was 65535
                continue
            return port
    raise RuntimeError("no loopback port with a free neighbour in 100 tries")


def media_port_range() -> tuple[int, int]:
    # A random block of 100: parallel test processes rarely share one, and the engine
    # skips ports that are taken anyway.
    first = 50000 + secrets.randbelow(90) * 100
    return first, first + 99


def write_config(directory: Path, *, connectors: Iterable[Mapping[str, Any]] = (),
                 extra: str = "", name: str = "mediafork.toml") -> Path:
    """A config on free ports (API port 0: the daemon announces the one it got)."""
    first, last = media_port_range()
    lines = [
        '[api]\nlisten = "127.0.0.1:0"',
        '[storage]\npath = "data/mediafork.db"',
        # Two media workers: the daemon suite runs the sharded engine end to end (the API
        # and fault suites run the default single worker).
        f'[media]\naddress = "127.0.0.1"\nport_range = [{first}, {last}]\nworkers = 2',
        "[sip]\nport = 0",
        "[callbacks]\ntimeout = 5.0\nmax_attempts = 2",
        f'[[accounts]]\nsid = "{ACCOUNT}"\nauth_token = "{TOKEN}"',
    ]
    for connector in connectors:
        body = "\n".join(f"{k} = {_toml(v)}" for k, v in
                         {"account_sid": ACCOUNT, **connector}.items())
        lines.append(f"[[connectors]]\n{body}")
    path = directory / name
    path.write_text("\n\n".join(lines) + "\n" + extra)
    return path


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


# -- the daemon as a child process ------------------------------------------------------------


class DaemonProcess:
    """``mediafork serve`` in a child process; ``start()`` returns once it announced itself."""

    READY = re.compile(r"mediafork ready on (http://\S+)")

    def __init__(self, workdir: Path, args: list[str], env: Mapping[str, str] | None = None
                 ) -> None:
        self.workdir = workdir
        self.args = args
        self.env = {**os.environ, "PYTHONPATH": str(TREE), **(env or {})}
        self.stdout_path = workdir / f"daemon-{secrets.token_hex(3)}.out"
        self.stderr_path = self.stdout_path.with_suffix(".err")
        self.proc: subprocess.Popen[bytes] | None = None
        self.base_url = ""

    def spawn(self) -> subprocess.Popen[bytes]:
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mediafork.cli", "serve", *self.args],
                cwd=self.workdir, stdout=out, stderr=err, env=self.env,
            )
        return self.proc

    def start(self, timeout: float = 15.0) -> DaemonProcess:
        proc = self.spawn()

        def announced() -> str | None:
            if proc.poll() is not None:
                raise AssertionError(f"daemon exited with {proc.returncode}: {self.stderr}")
            match = self.READY.search(self.stdout)
            return match.group(1) if match else None

        self.base_url = wait_until(announced, timeout, "the daemon to announce itself")
        return self

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send *sig* and wait; returns the exit code (kills and fails on a hang)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"daemon did not exit within {timeout}s of signal {sig}"
                                 ) from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    # -- HTTP helpers -------------------------------------------------------------------------

    def get(self, path: str, auth: tuple[str, str] | None = (ACCOUNT, TOKEN)
            ) -> requests.Response:
        return requests.get(self.base_url + path, auth=auth, timeout=5, headers=ONE_SHOT_HEADERS)

    def post_json(self, path: str, body: Mapping[str, Any]) -> requests.Response:
        return requests.post(self.base_url + path, json=body, auth=(ACCOUNT, TOKEN), timeout=5,
                             headers=ONE_SHOT_HEADERS)

    def post_form(self, path: str, form: Mapping[str, str],
                  auth: tuple[str, str] = (ACCOUNT, TOKEN)) -> requests.Response:
        return requests.post(self.base_url + path, data=form, auth=auth, timeout=10,
                             headers=ONE_SHOT_HEADERS)

    def register_call(self, call_sid: str) -> dict[str, tuple[str, int]]:
        """``POST /v1/Calls``; returns the ingress address of each track."""
        answer = self.post_json("/v1/Calls", {
            "call_sid": call_sid, "account_sid": ACCOUNT,
            "from": f"sip:+1555{call_sid[-7:]}@pbx.example", "to": "sip:+15550001111@pbx.example",
            "codec": {"name": "PCMU", "payload_type": 0, "clock_rate": 8000},
            "dtmf_payload_type": 101,
        })
        assert answer.status_code == 201, answer.text
        return {track: (a["address"], a["port"]) for track, a in answer.json()["ingress"].items()}

    def start_siprec(self, call_sid: str, name: str, callback: str,
                     connector: str = "Default") -> requests.Response:
        """The Twilio-compatible create: form-encoded, Basic auth."""
        return self.post_form(f"{API}/Accounts/{ACCOUNT}/Calls/{call_sid}/Siprec.json", {
            "Name": name, "ConnectorName": connector, "Track": "both_tracks",
            "StatusCallback": callback,
        })

    def metrics(self) -> str:
        response = requests.get(self.base_url + "/metrics", timeout=5, headers=ONE_SHOT_HEADERS)
        assert response.status_code == 200
        return response.text


def call_sid(n: int) -> str:
    return "CA" + f"{n:02x}" * 16


def send_tones(ingress: Mapping[str, tuple[str, int]], packets: int = 100, ssrc: int = 0x1000,
               sock: socket.socket | None = None) -> int:
    """Send *packets* PCMU packets per track (paced lightly: ~2 ms apart); returns the count.

    Each call sends from a new socket unless *sock* is given: a media server keeps its port,
    and the daemon latches each track onto the first sender (``[media] relatch_after``)."""
    sent = 0
    streams = [(list(tone_packets(440.0 + 100 * i, packets * 0.02, ssrc=ssrc + i)), address)
               for i, address in enumerate(ingress.values())]
    with contextlib.ExitStack() as stack:
        if sock is None:
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        for n in range(packets):
            for stream, address in streams:
                if n < len(stream):
                    sock.sendto(stream[n], address)
                    sent += 1
            time.sleep(0.002)
    return sent


def is_listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# -- the reference recorder on its own loop ---------------------------------------------------


class LoopThread:
    """An asyncio loop on a daemon thread; ``run(coro)`` executes a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 15.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class Recorder:
    """A ReferenceRecorder (UDP) reachable from a child-process daemon."""

    def __init__(self, out_dir: Path, **options: Any) -> None:
        self._loop = LoopThread()

        async def start() -> ReferenceRecorder:  # built on its own loop, not this thread's
            recorder = ReferenceRecorder(port=0, out_dir=out_dir, rtcp_interval=0.5, **options)
            return await recorder.start()

        self.recorder: ReferenceRecorder = self._loop.run(start())

    @property
    def uri(self) -> str:
        return self.recorder.uri("udp")

    def summaries(self) -> list[dict[str, Any]]:
        async def read() -> list[dict[str, Any]]:  # on the recorder's loop: no races
            return [s.summary() for s in self.recorder.sessions]

        return self._loop.run(read())

    def close(self) -> None:
        try:
            self._loop.run(self.recorder.stop())
        finally:
            self._loop.close()


# -- status callbacks -------------------------------------------------------------------------


@dataclass
class CallbackSink:
    """Collects form-encoded status callbacks; ``delay`` slows every answer (a slow app)."""

    delay: float = 0.0
    received: list[dict[str, str]] = field(default_factory=list)
    _closing: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's naming
                length = int(self.headers.get("Content-Length", 0))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                sink.received.append(form)
                if sink._closing.wait(sink.delay):
                    return  # closing: drop the answer, release the connection now
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # Not daemon threads: close() joins them, so no handler (a slow answer, the
        # daemon's connection) outlives the sink.
        self.server.daemon_threads = False
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/status"

    def events(self, siprec_sid: str) -> list[str]:
        return [c.get("SiprecEvent", "?") for c in list(self.received)
                if c.get("SiprecSid") == siprec_sid]

    def close(self) -> None:
        self._closing.set()  # wakes handlers waiting out a delay
        self.server.shutdown()
        self.server.server_close()
