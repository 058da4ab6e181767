"""Helpers for end-to-end SIPREC tests: sipp as the SRS, recorder sockets, a links fixture.

Everything runs on 127.0.0.x with real sockets. sipp is started per test with a scenario
from ``scenarios/`` and ``-key`` values for what differs (media address/ports, crypto
lines, status codes); its exit status says whether the scenario ran to the end.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import uvloop

from mediafork.recorder_api import CallCodec, Connector, Edge, LinkEvent, SiprecStart
from mediafork.sip.message import Message, Request, parse_message, parse_multipart
from mediafork.sip.recorder_links import SipRecorderLinks
from mediafork.sip.sdp import SessionDescription
from mediafork.sip.transaction import TimerConfig

SCENARIOS = Path(__file__).parent / "scenarios"
SIPP = shutil.which("sipp")
CALL_SID = "CA" + "ab" * 16
SIPREC_SID = "SR" + "cd" * 16
FAST_TIMERS = TimerConfig(t1=0.02, t2=0.2, t4=0.2, d=0.5)
"""Small T1 so Timer B (64*T1) fires in 1.3 s."""

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
    """Run ``coro`` on a fresh uvloop, bounded in time."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(bounded())


def free_port(ip: str = "127.0.0.1", kind: int = socket.SOCK_DGRAM, pair: bool = False) -> int:
    """A port free on ``ip`` (with ``pair``: even, and port+1 free too)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind((ip, 0))
            port = s.getsockname()[1]
        if not pair:
            return port
        if port % 2 == 0 and port < 65534:
            try:
                with socket.socket(socket.AF_INET, kind) as s2:
                    s2.bind((ip, port + 1))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port")


def own_port_block(size: int = 200) -> tuple[int, int]:
    """A random block of media ports in 40000-59999 (parallel runs rarely share one, and
    the allocator skips ports that are taken anyway)."""
    import secrets

    first = 40000 + secrets.randbelow(20000 // size) * size
    return first, first + size - 1


@dataclass
class Recorder:
    """UDP sockets where the SRS's SDP answer points media: RTP and its RTCP port."""

    ip: str = "127.0.0.1"
    rtp: socket.socket = field(init=False)
    rtcp: socket.socket = field(init=False)

    def __post_init__(self) -> None:
        for _ in range(50):
            port = free_port(self.ip, pair=True)
            rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                rtp.bind((self.ip, port))
                rtcp.bind((self.ip, port + 1))
            except OSError:
                rtp.close()
                rtcp.close()
                continue
            rtp.setblocking(False)
            rtcp.setblocking(False)
            self.rtp, self.rtcp = rtp, rtcp
            return
        raise RuntimeError("no free RTP/RTCP pair")

    @property
    def port(self) -> int:
        return int(self.rtp.getsockname()[1])

    async def receive(
        self, count: int, timeout: float = 3.0
    ) -> list[tuple[bytes, tuple[str, int]]]:
        """Up to ``count`` RTP packets (RTCP on the RTP port skipped), within ``timeout``."""
        loop = asyncio.get_running_loop()
        out: list[tuple[bytes, tuple[str, int]]] = []
        deadline = loop.time() + timeout
        while len(out) < count and loop.time() < deadline:
            try:
                data, peer = self.rtp.recvfrom(2048)
            except BlockingIOError:
                await asyncio.sleep(0.01)
                continue
            out.append((data, peer))
        return out

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                self.rtp.recvfrom(2048)

    def close(self) -> None:
        self.rtp.close()
        self.rtcp.close()


def crypto_line(tag: int, suite: str, key: bytes) -> str:
    return f"a=crypto:{tag} {suite} inline:{base64.b64encode(key).decode()}"


class Sipp:
    """One sipp process acting as an SRS (UAS) for one call."""

    def __init__(
        self,
        scenario: str,
        workdir: Path,
        *,
        ip: str = "127.0.0.1",
        port: int | None = None,
        transport: str = "u1",
        keys: dict[str, str] | None = None,
        fill: dict[str, str] | None = None,
        timeout: float = 15.0,
        scenarios: Path = SCENARIOS,
        auto_answer: bool = True,
    ) -> None:
        """``keys`` become sipp ``-key`` values ([name] in the scenario); ``fill`` replaces
        ``@NAME@`` in the scenario text first, for what sipp parses at load time (a
        response's status code)."""
        assert SIPP is not None
        self.ip = ip
        self.port = port or free_port(
            ip, socket.SOCK_STREAM if transport == "t1" else socket.SOCK_DGRAM
        )
        self.log = workdir / f"sipp-{scenario}-{self.port}.log"
        self.errors = workdir / f"sipp-{scenario}-{self.port}-errors.log"
        path = scenarios / f"{scenario}.xml"
        if fill:
            text = path.read_text()
            for name, value in fill.items():
                text = text.replace(f"@{name}@", value)
            path = workdir / f"{scenario}-{self.port}.xml"
            path.write_text(text)
        cmd = [
            SIPP,
            "-sf", str(path),
            "-i", ip,
            "-p", str(self.port),
            "-t", transport,
            "-m", "1",
            *(["-aa"] if auto_answer else []),  # 200 to INFO/NOTIFY/OPTIONS/UPDATE
            "-nostdin",
            "-timeout", f"{timeout}s",
            "-timeout_error",
            "-trace_msg", "-message_file", str(self.log),
            "-trace_err", "-error_file", str(self.errors),
        ]  # fmt: skip
        for name, value in (keys or {}).items():
            cmd += ["-key", name, value]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self._wait_bound(socket.SOCK_STREAM if transport == "t1" else socket.SOCK_DGRAM)

    @property
    def uri(self) -> str:
        return f"sip:srs@{self.ip}:{self.port}"

    def _wait_bound(self, kind: int) -> None:
        # sipp is ready once its port is taken (it binds before reading the scenario's
        # first recv); we cannot connect to a UDP socket to find out.
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sipp exited early: {self.proc.stderr.read().decode()[-500:]}")  # type: ignore[union-attr]
            with socket.socket(socket.AF_INET, kind) as s:
                try:
                    s.bind((self.ip, self.port))
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        time.sleep(0.05)  # bound; give it a moment to enter its loop
                        return
                    raise
            time.sleep(0.02)
        raise RuntimeError("sipp did not bind its port")

    async def wait(self, timeout: float = 10.0) -> int:
        """sipp's exit status (0 = the scenario completed)."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self.proc.poll() is None:
            self.kill()
            raise AssertionError(f"sipp did not finish; log:\n{self.messages()[-3000:]}")
        return int(self.proc.returncode)

    def messages(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        if self.errors.exists():
            text += "\n--- errors ---\n" + self.errors.read_text(errors="replace")
        return text

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


class EventLog:
    """The links' event sink: a list, plus waiting for an event kind."""

    def __init__(self) -> None:
        self.events: list[LinkEvent] = []
        self._changed = asyncio.Event()

    def __call__(self, event: LinkEvent) -> None:
        self.events.append(event)
        self._changed.set()

    async def wait_for(self, kind: str, timeout: float = 5.0) -> LinkEvent:
        async def find() -> LinkEvent:
            while True:
                for event in self.events:
                    if event.kind == kind:
                        return event
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(find(), timeout)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


