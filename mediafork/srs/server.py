"""The reference recorder's SIP side: an asyncio UAS over UDP, TCP and TLS.

It reuses the sans-I/O SIP core (parser, stream framer, server/client transactions, digest
verifier) and adds what an SRS needs: dialogs created by the SRC's INVITE, answering offers,
BYE in both directions, and fault modes so that tests and demos can make a recorder misbehave
on purpose (answer with an error, stay silent, hang up after N seconds, demand digest auth or a
credentials header).

Anything from the network that does not parse is logged and dropped; a stream connection that
loses framing is closed. Nothing a peer sends can stop the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import secrets
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

from ..admission import make_admission
from ..private_dirs import make_private_dir
from ..sip.dialog import build_response
from ..sip.digest import DigestVerifier
from ..sip.errors import SipParseError
from ..sip.headers import Headers
from ..sip.message import Message, Request, Response, StreamFramer, parse_message
from ..sip.sdp import SessionDescription
from ..sip.transaction import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    State,
    TimerConfig,
    TransactionTimedOut,
    new_branch,
)
from ..sip.uri import SipUri
from .session import OfferError, RecordedSession, split_body
from .sink import CountingSession, port_cycle

log = logging.getLogger("mediafork.srs")

ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE"
ACCEPT = "application/sdp, application/rs-metadata+xml, application/rs-metadata, multipart/mixed"
SUPPORTED_TAGS = {"siprec", "timer"}
_TICK = 0.02
"""How often transaction timers are checked (s): far below T1, cheap for a test tool."""
_TLS_HANDSHAKE_TIMEOUT = 10.0
"""Seconds a TLS client has to finish its handshake (a half ClientHello holds a socket)."""


@dataclass
class RecorderConfig:
    """Everything the recorder can be told; the CLI flags map one to one onto these."""

    host: str = "127.0.0.1"
    port: int = 5070
    """UDP (and TCP with ``tcp``) port; 0 picks a free one (see ``ReferenceRecorder.address``)."""
    tcp: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_port: int | None = None
    """TLS port; by default ``port + 1`` (or a free port when ``port`` is 0)."""
    out_dir: str | Path = "srs-recordings"
    media_host: str | None = None
    """Address for RTP sockets and the SDP c= line (default: ``host``)."""
    media_ports: tuple[int, int] = (40000, 49999)
    answer: int = 200
    """Final status for initial INVITEs: 200 records; anything else (486, 503...) rejects."""
    no_answer: bool = False
    """Never answer initial INVITEs (the SRC must time out or CANCEL)."""
    hangup_after: float | None = None
    """Send BYE this many seconds after the ACK."""
    reinvite_after: float | None = None
    """Send a re-INVITE moving every stream to new ports this many seconds after the ACK."""
    keep_payloads: bool = False
    """Also write each stream's payloads as received to ``<label>.payloads`` (2-byte
    length, then the bytes): for codecs without a WAV (G.722, Opus) and bit-exact checks."""
    dial_contact: bool = False
    """Over TCP/TLS, send in-dialog requests (BYE, re-INVITE) on a connection we open to the
    SRC's Contact, as some recorders do, rather than on the one its INVITE came on."""
    require_auth: tuple[str, str] | None = field(default=None, repr=False)
    """(user, password): challenge initial INVITEs with 401 digest."""
    auth_realm: str = "mediafork-srs"
    credentials_header: tuple[str, str] | None = field(default=None, repr=False)
    """(header name, value) every initial INVITE must carry; 403 otherwise."""
    rtcp_interval: float = 2.0
    user: str = "recorder"
    sink_ports: tuple[int, ...] = ()
    """Count-only media (load tests): answer every stream with one of these ports on
    ``media_host``, round-robin, where a C sink elsewhere counts packets; no receivers here
    (see ``srs/sink.py``). Empty: receive, decrypt and record every stream."""
    timers: TimerConfig = field(default_factory=TimerConfig)


@dataclass
class _Peer:
    """Where a message came from and how to answer on the same path."""

    transport: str  # "UDP", "TCP", "TLS"
    addr: tuple[str, int]
    send: Callable[[bytes], None]
    conn: _StreamConn | None = None


