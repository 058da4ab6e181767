"""Every listener is bounded (issue 10, item 2).

The real daemon runs as a child process with ``ulimit -n 256``; idle and half-open
connections flood the HTTP API, the SIP TCP listener and the control socket from several
loopback addresses, well beyond the descriptor limit. Meanwhile another address must still
get ``/healthz``, register a call and start a Siprec; afterwards the metrics show what was
shed and the log has one line per listener, not hundreds. Then the timers: a half request
head, an idle keep-alive connection, an idle or garbage-only SIP connection, a silent control
socket connection and a half TLS ClientHello are all closed within their (short, configured)
timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
import uvloop
from daemon.harness import (
    ACCOUNT,
    TOKEN,
    CallbackSink,
    DaemonProcess,
    Recorder,
    call_sid,
    free_tcp_port,
    media_port_range,
    wait_until,
)

from mediafork.admission import Admission, listener_caps
from mediafork.sip.message import parse_message
from mediafork.sip.session import Destination
from mediafork.sip.transport import SipTransport
from mediafork.tlsutil import self_signed

FD_LIMIT = 256
FLOODERS = [f"127.0.0.{n}" for n in range(2, 6)]  # 4 addresses; the test's own is 127.0.0.1
API_FLOOD, SIP_FLOOD, CONTROL_FLOOD = 60, 40, 40  # connections per address (control: in all)
OPTIONS = (
    b"OPTIONS sip:mediafork@127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK-listener-test\r\n"
    b"From: <sip:probe@127.0.0.1>;tag=probe\r\nTo: <sip:mediafork@127.0.0.1>\r\n"
    b"Call-ID: listener-limits-probe\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
    b"Content-Length: 0\r\n\r\n"
)


class LimitedDaemon(DaemonProcess):
    """``mediafork serve`` with a low descriptor limit (``ulimit -n``) in the child only."""

    def __init__(self, workdir: Path, args: list[str], fd_limit: int | None) -> None:
        super().__init__(workdir, args)
        self.fd_limit = fd_limit

    def spawn(self) -> subprocess.Popen[bytes]:
        limit = self.fd_limit

        def lower_limit() -> None:
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mediafork.cli", "serve", *self.args],
                cwd=self.workdir, stdout=out, stderr=err, env=self.env,
                preexec_fn=lower_limit,
            )
        return self.proc

    def open_descriptors(self) -> int:
        assert self.proc is not None
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))


def write_config(directory: Path, sip_port: int, recorder_uri: str, extra: dict[str, str]
                 ) -> Path:
    """A config on free ports; ``extra`` adds lines to the [api], [sip], [control_socket]
    tables (the flood test adds none: it runs on the defaults)."""
    first, last = media_port_range()
    tables = {
        "api": ['listen = "127.0.0.1:0"'],
        "storage": ['path = "data/mediafork.db"'],
        "media": ['address = "127.0.0.1"', f"port_range = [{first}, {last}]"],
        "sip": [f"port = {sip_port}"],
        "control_socket": ['path = "run/mediafork.sock"'],
    }
    for table, lines in extra.items():
        tables[table].append(lines)
    text = "\n\n".join(f"[{name}]\n" + "\n".join(lines) for name, lines in tables.items())
    text += (f'\n\n[[accounts]]\nsid = "{ACCOUNT}"\nauth_token = "{TOKEN}"\n\n'
             f'[[connectors]]\naccount_sid = "{ACCOUNT}"\nunique_name = "Default"\n'
             f'srs = "{recorder_uri}"\n')
    path = directory / "mediafork.toml"
    path.write_text(text)
    return path


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[Recorder]:
    rec = Recorder(tmp_path / "srs")
    yield rec
    rec.close()


@pytest.fixture
def sink() -> Iterator[CallbackSink]:
    s = CallbackSink()
    yield s
    s.close()


@pytest.fixture
def start_daemon(tmp_path: Path, recorder: Recorder
                 ) -> Iterator[Callable[..., LimitedDaemon]]:
    made: list[LimitedDaemon] = []

    def start(extra: dict[str, str] | None = None, fd_limit: int | None = FD_LIMIT
              ) -> LimitedDaemon:
        sip_port = free_tcp_port()
        config = write_config(tmp_path, sip_port, recorder.uri, extra or {})
        daemon = LimitedDaemon(tmp_path, ["--config", str(config)], fd_limit)
        made.append(daemon)
        daemon.start()
        daemon.sip_port = sip_port  # type: ignore[attr-defined]
        daemon.control_path = tmp_path / "run" / "mediafork.sock"  # type: ignore[attr-defined]
        return daemon

    yield start
    for daemon in made:
        daemon.kill()


# -- clients ----------------------------------------------------------------------------------


def tcp_client(port: int, source: str, payload: bytes = b"") -> socket.socket:
    sock = socket.socket()
    sock.settimeout(2)
    sock.bind((source, 0))
    try:
        sock.connect(("127.0.0.1", port))
        if payload:
            sock.sendall(payload)
    except (ConnectionResetError, BrokenPipeError):
        # Over a cap the listener resets at once; on a busy machine the reset can reach
        # the socket before connect() or sendall() returns. The daemon counts it either way.
        pass
    return sock


def unix_client(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(2)
    sock.connect(str(path))
    return sock


def seconds_until_closed(sock: socket.socket, limit: float) -> float:
    """How long until the peer closes ``sock`` (EOF or reset); fails after ``limit``."""
    start = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"not closed within {limit} s") from None
    return time.monotonic() - start


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}{{{want}}}")


def healthz_latencies(base_url: str, count: int = 50) -> list[float]:
    latencies = []
    for _ in range(count):
        start = time.perf_counter()
        assert requests.get(base_url + "/healthz", timeout=5).status_code == 200
        latencies.append(time.perf_counter() - start)
    return latencies


def describe(latencies: list[float]) -> str:
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"p50 {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, max {ms[-1]:.1f} ms"


# -- the flood --------------------------------------------------------------------------------


def test_a_flood_of_idle_connections_is_shed_and_the_daemon_keeps_serving(
        start_daemon: Callable[..., LimitedDaemon], recorder: Recorder,
        sink: CallbackSink) -> None:
    daemon = start_daemon()
    quiet = healthz_latencies(daemon.base_url)
    baseline = daemon.open_descriptors()
    api_port = int(daemon.base_url.rsplit(":", 1)[1])
    api_cap, api_peer_cap = listener_caps("api", FD_LIMIT)
    sip_cap, sip_peer_cap = listener_caps("sip", FD_LIMIT)
    control_cap = listener_caps("control_socket", FD_LIMIT)[0]

    flood: list[socket.socket] = []
    try:
        # 4 addresses x (60 API + 40 SIP) and 40 control socket connections: 440 in all,
        # with a limit of 256 descriptors. Half of the API ones send half a request head,
        # half of the SIP ones garbage that never ends a message.
        for source in FLOODERS:
            for n in range(API_FLOOD):
                flood.append(tcp_client(api_port, source,
                                        b"GET /healthz HTTP/1.1\r\nHost: x\r\n" if n % 2 else b""))
            for n in range(SIP_FLOOD):
                flood.append(tcp_client(daemon.sip_port, source,
                                        b"OPTIONS sip:x SIP/2.0\r\nVia: " if n % 2 else b""))
        for _ in range(CONTROL_FLOOD):
            flood.append(unix_client(daemon.control_path))

        api_refused = len(FLOODERS) * (API_FLOOD - api_peer_cap)
        sip_refused = len(FLOODERS) * (SIP_FLOOD - sip_peer_cap)
        wait_until(lambda: "listener_rejected" in (text := daemon.metrics()) and metric(
            text, "mediafork_listener_rejected_total", listener="control_socket",
            reason="total_cap") >= CONTROL_FLOOD - control_cap, 10, "the flood to be shed")

        # The daemon holds what the caps allow and no more.
        text = daemon.metrics()
        assert metric(text, "mediafork_listener_rejected_total", listener="api",
                      reason="peer_cap") == api_refused
        assert metric(text, "mediafork_listener_rejected_total", listener="sip",
                      reason="peer_cap") == sip_refused
        assert len(FLOODERS) * api_peer_cap < api_cap  # room left for the test's own client
        assert metric(text, "mediafork_listener_connections", listener="api") == (
            len(FLOODERS) * api_peer_cap + 1)  # + the scrape's own connection
        assert metric(text, "mediafork_listener_connections", listener="sip") == (
            len(FLOODERS) * sip_peer_cap)
        assert metric(text, "mediafork_listener_connections", listener="control_socket") == (
            control_cap)
        assert daemon.open_descriptors() < FD_LIMIT - 32

        # Another client is served: health, a call, a Siprec that reaches the recorder.
        busy = healthz_latencies(daemon.base_url)
        sid = call_sid(7)
        daemon.register_call(sid)
        created = daemon.start_siprec(sid, "during-flood", sink.url)
        assert created.status_code == 201, created.text
        siprec = created.json()["sid"]
        wait_until(lambda: "siprec-started" in sink.events(siprec), 10, "siprec-started")
        assert recorder.summaries(), "the recorder has no session"
        print(f"\n/healthz without flood: {describe(quiet)}; during the flood "
              f"({len(flood)} connections): {describe(busy)}")
        assert max(busy) < 1.0  # generous: a shed flood costs the API next to nothing
    finally:
        for sock in flood:
            sock.close()

    # Everything the flood held is given back (no GC involved: the daemon closed them).
    wait_until(lambda: daemon.open_descriptors() <= baseline + 8, 10,
               "the daemon's descriptors to return to their baseline")
    log = daemon.stderr
    for listener in ("api", "sip", "control_socket"):
        assert log.count(f"listener {listener} is shedding connections") == 1, log[-3000:]
    assert "Too many open files" not in log
    assert daemon.stop() == 0


# -- the timers -------------------------------------------------------------------------------


def test_slow_and_silent_connections_are_closed_on_their_timers(
        start_daemon: Callable[..., LimitedDaemon]) -> None:
    daemon = start_daemon({
        "api": "header_timeout = 1.0\nidle_timeout = 1.5",
        "sip": "idle_timeout = 1.0",
        "control_socket": "idle_timeout = 1.0",
    }, fd_limit=None)
    api_port = int(daemon.base_url.rsplit(":", 1)[1])
    margin = 3.0  # seconds beyond each timeout before the test calls it a failure

    # HTTP: half a request head; nothing at all; a keep-alive connection after a request.
    half = tcp_client(api_port, "127.0.0.2", b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    assert seconds_until_closed(half, 1.0 + margin) >= 0.8
    silent = tcp_client(api_port, "127.0.0.2")
    assert seconds_until_closed(silent, 1.0 + margin) >= 0.8
    # A body announced and never sent in full: the same bound.
    slow_body = tcp_client(api_port, "127.0.0.2", b"POST /v1/Calls HTTP/1.1\r\nHost: x\r\n"
                           b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
    assert seconds_until_closed(slow_body, 1.0 + margin) >= 0.8
    kept = tcp_client(api_port, "127.0.0.2", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert kept.recv(4096).startswith(b"HTTP/1.1 200")
    assert seconds_until_closed(kept, 1.5 + margin) >= 1.2

    # SIP TCP: silent; garbage without an end; a real request answered, then silence.
    for payload in (b"", b"\x16\x03\x01 not SIP and never a message end"):
        sock = tcp_client(daemon.sip_port, "127.0.0.3", payload)
        assert seconds_until_closed(sock, 1.0 + margin) >= 0.8
    sock = tcp_client(daemon.sip_port, "127.0.0.3", OPTIONS)
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(4096)
    assert answer.startswith(b"SIP/2.0 ")
    assert seconds_until_closed(sock, 1.0 + margin) >= 0.8

    # Control socket: connected, never authenticates.
    control = unix_client(daemon.control_path)
    assert seconds_until_closed(control, 1.0 + margin) >= 0.8

    text = daemon.metrics()
    assert metric(text, "mediafork_listener_rejected_total", listener="api",
                  reason="header_timeout") == 3
    assert metric(text, "mediafork_listener_rejected_total", listener="api",
                  reason="idle_timeout") == 1
    assert metric(text, "mediafork_listener_rejected_total", listener="sip",
                  reason="idle_timeout") == 3
    assert metric(text, "mediafork_listener_rejected_total", listener="control_socket",
                  reason="idle_timeout") == 1
    # Closing is routine: no traceback, no error line, no shedding note for timeouts alone
    # (three header timeouts are one note at most).
    log = daemon.stderr
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    assert log.count("is shedding connections") <= 1, log[-3000:]
    assert daemon.stop() == 0


# -- SIP over TLS (the transport's own listener, on real sockets) ------------------------------


def test_sip_tls_listener_bounds_handshakes_and_never_starves_our_own_connections(
        tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "tls", "sip")
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))
    client_context.check_hostname = False

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        received: list[str] = []
        admission = Admission("sip", max_connections=4, max_per_peer=2)
        transport = SipTransport(
            lambda message, *_: received.append(message.call_id),
            tls_server_context=server_context, admission=admission,
            idle_timeout=30.0, tls_handshake_timeout=0.5)
        port = await transport.listen("127.0.0.1", 0)
        tls_port = port + 1
        fds_before = len(os.listdir("/proc/self/fd"))

        async def raw(source: str, payload: bytes = b"") -> tuple[asyncio.StreamReader,
                                                                   asyncio.StreamWriter]:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", tls_port, local_addr=(source, 0))
            writer.write(payload)
            return reader, writer

        async def closed_after(reader: asyncio.StreamReader, limit: float,
                               start: float | None = None) -> float:
            """Seconds from ``start`` (default: now) until the peer closed ``reader``."""
            start = loop.time() if start is None else start
            try:
                while await asyncio.wait_for(reader.read(4096), limit):
                    pass
            except ConnectionResetError:
                pass
            return loop.time() - start

        # Half a ClientHello (a TLS record header announcing 512 bytes, then 5 of them).
        half_hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03"
        opened = loop.time()
        held = [await raw("127.0.0.2", half_hello), await raw("127.0.0.2")]
        third = await raw("127.0.0.2")  # over the per-peer cap: reset at once
        assert await closed_after(third[0], 2.0) < 0.4
        # A real client from another address completes its handshake and is heard.
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", tls_port, local_addr=("127.0.0.3", 0), ssl=client_context,
            server_hostname="sip")
        writer.write(OPTIONS)
        await asyncio.wait_for(_until(lambda: received), 5)
        assert admission.active == 3
        # The handshakes that never finish are closed on their timer.
        for half_reader, _ in held:
            assert 0.4 <= await closed_after(half_reader, 0.5 + 3.0, opened) <= 3.5
        assert admission.rejected["handshake_timeout"] == 2
        assert admission.rejected["peer_cap"] == 1

        # Fill the listener to its total cap: connections we open ourselves still go out.
        filler = [await raw(f"127.0.0.{n}") for n in (4, 5, 6)]
        await asyncio.wait_for(_until(lambda: admission.active == 4), 5)
        over = await raw("127.0.0.7")
        assert await closed_after(over[0], 2.0) < 0.4
        assert admission.rejected["total_cap"] == 1
        other = await asyncio.start_server(_answer_nothing, "127.0.0.1", 0)
        other_port = other.sockets[0].getsockname()[1]
        await transport.send(OPTIONS, Destination("127.0.0.1", other_port, "tcp"), "127.0.0.1")
        assert admission.active == 4  # our own connection took no listener slot

        for _, w in [*held, third, *filler, over, (reader, writer)]:
            w.close()
        other.close()
        await transport.close()
        await asyncio.wait_for(_until(lambda: admission.active == 0), 5)
        # Every descriptor is back, released by the transport, not by the collector.
        await asyncio.wait_for(
            _until(lambda: len(os.listdir("/proc/self/fd")) <= fds_before), 5)
        assert parse_message(OPTIONS).call_id in received

    uvloop.run(asyncio.wait_for(scenario(), 30))


async def _until(predicate: Callable[[], object]) -> None:
    while not predicate():
        await asyncio.sleep(0.02)


async def _answer_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(65536)
    writer.close()


# -- the reference recorder's listener (it runs inside the daemon with the embedded defaults) --


def test_reference_recorder_listener_refuses_over_its_caps(tmp_path: Path) -> None:
    from mediafork.srs.server import ReferenceRecorder

    async def scenario() -> None:
        recorder = ReferenceRecorder(port=0, tcp=True, out_dir=tmp_path / "srs")
        recorder.admission = Admission("srs", max_connections=3, max_per_peer=2)
        await recorder.start()
        assert recorder.tcp_address is not None
        host, port = recorder.tcp_address
        loop = asyncio.get_running_loop()
        try:
            held = [await asyncio.open_connection(host, port, local_addr=("127.0.0.2", 0))
                    for _ in range(3)]
            other = await asyncio.open_connection(host, port, local_addr=("127.0.0.3", 0))
            full = await asyncio.open_connection(host, port, local_addr=("127.0.0.4", 0))
            # The third from one address and the one over the total are reset at once.
            for reader, _ in (held[2], full):
                start = loop.time()
                with contextlib.suppress(ConnectionResetError):
                    assert await asyncio.wait_for(reader.read(100), 2.0) == b""
                assert loop.time() - start < 1.0
            assert recorder.admission.rejected["peer_cap"] == 1
            assert recorder.admission.rejected["total_cap"] == 1
            assert recorder.admission.active == 3
            for _, writer in [*held, other, full]:
                writer.close()
            await asyncio.wait_for(_until(lambda: recorder.admission.active == 0), 5)
        finally:
            await recorder.stop()

    uvloop.run(asyncio.wait_for(scenario(), 20))


# -- the bookkeeping itself (sans-I/O) --------------------------------------------------------


def test_admission_counts_caps_and_writes_one_note_per_interval(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    admission = Admission("api", max_connections=3, max_per_peer=2, log_interval=60.0,
                          clock=lambda: now[0])
    with caplog.at_level("WARNING", logger="mediafork.admission"):
        assert admission.admit("a") is None and admission.admit("a") is None
        assert admission.admit("a") == "peer_cap"
        assert admission.admit("b") is None
        assert admission.admit("c") == "total_cap"
        for _ in range(100):
            admission.admit("d")
        admission.closed("idle_timeout")
        assert len(caplog.records) == 1  # the first rejection; the rest wait for the next
        admission.release("a")
        assert admission.admit("c") is None  # a slot came back
        now[0] += 61.0
        admission.closed("header_timeout")
    assert len(caplog.records) == 2
    assert "total_cap 101, header_timeout 1, idle_timeout 1" in caplog.records[1].getMessage()
    assert admission.rejected == {"total_cap": 101, "peer_cap": 1, "header_timeout": 1,
                                  "idle_timeout": 1, "handshake_timeout": 0}
    admission.release("nobody")  # never admitted: nothing to give back
    assert admission.active == 3


def test_default_caps_keep_half_the_descriptors_in_reserve() -> None:
    for limit in (256, 1024, 65536):
        caps = {name: listener_caps(name, limit) for name in ("api", "sip", "srs",
                                                              "control_socket")}
        assert sum(total for total, _ in caps.values()) <= limit - max(128, limit // 2)
        assert all(2 <= peer < total for total, peer in caps.values())
    assert listener_caps("api", 65536) == (13107, 3276)


@pytest.mark.parametrize(("table", "key", "value", "message"), [
    ("api", "header_timeout", 0, "api.header_timeout: must be between 0.1 and 60 seconds"),
    ("api", "idle_timeout", "60", "api.idle_timeout: must be a number"),
    ("api", "max_connections", 0, "api.max_connections: must be between 1 and 1000000"),
    ("api", "max_connections_per_client", True,
     "api.max_connections_per_client: must be an integer"),
    ("sip", "tls_handshake_timeout", 61, "sip.tls_handshake_timeout: must be between"),
    ("sip", "idle_timeout", 120, "sip.idle_timeout: must be between 0.1 and 60 seconds"),
    ("sip", "max_connections_per_peer", -1, "sip.max_connections_per_peer: must be between"),
    ("control_socket", "idle_timeout", 0, "control_socket.idle_timeout: must be between"),
])
def test_bad_listener_limits_are_refused_by_name(table: str, key: str, value: object,
                                                  message: str) -> None:
    from mediafork.daemon.config import ConfigError, parse_config

    root: dict[str, dict[str, object]] = {table: {key: value}}
    if table == "control_socket":
        root[table]["path"] = "run/mediafork.sock"
    with pytest.raises(ConfigError) as raised:
        parse_config(root)
    assert str(raised.value).startswith(message)


def test_listener_limits_are_read_from_the_config() -> None:
    from mediafork.daemon.config import parse_config

    config = parse_config({
        "api": {"max_connections": 100, "max_connections_per_client": 10,
                "header_timeout": 5, "idle_timeout": 30.5},
        "sip": {"max_connections": 50, "tls_handshake_timeout": 2.5, "idle_timeout": 20},
        "control_socket": {"path": "x.sock", "max_connections": 4, "idle_timeout": 10},
    })
    assert (config.api.max_connections, config.api.max_connections_per_client,
            config.api.header_timeout, config.api.idle_timeout) == (100, 10, 5.0, 30.5)
    assert (config.sip.max_connections, config.sip.max_connections_per_peer,
            config.sip.tls_handshake_timeout, config.sip.idle_timeout) == (50, None, 2.5, 20.0)
    assert config.control_socket_limits.max_connections == 4
    assert config.control_socket_limits.idle_timeout == 10.0