class Wiretap:
    """Every SIP message the links send or receive, parsed (the transport's tap)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, str, tuple[str, int], Message]] = []

    def __call__(
        self, direction: str, transport: str, local: str, peer: tuple[str, int], data: bytes
    ) -> None:
        with contextlib.suppress(Exception):
            self.records.append((direction, transport, local, peer, parse_message(data)))

    def sent(self, method: str) -> list[Request]:
        return [
            m
            for d, *_, m in self.records
            if d == "out" and isinstance(m, Request) and m.method == method
        ]

    def sent_once(self, method: str) -> list[Request]:
        """One request per transaction: a UDP retransmission (same Via branch) under load
        is the transaction layer working, not a second request."""
        seen: set[str | None] = set()
        unique = []
        for request in self.sent(method):
            branch = request.vias[0].branch if request.vias else None
            if branch not in seen:
                seen.add(branch)
                unique.append(request)
        return unique


def sdp_of(message: Message) -> SessionDescription:
    ctype = message.content_type
    assert ctype is not None
    if ctype.type == "multipart":
        for part in parse_multipart(message.body, ctype):
            if part.content_type == "application/sdp":
                return SessionDescription.parse(part.body)
        raise AssertionError("no SDP part")
    return SessionDescription.parse(message.body)


def metadata_of(message: Message) -> bytes:
    ctype = message.content_type
    assert ctype is not None and ctype.type == "multipart"
    for part in parse_multipart(message.body, ctype):
        if part.content_type and "rs-metadata" in part.content_type:
            return part.body
    raise AssertionError("no metadata part")


def start_request(
    srs: str,
    *,
    standby: tuple[str, ...] = (),
    track: str = "both_tracks",
    credentials: str | None = "tok-e2e-secret",
    digest: tuple[str, str] | None = None,
    siprec_sid: str = SIPREC_SID,
    call_sid: str = CALL_SID,
) -> SiprecStart:
    connector = Connector(
        account_sid="AC" + "0" * 32,
        unique_name="Recorder_1",
        srs=srs,
        standby_srs=standby,
        credentials_header="X-Auth-Token" if credentials else None,
        credentials=credentials,
        digest_username=digest[0] if digest else None,
        digest_password=digest[1] if digest else None,
    )
    return SiprecStart(
        siprec_sid=siprec_sid,
        account_sid=connector.account_sid,
        call_sid=call_sid,
        name="rec",
        connector=connector,
        track=track,  # type: ignore[arg-type]
        parameters=(("agent", "Bob & <Co>"),),
        caller="sip:+15551230000@pbx.example",
        callee="+15559870000",
        codec=CallCodec(),
    )


async def open_links(
    events: EventLog,
    tap: Wiretap | None = None,
    *,
    edges: tuple[Edge, ...] = (),
    **options: Any,
) -> SipRecorderLinks:
    options.setdefault("timers", FAST_TIMERS)
    options.setdefault("stop_timeout", 1.0)
    links = SipRecorderLinks(events, edges, **options)
    await links.open()
    if tap is not None:
        links.transport.tap = tap
    return links


async def eventually(check: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def pump_media(call: Any, track: Any, count: int, start_seq: int = 1) -> list[bytes]:
    """Push ``count`` PCMU packets into the engine on ``track``; return them.

    Waits first for fork changes the links queued (destinations after a 200 OK) to be
    in force, so the first packet cannot race the destination it is meant for."""
    import struct

    await call.engine.settled()
    packets = []
    for i in range(count):
        seq = start_seq + i
        payload = bytes([(seq + j) & 0xFF for j in range(160)])
        packet = (
            struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160, 0x1234 + int(track)) + payload
        )
        packets.append(packet)
        call.push(track, packet)
        await asyncio.sleep(0.002)
    return packets