@dataclass
class _ServerTx:
    tx: ServerInviteTransaction | ServerNonInviteTransaction
    peer: _Peer
    created: float
    session: RecordedSession | None = None


@dataclass
class _ClientTx:
    tx: ClientInviteTransaction | ClientNonInviteTransaction
    send: Callable[[bytes], None]
    session: RecordedSession
    done: asyncio.Future[Response | None]
    ack: Request | None = None
    """Our ACK for a 2xx to a re-INVITE we sent (re-sent if the 2xx is retransmitted)."""


class _StreamConn:
    """One TCP or TLS connection: framing in, bytes out."""

    def __init__(
        self, server: ReferenceRecorder, transport: str, reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.server = server
        self.transport = transport
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.addr: tuple[str, int] = (str(peer[0]), int(peer[1]))
        self.closed = False
        self.framer = StreamFramer()

    def send(self, data: bytes) -> None:
        if not self.closed:
            self.writer.write(data)

    async def run(self) -> None:
        peer = _Peer(self.transport, self.addr, self.send, self)
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                before = self.framer.keepalives
                try:
                    messages = self.framer.feed(data)
                except SipParseError as exc:
                    # Framing is lost: nothing after this point can be trusted (RFC 3261 §18.3).
                    self.server.bad_messages += 1
                    log.warning("srs: closing %s connection from %s: %s", self.transport,
                                self.addr, exc)
                    break
                if self.framer.keepalives > before:
                    self.send(b"\r\n")  # RFC 5626 §3.5.1 pong
                for msg in messages:
                    await self.server._dispatch(msg, peer)
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            log.debug("srs: %s connection from %s failed: %s", self.transport, self.addr, exc)
        finally:
            self.closed = True
            self.server._conns.discard(self)
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: ReferenceRecorder) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not isinstance-checked: CPython's selector transport does not subclass
        # DatagramTransport, it only implements it.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if not data.strip(b"\r\n\x00 "):
            return  # keepalive
        source = (str(addr[0]), int(addr[1]))
        try:
            msg = parse_message(data)
        except SipParseError as exc:
            self.server.bad_messages += 1
            log.warning("srs: dropping unparsable datagram from %s: %s", source, exc)
            return
        transport = self.transport
        assert transport is not None

        def send(payload: bytes, _to: tuple[str, int] = source) -> None:
            transport.sendto(payload, _to)

        peer = _Peer("UDP", source, send)
        self.server._spawn(self.server._dispatch(msg, peer))

    def error_received(self, exc: Exception) -> None:
        log.debug("srs: UDP error: %s", exc)


class ReferenceRecorder:
    """A small Session Recording Server for tests and demos.

    ``await start()``, then point an SRC at ``uri()`` (or ``address``); ``sessions`` lists every
    recording session with ``summary()``; ``await stop()`` hangs up live sessions (BYE) and
    finishes their files.
    """

    def __init__(self, config: RecorderConfig | None = None, **overrides: Any) -> None:
        self.config = replace(config or RecorderConfig(), **overrides)
        self.out_dir = Path(self.config.out_dir)
        self.sessions: list[RecordedSession] = []
        self.bad_messages = 0
        self.requests_seen: dict[str, int] = {}
        self.dialled = 0
        """Connections opened to an SRC's Contact (for in-dialog requests)."""
        self.address: tuple[str, int] = (self.config.host, self.config.port)
        self.tcp_address: tuple[str, int] | None = None
        self.tls_address: tuple[str, int] | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tls: asyncio.Server | None = None
        self._conns: set[_StreamConn] = set()
        self.admission = make_admission("srs")
        """Caps on the TCP/TLS connections accepted (it may run inside the daemon, whose
        descriptors it then shares)."""
        self._server_txs: dict[tuple[str, str], _ServerTx] = {}
        self._client_txs: dict[str, _ClientTx] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tick_task: asyncio.Task[None] | None = None
        self._verifier = (
            DigestVerifier(self.config.auth_realm,
                           {self.config.require_auth[0]: self.config.require_auth[1]})
            if self.config.require_auth else None
        )
        self._stopping = False
        self._event = asyncio.Event()
        self._sink_ports: Iterator[int] | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> ReferenceRecorder:
        loop = asyncio.get_running_loop()
        cfg = self.config
        make_private_dir(self.out_dir)  # call audio: owner only
        for attempt in range(20):
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(cfg.host, cfg.port)
            )
            port = transport.get_extra_info("sockname")[1]
            if not cfg.tcp:
                self._udp = transport
                break
            try:
                self._tcp = await asyncio.start_server(
                    lambda r, w: self._accept(r, w, "TCP"), cfg.host, port
                )
            except OSError:
                transport.close()
                if cfg.port != 0 or attempt == 19:
                    raise
                continue  # the free UDP port is taken for TCP: try another one
            self._udp = transport
            self.tcp_address = (cfg.host, port)
            break
        self.address = (cfg.host, port)
        if cfg.tls_cert and cfg.tls_key:
            try:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.load_cert_chain(cfg.tls_cert, cfg.tls_key)
                tls_port = (
                    cfg.tls_port if cfg.tls_port is not None else (port + 1 if cfg.port else 0)
                )
                self._tls = await asyncio.start_server(
                    lambda r, w: self._accept(r, w, "TLS"), cfg.host, tls_port, ssl=context,
                    ssl_handshake_timeout=_TLS_HANDSHAKE_TIMEOUT,
                )
            except (OSError, ssl.SSLError):
                # Do not leave the UDP/TCP listeners behind a failed start.
                if self._udp is not None:
                    self._udp.close()
                if self._tcp is not None:
                    self._tcp.close()
                raise
            self.tls_address = (cfg.host, self._tls.sockets[0].getsockname()[1])
        self._tick_task = asyncio.create_task(self._tick())
        log.info("srs: listening on %s:%d (udp%s%s), recordings in %s", *self.address,
                 ", tcp" if self.tcp_address else "",
                 f", tls {self.tls_address[1]}" if self.tls_address else "", self.out_dir)
        return self

    async def stop(self, bye_timeout: float = 1.0) -> None:
        """Hang up live sessions (BYE, bounded wait), finish files and close every socket."""
        self._stopping = True
        waits = [self._hangup(s, "shutdown") for s in self.sessions if s.live]
        if waits:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True),
                                       bye_timeout)
        for session in self.sessions:
            if session.live:
                await session.end("shutdown")
            elif session.state == "unanswered":
                session.state = "ended"
            else:
                # A hangup cut short by the timeout above may have left receivers open.
                await session.close_media()
                session.write_summary()
        if self._tick_task is not None:
            self._tick_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tick_task
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in (self._tcp, self._tls):
            if server is not None:
                server.close()
        for conn in list(self._conns):
            conn.writer.close()
        for server in (self._tcp, self._tls):
            if server is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server.wait_closed(), 2)
        if self._udp is not None:
            self._udp.close()

    async def __aenter__(self) -> ReferenceRecorder:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def uri(self, transport: str = "udp") -> str:
        """A SIP URI an SRC can be pointed at (``udp``, ``tcp`` or ``tls``)."""
        transport = transport.lower()
        if transport == "tls":
            if self.tls_address is None:
                raise ValueError("TLS is not enabled")
            host, port = self.tls_address
            return f"sips:{self.config.user}@{_host(host)}:{port}"
        host, port = self.address
        suffix = ";transport=tcp" if transport == "tcp" else ""
        return f"sip:{self.config.user}@{_host(host)}:{port}{suffix}"

    async def wait_for(
        self, predicate: Callable[[ReferenceRecorder], bool], timeout: float = 5.0
    ) -> None:
        """Wait until ``predicate(self)`` holds (checked on every session change)."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("condition not met at the reference recorder")
            self._event.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._event.wait(), min(remaining, 0.1))

    def session(self, call_id: str) -> RecordedSession | None:
        """The latest session with this Call-ID."""
        for session in reversed(self.sessions):
            if session.call_id == call_id:
                return session
        return None

    # --- plumbing ------------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("srs: handler failed", exc_info=task.exception())

    def _notify(self) -> None:
        self._event.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      transport: str) -> None:
        peer = writer.get_extra_info("peername")
        ip = str(peer[0]) if peer else None
        if self.admission.admit(ip) is not None:
            writer.transport.abort()  # over a cap: the descriptor goes at once
            return
        conn = _StreamConn(self, transport, reader, writer)
        self._conns.add(conn)
        try:
            await conn.run()
        finally:
            self.admission.release(ip)

    async def _tick(self) -> None:
        """Drive transaction timers: retransmit responses/requests, expire transactions."""
        while True:
            await asyncio.sleep(_TICK)
            try:
                self._run_timers(asyncio.get_running_loop().time())
            except Exception:
                log.exception("srs: timer processing failed")

    def _run_timers(self, now: float) -> None:
        for key, entry in list(self._server_txs.items()):
            deadline = entry.tx.get_timer()
            if deadline is not None and deadline <= now:
                entry.tx.handle_timer(now)
            self._flush_server(entry)
            while (event := entry.tx.next_event()) is not None:
                if isinstance(event, TransactionTimedOut) and event.timer == "L":
                    # Our 2xx was never ACKed: the dialog must end with BYE (RFC 3261 §13.3.1.4).
                    session = entry.session
                    if session is not None and session.state == "answered":
                        session.warnings.append("no ACK for the 200 OK")
                        self._spawn(self._hangup(session, "ack-timeout"))
            # Keep finished transactions a while so retransmissions are still absorbed.
            if entry.tx.terminated and now - entry.created > 64 * self.config.timers.t1:
                del self._server_txs[key]
        for branch, centry in list(self._client_txs.items()):
            deadline = centry.tx.get_timer()
            if deadline is not None and deadline <= now:
                centry.tx.handle_timer(now)
            for msg in centry.tx.messages_to_send():
                self._safe_send(centry.send, msg)
            while (event := centry.tx.next_event()) is not None:
                if isinstance(event, TransactionTimedOut) and not centry.done.done():
                    centry.done.set_result(None)
            if centry.tx.terminated:
                if not centry.done.done():
                    centry.done.set_result(None)
                del self._client_txs[branch]

    def _flush_server(self, entry: _ServerTx) -> None:
        for msg in entry.tx.messages_to_send():
            self._safe_send(entry.peer.send, msg)

    @staticmethod
    def _safe_send(send: Callable[[bytes], None], msg: Message) -> None:
        try:
            send(msg.to_bytes())
        except OSError as exc:
            log.warning("srs: send failed: %s", exc)

    def _respond(self, entry: _ServerTx, response: Response) -> None:
        now = asyncio.get_running_loop().time()
        with contextlib.suppress(Exception):
            entry.tx.send_response(response, now)
        self._flush_server(entry)

    # --- dispatch ------------------------------------------------------------------------------

    async def _dispatch(self, msg: Message, peer: _Peer) -> None:
        try:
            if isinstance(msg, Response):
                self._on_response(msg)
            else:
                self.requests_seen[msg.method] = self.requests_seen.get(msg.method, 0) + 1
                await self._on_request(msg, peer)
        except SipParseError as exc:
            self.bad_messages += 1
            log.warning("srs: bad %s from %s: %s", getattr(msg, "method", "response"),
                        peer.addr, exc)
        except Exception:
            log.exception("srs: failed to handle a message from %s", peer.addr)
        finally:
            self._notify()

    def _on_response(self, response: Response) -> None:
        branch = response.top_via.branch or ""
        entry = self._client_txs.get(branch)
        if entry is None:
            return  # a stray or late response: nothing waits for it
        entry.tx.handle_message(response, asyncio.get_running_loop().time())
        for msg in entry.tx.messages_to_send():  # the ACK for a non-2xx final response
            self._safe_send(entry.send, msg)
        if isinstance(entry.tx, ClientInviteTransaction) and 200 <= response.status < 300:
            # The ACK for a 2xx is the TU's job (RFC 3261 §13.2.2.4), also for retransmissions.
            if entry.ack is None:
                entry.ack = self._build_ack(entry.session, entry.tx.request, response)
            self._safe_send(entry.send, entry.ack)
        if response.status >= 200 and not entry.done.done():
            entry.done.set_result(response)

    async def _on_request(self, request: Request, peer: _Peer) -> None:
        now = asyncio.get_running_loop().time()
        branch = request.top_via.branch or f"{request.call_id}/{request.cseq[0]}"
        if request.method == "ACK":
            await self._on_ack(request, branch, now)
            return
        key = (branch, request.method)
        existing = self._server_txs.get(key)
        if existing is not None:
            existing.tx.handle_message(request, now)  # a retransmission: repeat our answer
            self._flush_server(existing)
            return
        reliable = peer.transport != "UDP"
        tx: ServerInviteTransaction | ServerNonInviteTransaction
        if request.method == "INVITE":
            tx = ServerInviteTransaction(request, reliable, self.config.timers)
        else:
            tx = ServerNonInviteTransaction(request, reliable, self.config.timers)
        entry = _ServerTx(tx, peer, now)
        self._server_txs[key] = entry
        if request.method == "CANCEL":
            self._on_cancel(request, entry, branch)
            return
        to_tag = request.to.tag
        if to_tag is not None:
            await self._in_dialog(request, entry, to_tag)
        elif request.method == "INVITE":
            await self._initial_invite(request, entry)
        elif request.method == "OPTIONS":
            self._respond(entry, self._options_response(request))
        elif request.method == "BYE":
            self._respond(entry, build_response(request, 481))
        else:
            self._respond(entry, build_response(request, 405, headers=[("Allow", ALLOW)]))

    def _options_response(self, request: Request, to_tag: str | None = None) -> Response:
        return build_response(
            request, 200, to_tag=to_tag,
            headers=[("Allow", ALLOW), ("Accept", ACCEPT), ("Supported", "siprec")],
        )

    async def _on_ack(self, ack: Request, branch: str, now: float) -> None:
        entry = self._server_txs.get((branch, "INVITE"))
        if entry is not None and entry.tx.state is State.COMPLETED:
            entry.tx.handle_message(ack, now)  # ACK for our error response: same branch
            return
        session = self._find_session(ack)
        if session is None:
            return
        # ACK for a 2xx is its own transaction: stop retransmitting the 200 of that INVITE.
        for other in self._server_txs.values():
            if (other.session is session and isinstance(other.tx, ServerInviteTransaction)
                    and other.tx.state is State.ACCEPTED):
                other.tx.handle_message(ack, now)
        if session.state == "answered":
            session.state = "established"
            session.established_at = time.time()
            session.write_summary()
            log.info("srs: session %s established (%d streams)", session.call_id,
                     sum(r is not None for r in session.receivers))
            if self.config.hangup_after is not None:
                self._spawn(self._hangup_later(session, self.config.hangup_after))
            if self.config.reinvite_after is not None:
                self._spawn(self._reinvite_later(session, self.config.reinvite_after))

    def _on_cancel(self, cancel: Request, entry: _ServerTx, branch: str) -> None:
        invite = self._server_txs.get((branch, "INVITE"))
        if invite is None:
            self._respond(entry, build_response(cancel, 481))
            return
        self._respond(entry, build_response(cancel, 200))
        if invite.tx.state is State.PROCEEDING:
            session = invite.session
            tag = session.local_tag if session else None
            self._respond(invite, build_response(invite.tx.request, 487, to_tag=tag))
            if session is not None and session.state in ("unanswered", "new"):
                session.state = "cancelled"
                session.status = 487

    def _find_session(self, request: Request) -> RecordedSession | None:
        call_id = request.call_id
        tag = request.to.tag
        for session in reversed(self.sessions):
            if session.call_id == call_id and (tag is None or session.local_tag == tag):
                return session
        return None

    # --- initial INVITE ----------------------------------------------------------------------

    async def _initial_invite(self, request: Request, entry: _ServerTx) -> None:
        cfg = self.config
        if self._stopping:
            self._respond(entry, build_response(request, 503, to_tag=_tag(),
                                                headers=[("Retry-After", "5")]))
            return
        if cfg.credentials_header is not None:
            name, expected = cfg.credentials_header
            got = request.headers.get(name)
            if got is None or not hmac.compare_digest(got.encode(), expected.encode()):
                # Never log the value: it is a secret (or a wrong guess at one).
                log.info("srs: 403 for %s: %s header missing or wrong", request.call_id, name)
                self._reject(request, entry, 403, f"missing or wrong {name}")
                return
        if self._verifier is not None:
            auth = request.headers.get("Authorization")
            if auth is None or not self._verifier.verify(auth, "INVITE"):
                challenge = self._verifier.challenge()
                self._respond(entry, build_response(
                    request, 401, to_tag=_tag(), headers=[("WWW-Authenticate", challenge)]))
                return
        unsupported = [t for t in request.headers.values("Require")
                       if t.lower() not in SUPPORTED_TAGS]
        if unsupported:
            self._respond(entry, build_response(
                request, 420, to_tag=_tag(), headers=[("Unsupported", ", ".join(unsupported))]))
            return
        session = self._new_session(request, entry)
        if cfg.no_answer:
            session.state = "unanswered"
            return
        if cfg.answer >= 300 or cfg.answer < 200:
            session.state, session.status = "rejected", cfg.answer
            # A Reason header (RFC 3326), as many recorders send with a refusal.
            self._respond(entry, build_response(
                request, cfg.answer, to_tag=session.local_tag,
                headers=[("Reason", f'SIP;cause={cfg.answer};text="mediafork-srs --answer"')]))
            return
        try:
            bodies = split_body(request)
            answer = await session.accept(bodies)
        except OfferError as exc:
            session.state, session.status, session.reason = "rejected", exc.status, exc.text
            self._respond(entry, build_response(
                request, exc.status, to_tag=session.local_tag,
                headers=[("Warning", f'399 mediafork-srs "{_warning(exc.text)}"')]))
            return
        session.state, session.status = "answered", 200
        self._respond(entry, self._ok_with_sdp(request, session, answer.to_bytes(), entry.peer))
        log.info("srs: answered %s from %s over %s", session.call_id, entry.peer.addr,
                 entry.peer.transport)

    def _new_session(self, request: Request, entry: _ServerTx) -> RecordedSession:
        cfg = self.config
        session: RecordedSession
        if cfg.sink_ports:
            if self._sink_ports is None:
                self._sink_ports = port_cycle(cfg.sink_ports)
            session = CountingSession(
                request, entry.peer.transport, entry.peer.addr, self.out_dir,
                cfg.media_host or cfg.host, self._sink_ports, cfg.rtcp_interval,
            )
        else:
            session = RecordedSession(
                request, entry.peer.transport, entry.peer.addr, self.out_dir,
                cfg.media_host or cfg.host, cfg.media_ports, cfg.rtcp_interval,
                keep_payloads=cfg.keep_payloads,
            )
        # A copy: the path may change for this session alone (a dialed-out connection).
        session.peer = replace(entry.peer)
        entry.session = session
        self.sessions.append(session)
        return session

    def _reject(self, request: Request, entry: _ServerTx, status: int, text: str) -> None:
        self._respond(entry, build_response(
            request, status, to_tag=_tag(),
            headers=[("Warning", f'399 mediafork-srs "{_warning(text)}"')]))

    def _ok_with_sdp(self, request: Request, session: RecordedSession, sdp: bytes | None,
                     peer: _Peer) -> Response:
        headers = [
            ("Contact", f"<{self._contact(peer.transport)}>;+sip.srs"),
            ("Allow", ALLOW),
            ("Supported", "siprec"),
        ]
        expires = request.headers.get("Session-Expires")
        if expires and request.method in ("INVITE", "UPDATE"):
            # RFC 4028 §9: echo the interval and leave refreshing to the SRC (the UAC).
            interval = expires.split(";")[0].strip()
            headers += [("Session-Expires", f"{interval};refresher=uac"), ("Require", "timer")]
        if sdp is not None:
            headers.append(("Content-Type", "application/sdp"))
        return build_response(request, 200, to_tag=session.local_tag, headers=headers,
                              body=sdp or b"")

    def _contact(self, transport: str) -> str:
        user = self.config.user
        if transport == "TLS" and self.tls_address is not None:
            host, port = self.tls_address
            return f"sips:{user}@{_host(host)}:{port};transport=tls"
        host, port = self.address
        suffix = ";transport=tcp" if transport == "TCP" else ""
        return f"sip:{user}@{_host(host)}:{port}{suffix}"

    # --- in-dialog requests --------------------------------------------------------------------

    async def _in_dialog(self, request: Request, entry: _ServerTx, to_tag: str) -> None:
        session = self._find_session(request)
        if session is None or not session.live:
            self._respond(entry, build_response(request, 481))
            return
        entry.session = session
        method = request.method
        if method == "BYE":
            self._respond(entry, build_response(request, 200))
            await session.end("src")
            log.info("srs: session %s ended by the SRC", session.call_id)
        elif method in ("INVITE", "UPDATE"):
            try:
                bodies = split_body(request)
                answer = await session.reoffer(bodies, method)
            except OfferError as exc:
                self._respond(entry, build_response(
                    request, exc.status,
                    headers=[("Warning", f'399 mediafork-srs "{_warning(exc.text)}"')]))
                return
            # UPDATE without SDP refreshes the session only; INVITE without SDP gets our SDP
            # as an offer (the SRC answers in the ACK, which we accept as is).
            sdp = None
            if answer is not None and (bodies.sdp is not None or method == "INVITE"):
                sdp = answer.to_bytes()
            self._respond(entry, self._ok_with_sdp(request, session, sdp, entry.peer))
        elif method == "OPTIONS":
            self._respond(entry, self._options_response(request))
        else:
            self._respond(entry, build_response(request, 405, headers=[("Allow", ALLOW)]))

    # --- requests we send ----------------------------------------------------------------------

    async def _hangup_later(self, session: RecordedSession, delay: float) -> None:
        await asyncio.sleep(delay)
        if session.live:
            await self._hangup(session, "srs")

    async def _hangup(self, session: RecordedSession, by: str) -> None:
        """Send BYE, stop the media at once, and note the SRC's answer when it comes."""
        if not session.live:
            return
        bye = self._build_request(session, "BYE")
        bye.headers.add("Reason", 'SIP;cause=200;text="recorder hung up"')
        log.info("srs: sending BYE for %s (%s)", session.call_id, by)
        done = self._send_request(session, bye)
        await session.end(by)
        self._notify()
        if done is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                response = await asyncio.wait_for(done, 64 * self.config.timers.t1 + 1)
                session.bye_status = response.status if response is not None else None
            session.write_summary()
            self._notify()

    async def _reinvite_later(self, session: RecordedSession, delay: float) -> None:
        await asyncio.sleep(delay)
        if session.state == "established":
            await self.reinvite(session)

    async def reinvite(self, session: RecordedSession) -> int | None:
        """Move the session's media to new ports with a re-INVITE; return the SRC's status.

        Exercises the SRC's handling of SRS-initiated offers (RFC 7866 §8.1.1 lets the SRS
        re-negotiate). On anything but 2xx the old ports stay in use.
        """
        offer = await session.new_ports_offer()
        invite = self._build_request(session, "INVITE")
        invite.headers.add("Content-Type", "application/sdp")
        invite.body = offer.to_bytes()
        log.info("srs: re-INVITE with new ports for %s", session.call_id)
        done = self._send_request(session, invite)
        response = None
        if done is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                response = await asyncio.wait_for(done, 64 * self.config.timers.t1 + 1)
        if response is not None and 200 <= response.status < 300 and response.body:
            try:
                session.apply_answer(SessionDescription.parse(response.body))
            except SipParseError as exc:
                session.warnings.append(f"unreadable answer to our re-INVITE: {exc}")
                session.revert_offer()
        else:
            session.warnings.append(
                f"re-INVITE refused: {response.status if response is not None else 'timeout'}")
            session.revert_offer()
        self._notify()
        return response.status if response is not None else None

    def _build_ack(self, session: RecordedSession, invite: Request, ok: Response) -> Request:
        ack = self._build_request(session, "ACK")
        ack.headers.set("CSeq", f"{invite.cseq[0]} ACK")
        ack.headers.set("To", ok.headers.get("To") or session.from_value)
        ack.headers.remove("Contact")
        session.local_cseq -= 1  # ACK reuses the INVITE's number (_build_request took one)
        return ack

    def _build_request(self, session: RecordedSession, method: str) -> Request:
        peer: _Peer = session.peer
        host, port = self.address
        if peer.transport == "TLS" and self.tls_address is not None:
            port = self.tls_address[1]
        headers = Headers()
        headers.add("Via", f"SIP/2.0/{peer.transport} {_host(host)}:{port};branch={new_branch()}"
                           ";rport")
        headers.add("Max-Forwards", "70")
        headers.add("From", f"{session.to_value};tag={session.local_tag}")
        headers.add("To", session.from_value)
        headers.add("Call-ID", session.call_id)
        headers.add("CSeq", f"{session.next_cseq()} {method}")
        for route in session.route_set:
            headers.add("Route", route)
        headers.add("Contact", f"<{self._contact(peer.transport)}>;+sip.srs")
        return Request(method, session.remote_target, headers)

    def _send_request(self, session: RecordedSession, request: Request
                      ) -> asyncio.Future[Response | None] | None:
        peer: _Peer = session.peer
        send = self._request_path(session, peer)
        if send is None:
            return None
        loop = asyncio.get_running_loop()
        reliable = peer.transport != "UDP"
        tx: ClientInviteTransaction | ClientNonInviteTransaction
        if request.method == "INVITE":
            tx = ClientInviteTransaction(request, reliable, self.config.timers)
        else:
            tx = ClientNonInviteTransaction(request, reliable, self.config.timers)
        done: asyncio.Future[Response | None] = loop.create_future()
        self._client_txs[request.top_via.branch or ""] = _ClientTx(tx, send, session, done)
        tx.start(loop.time())
        for msg in tx.messages_to_send():
            self._safe_send(send, msg)
        return done

    def _request_path(self, session: RecordedSession, peer: _Peer
                      ) -> Callable[[bytes], None] | None:
        """Where in-dialog requests go: the SRC's Contact over UDP; over TCP/TLS the
        connection the INVITE came on (the SRC may not listen for new connections)."""
        if peer.conn is not None:
            if not peer.conn.closed and not self.config.dial_contact:
                return peer.conn.send
            # The SRC closed its connection (or dial_contact): dial its Contact
            # (RFC 3261 §18.1.1).
            target = SipUri.parse(session.remote_target)
            default = 5061 if peer.transport == "TLS" else 5060
            dialer = _Dialer(self, peer.transport, target.host.strip("[]"), target.port or default)
            self.dialled += 1
            peer.conn = None
            peer.send = dialer.send
            return dialer.send
        if peer.transport != "UDP":
            return peer.send  # a dialer from an earlier request
        target = SipUri.parse(session.remote_target)
        try:
            ipaddress.ip_address(target.host.strip("[]"))
            dest = (target.host.strip("[]"), target.port or 5060)
        except ValueError:
            dest = peer.addr  # a host name: reply to where the INVITE came from instead
        udp = self._udp
        if udp is None:
            return None
        return lambda data: udp.sendto(data, dest)


class _Dialer:
    """An outgoing TCP/TLS connection opened on first use; bytes sent before it is up wait.

    TLS does not verify the SRC's certificate: this is a test tool talking to whatever SRC the
    user points at it, usually with a self-signed certificate.
    """

    def __init__(self, server: ReferenceRecorder, transport: str, host: str, port: int) -> None:
        self.server = server
        self.transport = transport
        self.host, self.port = host, port
        self.pending: list[bytes] = []
        self.conn: _StreamConn | None = None
        self.failed = False
        server._spawn(self._connect())

    def send(self, data: bytes) -> None:
        if self.conn is not None and not self.conn.closed:
            self.conn.send(data)
        elif not self.failed:
            self.pending.append(data)

    async def _connect(self) -> None:
        context = None
        if self.transport == "TLS":
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, ssl=context), 5)
        except (TimeoutError, OSError, ssl.SSLError) as exc:
            self.failed = True
            log.warning("srs: cannot connect to the SRC at %s:%d over %s: %s", self.host,
                        self.port, self.transport, exc)
            return
        self.conn = _StreamConn(self.server, self.transport, reader, writer)
        self.server._conns.add(self.conn)
        for data in self.pending:
            self.conn.send(data)
        self.pending.clear()
        await self.conn.run()


def _tag() -> str:
    return secrets.token_hex(6)


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _warning(text: str) -> str:
    return text.replace('"', "'").replace("\\", "/")[:200]
