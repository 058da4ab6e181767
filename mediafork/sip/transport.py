"""SIP transports on asyncio (uvloop or the default loop): UDP, TCP and TLS.

This is the only part of ``mediafork.sip`` that touches sockets. It moves bytes: every
datagram or framed stream message is parsed and handed to ``on_message``; everything that
goes out is given as bytes plus a :class:`~mediafork.sip.session.Destination`.

* One UDP socket per local (edge) address, also used as the TCP listening port, so the
  port in Via/Contact is right for both. The UDP socket sets ``IP_RECVERR`` so ICMP port
  unreachable for a destination is reported (``on_error``) instead of only surfacing as
  a Timer B timeout 32 s later.
* TCP and TLS connections are opened from the edge address (``local_addr``) and pooled per
  (edge, transport, peer); connections the SRS opens to our listener join the pool too, so
  replies to its requests go back over them. Each connection has its own
  :class:`~mediafork.sip.message.StreamFramer`; a double-CRLF ping is answered with CRLF
  (RFC 5626 §3.5.1).
* Host names are resolved with ``loop.getaddrinfo`` (A/AAAA of the edge's family), cached
  for ``dns_ttl`` seconds. No SRV lookup.
* TLS verifies the SRS certificate against the default or a given CA file, with host name
  checking against the name (or IP) we connected to.

Nothing here logs message contents: they carry credentials headers and SDES keys. A test
may set ``tap`` to see every message (it is never set in production).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..admission import Admission, make_admission
from .errors import SipParseError
from .message import Message, StreamFramer, parse_message
from .session import Destination

__all__ = [
    "ErrorHandler",
    "MessageHandler",
    "SipTransport",
    "Tap",
    "TransportError",
    "client_tls_context",
]

log = logging.getLogger(__name__)

MessageHandler = Callable[[Message, tuple[str, int], str, str], None]
"""on_message(message, source (ip, port), transport, local address)."""
ErrorHandler = Callable[[str, str, tuple[str, int], str], None]
"""on_error(local address, transport, peer (ip, port), reason): the peer is unreachable."""
Tap = Callable[[str, str, str, tuple[str, int], bytes], None]
"""tap(direction "in"/"out", transport, local address, peer, bytes) (tests only)."""

_IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
_IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
_MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)
_UNREACHABLE = {
    errno.ECONNREFUSED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    getattr(errno, "EHOSTDOWN", 112),
}


class TransportError(Exception):
    """A message could not be sent (resolution, connect, TLS handshake, socket error)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def client_tls_context(
    ca_file: str | None = None,
    *,
    verify: bool = True,
    cert_file: str | None = None,
    key_file: str | None = None,
) -> ssl.SSLContext:
    """A TLS client context for SRS connections: verifies by default (system CAs, or only
    ``ca_file`` when given); ``verify=False`` is for lab setups and is logged."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        log.warning("TLS certificate verification of SRS connections is disabled")
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _UdpEndpoint(asyncio.DatagramProtocol):
    """One UDP socket (an asyncio datagram endpoint) and its ICMP error queue.

    The loop's transport reads datagrams; when it reports an error (``IP_RECVERR`` makes
    ICMP errors visible on an unconnected socket), we read the error queue through a
    duplicate of the socket to learn which peer was unreachable. Reading the queue also
    clears the socket's error condition (a poller would otherwise keep waking up).
    """

    def __init__(self, owner: SipTransport, sock: socket.socket, address: str) -> None:
        self.owner = owner
        self.address = address
        self.port: int = sock.getsockname()[1]
        self.errors = sock.dup()  # same socket; ours to read MSG_ERRQUEUE from
        self.errors.setblocking(False)
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport does not subclass asyncio.DatagramTransport.
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.owner._datagram(self, data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        self._drain_errors()

    def _drain_errors(self) -> None:
        for _ in range(64):
            try:
                _, ancdata, _, peer = self.errors.recvmsg(1, 512, _MSG_ERRQUEUE)
            except OSError:
                return
            code = 0
            for _level, _type, cdata in ancdata:
                if len(cdata) >= 4:
                    code = struct.unpack("=I", cdata[:4])[0]  # sock_extended_err.ee_errno
            if peer and code in _UNREACHABLE:
                self.owner._unreachable(self.address, "udp", (peer[0], peer[1]), code)

    def sendto(self, data: bytes, peer: tuple[str, int]) -> None:
        if self.transport is None or self.transport.is_closing():
            raise TransportError(f"UDP socket on {self.address} is closed")
        # Send errors (and ICMP errors surfacing on a send) come back via error_received;
        # a full socket buffer drops the datagram, and SIP retransmits over UDP.
        self.transport.sendto(data, peer)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.errors.close()


class _StreamConnection(asyncio.Protocol):
    """One TCP or TLS connection carrying SIP, framed by Content-Length.

    ``inbound`` connections (accepted by our listener) hold a slot of the transport's
    :class:`~mediafork.admission.Admission` and are closed when no complete SIP message
    has gone either way for ``idle_timeout`` (idle, only garbage or only keepalive pings):
    requests we send always go over connections we open ourselves, so closing an inbound one
    never cuts a dialog off. Connections we open are not subject to any of this.
    """

    def __init__(self, owner: SipTransport, transport_name: str, address: str,
                 *, inbound: bool = False) -> None:
        self.owner = owner
        self.transport_name = transport_name
        self.address = address
        self.inbound = inbound
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self._admitted = False  # holds a slot of owner.admission (inbound only)
        self._slot: str | None = None  # the peer address that slot is counted under
        self._last_useful = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.transport = transport  # type: ignore[assignment]
        self.peer = (peer[0], peer[1]) if peer else None
        if self.inbound:
            self._useful()
        if self.peer is not None:
            self.owner._register(self)

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None
        pings = self.framer.keepalives
        try:
            messages = self.framer.feed(data)
        except SipParseError as exc:
            # The stream is out of sync: nothing after this point can be trusted.
            self.owner.malformed += 1
            log.warning(
                "closing %s connection from %s:%s: %s", self.transport_name, *self.peer, exc
            )
            if self.transport is not None:
                self.transport.close()
            return
        if self.framer.keepalives > pings and self.transport is not None:
            self.transport.write(b"\r\n")  # pong
        if messages and self.inbound:
            self._useful()
        for message in messages:
            self.owner._deliver(message, self.peer, self.transport_name, self.address, None)

    def take_slot(self, ip: str) -> None:
        """Mark this (inbound) connection as holding the admission slot of ``ip``."""
        self._admitted, self._slot = True, ip

    def give_back_slot(self) -> None:
        """Release the admission slot, once, whichever way the connection ends."""
        if self._admitted:
            self._admitted = False
            self.owner.admission.release(self._slot)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self.give_back_slot()
        self.owner._unregister(self)
        if not self.closed.done():
            self.closed.set_result(None)
        if self.peer is not None and not self.owner._closing:
            self.owner._lost(self)

    def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise TransportError(f"{self.transport_name} connection is closed")
        self.transport.write(data)
        if self.inbound:
            self._useful()

    def _useful(self) -> None:
        """A complete SIP message went one way or the other: the idle clock restarts."""
        loop = self.owner.loop
        self._last_useful = loop.time()
        if self._idle_timer is None:
            self._idle_timer = loop.call_at(self._last_useful + self.owner.idle_timeout,
                                            self._check_idle)

    def _check_idle(self) -> None:
        # One timer per connection, moved on lazily: re-arming on every message would
        # cost a timer handle per message.
        loop = self.owner.loop
        deadline = self._last_useful + self.owner.idle_timeout
        if loop.time() < deadline:
            self._idle_timer = loop.call_at(deadline, self._check_idle)
            return
        self._idle_timer = None
        if self.transport is not None and not self.transport.is_closing():
            self.owner.admission.closed("idle_timeout")
            self.transport.abort()


class _StreamListener:
    """A listening TCP socket (SIP over TCP, or TLS with ``tls_context``) whose connections
    are accepted here rather than by ``loop.create_server``, so that each one is admitted
    (:class:`~mediafork.admission.Admission`) before anything is read from it, and a TLS
    handshake is bounded by ``tls_handshake_timeout`` and counted while it runs (a server
    only shows the application connections whose handshake is over).
    """

    def __init__(self, owner: SipTransport, transport_name: str, address: str,
                 sock: socket.socket, tls_context: ssl.SSLContext | None) -> None:
        self.owner = owner
        self.transport_name = transport_name
        self.address = address
        self.sock = sock
        self.tls_context = tls_context
        self._pending: set[asyncio.Task[None]] = set()
        self._warned_at = -60.0
        self._accepting = owner.loop.create_task(self._accept_loop())

    async def _accept_loop(self) -> None:
        loop = self.owner.loop
        while True:
            try:
                sock, peer = await loop.sock_accept(self.sock)
            except OSError as exc:
                # EMFILE and friends: the caps should make this rare; back off briefly
                # instead of spinning on a listener that stays readable, and say so at
                # most once a minute.
                now = loop.time()
                if now - self._warned_at >= 60.0:
                    self._warned_at = now
                    log.warning("SIP %s listener on %s cannot accept: %s",
                                self.transport_name, self.address, exc.strerror or exc)
                await asyncio.sleep(0.5)
                continue
            ip = str(peer[0])
            if self.owner.admission.admit(ip) is not None:
                # Linger 0: close with a reset, so the descriptor and port are free at once.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
                continue
            task = loop.create_task(self._establish(sock, ip))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _establish(self, sock: socket.socket, ip: str) -> None:
        owner = self.owner
        connection = _StreamConnection(owner, self.transport_name, self.address, inbound=True)
        connection.take_slot(ip)
        tls = self.tls_context is not None
        try:
            # Our own bound on the handshake (the loop's is a backstop): asyncio and uvloop
            # report their own timeouts as different exceptions.
            await asyncio.wait_for(
                owner.loop.connect_accepted_socket(
                    lambda: connection, sock, ssl=self.tls_context,
                    ssl_handshake_timeout=owner.tls_handshake_timeout + 5.0 if tls else None,
                ),
                owner.tls_handshake_timeout if tls else None,
            )
        except TimeoutError:
            owner.admission.closed("handshake_timeout")
            connection.give_back_slot()
            sock.close()
        except (OSError, ssl.SSLError) as exc:
            log.debug("%s connection from %s failed: %s", self.transport_name, ip, exc)
            connection.give_back_slot()
            sock.close()
        except asyncio.CancelledError:
            connection.give_back_slot()
            sock.close()
            raise

    def close(self) -> None:
        self._accepting.cancel()
        for task in list(self._pending):
            task.cancel()
        self.sock.close()


@dataclass
class _Listener:
    udp: _UdpEndpoint
    servers: list[_StreamListener]


class SipTransport:
    """SIP over UDP, TCP and TLS for a set of local (edge) addresses."""

    def __init__(
        self,
        on_message: MessageHandler,
        on_error: ErrorHandler | None = None,
        *,
        tls_context: ssl.SSLContext | None = None,
        tls_server_context: ssl.SSLContext | None = None,
        connect_timeout: float = 5.0,
        dns_ttl: float = 30.0,
        admission: Admission | None = None,
        idle_timeout: float = 30.0,
        tls_handshake_timeout: float = 10.0,
    ) -> None:
        """``admission`` bounds the connections our listeners accept (default: caps
        derived from the descriptor limit); ``idle_timeout`` closes inbound connections
        without a complete SIP message either way for that long; ``tls_handshake_timeout``
        bounds an inbound TLS handshake."""
        self.loop = asyncio.get_running_loop()
        self.on_message = on_message
        self.on_error = on_error
        self.tls_context = tls_context
        self.tls_server_context = tls_server_context
        self.connect_timeout = connect_timeout
        self.dns_ttl = dns_ttl
        self.admission = admission or make_admission("sip")
        self.idle_timeout = idle_timeout
        self.tls_handshake_timeout = tls_handshake_timeout
        self.tap: Tap | None = None
        self._listeners: dict[str, _Listener] = {}
        self._pool: dict[tuple[str, str, str, int], _StreamConnection] = {}
        self._connecting: dict[tuple[str, str, str, int], asyncio.Future[_StreamConnection]] = {}
        self._dns: dict[tuple[str, int, str, int], tuple[float, tuple[str, int]]] = {}
        self._closing = False
        self.malformed = 0
        """Datagrams dropped and stream connections closed because the SIP in them did not
        parse: the only trace of such garbage besides a log line (exported as a metric)."""

    # --- listening ------------------------------------------------------------------------

    async def listen(self, address: str, port: int = 0, *, tcp: bool = True) -> int:
        """Bind UDP (and TCP, and TLS on port+1 with a server context) on ``address``;
        return the SIP port. Port 0 picks a free port usable for UDP, TCP and (port+1)
        TLS; see :meth:`tls_port`."""
        if address in self._listeners:
            return self._listeners[address].udp.port
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        last: OSError | None = None
        for _ in range(1 if port else 20):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            servers: list[_StreamListener] = []
            try:
                sock.setblocking(False)
                sock.bind((address, port))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                if family == socket.AF_INET:
                    sock.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
                else:
                    sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
                bound = sock.getsockname()[1]
                if tcp:
                    servers.append(self._stream_listener("tcp", address, bound, family))
                if self.tls_server_context is not None:
                    servers.append(self._stream_listener("tls", address, bound + 1, family))
            except OSError as exc:
                sock.close()
                for server in servers:
                    server.close()
                last = exc
                continue
            endpoint = _UdpEndpoint(self, sock, address)
            try:
                await self.loop.create_datagram_endpoint(lambda e=endpoint: e, sock=sock)
            except OSError as exc:
                endpoint.close()
                for server in servers:
                    server.close()
                last = exc
                continue
            self._listeners[address] = _Listener(endpoint, servers)
            return bound
        raise OSError(
            last.errno if last else errno.EADDRINUSE, f"cannot listen on {address}: {last}"
        )

    def _stream_listener(self, name: str, address: str, port: int, family: int
                         ) -> _StreamListener:
        if port > 65535:  # the TLS port of a SIP port 65535
            raise OSError(errno.EADDRNOTAVAIL, f"no {name} port above {port - 1}")
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            # Name the port: the TLS one is not the SIP port the operator configured.
            raise OSError(exc.errno, f"{name.upper()} port {port}: {exc.strerror or exc}"
                          ) from None
        return _StreamListener(self, name, address, sock,
                               self.tls_server_context if name == "tls" else None)

    def unlisten(self, address: str) -> None:
        """Close the UDP, TCP and TLS listeners on ``address`` (an edge removed by a
        reload). Connections already made stay until they end."""
        listener = self._listeners.pop(address, None)
        if listener is not None:
            listener.udp.close()
            for server in listener.servers:
                server.close()

    def local_port(self, address: str) -> int | None:
        listener = self._listeners.get(address)
        return listener.udp.port if listener else None

    def tls_port(self, address: str) -> int | None:
        """The port of the TLS listener on ``address`` (the SIP port + 1), or None when
        there is none (no server context): a Contact may say ``transport=tls`` only then."""
        listener = self._listeners.get(address)
        if listener is None:
            return None
        for server in listener.servers:
            if server.transport_name == "tls":
                return int(server.sock.getsockname()[1])
        return None

    # --- sending --------------------------------------------------------------------------

    async def resolve(self, host: str, port: int, transport: str, local: str) -> tuple[str, int]:
        """(ip, port) for ``host``: literal IPs as they are, names by A/AAAA of the local
        address's family (the socket could not reach the other family anyway)."""
        host = host.strip("[]")
        if _is_ip(host):
            return host, port
        family = socket.AF_INET6 if ":" in local else socket.AF_INET
        key = (host.lower(), port, transport, family)
        cached = self._dns.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        try:
            infos = await self.loop.getaddrinfo(host, port, family=family, type=kind)
        except OSError as exc:
            raise TransportError(f"cannot resolve {host}: {exc}") from None
        if not infos:
            raise TransportError(f"cannot resolve {host}: no address")
        sockaddr = infos[0][4]
        result = (str(sockaddr[0]), int(sockaddr[1]))
        self._dns[key] = (now + self.dns_ttl, result)
        return result

    async def send(self, data: bytes, destination: Destination, local: str) -> tuple[str, int]:
        """Send ``data`` from ``local`` (an address given to :meth:`listen`) to
        ``destination``; return the peer (ip, port) used. Raises :class:`TransportError`."""
        listener = self._listeners.get(local)
        if listener is None:
            raise TransportError(f"no SIP socket on {local}")
        peer = await self.resolve(destination.host, destination.port, destination.transport, local)
        if destination.transport == "udp":
            listener.udp.sendto(data, peer)
        elif destination.transport in ("tcp", "tls"):
            connection = await self._connection(local, destination, peer)
            connection.write(data)
        else:
            raise TransportError(f"unsupported transport {destination.transport}")
        if self.tap is not None:
            self.tap("out", destination.transport, local, peer, data)
        return peer

    async def _connection(
        self, local: str, destination: Destination, peer: tuple[str, int]
    ) -> _StreamConnection:
        key = (local, destination.transport, peer[0], peer[1])
        existing = self._pool.get(key)
        if existing is not None and existing.transport and not existing.transport.is_closing():
            return existing
        pending = self._connecting.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[_StreamConnection] = self.loop.create_future()
        self._connecting[key] = future
        try:
            connection = await self._connect(local, destination, peer)
        except TransportError as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it themselves
            raise
        else:
            future.set_result(connection)
            return connection
        finally:
            self._connecting.pop(key, None)

    async def _connect(
        self, local: str, destination: Destination, peer: tuple[str, int]
    ) -> _StreamConnection:
        tls = destination.transport == "tls"
        context: ssl.SSLContext | None = None
        if tls:
            context = self.tls_context or client_tls_context()
        what = f"{destination.transport.upper()} connection to {peer[0]}:{peer[1]}"
        try:
            _, protocol = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: _StreamConnection(self, destination.transport, local),
                    host=peer[0],
                    port=peer[1],
                    local_addr=(local, 0),
                    ssl=context,
                    # Verify the name we were given (a host name or the literal IP).
                    server_hostname=destination.host.strip("[]") if tls else None,
                ),
                self.connect_timeout,
            )
        except TimeoutError:
            raise TransportError(f"{what}: timed out") from None
        except ssl.SSLError as exc:
            raise TransportError(f"{what}: TLS failure: {exc.reason or exc}") from None
        except OSError as exc:
            raise TransportError(f"{what}: {exc.strerror or exc}") from None
        assert isinstance(protocol, _StreamConnection)
        return protocol

    # --- receiving ------------------------------------------------------------------------

    def _datagram(self, endpoint: _UdpEndpoint, data: bytes, peer: tuple[str, int]) -> None:
        if not data.strip(b"\r\n\x00 "):
            return  # keepalive
        try:
            message = parse_message(data)
        except SipParseError as exc:
            self.malformed += 1
            log.debug("dropping malformed datagram from %s:%s: %s", peer[0], peer[1], exc)
            return
        self._deliver(message, peer, "udp", endpoint.address, data)

    def _deliver(
        self,
        message: Message,
        peer: tuple[str, int],
        transport: str,
        local: str,
        raw: bytes | None,
    ) -> None:
        if self.tap is not None:
            self.tap("in", transport, local, peer, raw if raw is not None else message.to_bytes())
        try:
            self.on_message(message, peer, transport, local)
        except Exception:
            log.exception("error handling a SIP message from %s:%s", peer[0], peer[1])

    def _register(self, connection: _StreamConnection) -> None:
        assert connection.peer is not None
        key = (connection.address, connection.transport_name, *connection.peer)
        self._pool[key] = connection

    def _unregister(self, connection: _StreamConnection) -> None:
        if connection.peer is None:
            return
        key = (connection.address, connection.transport_name, *connection.peer)
        if self._pool.get(key) is connection:
            del self._pool[key]

    def _lost(self, connection: _StreamConnection) -> None:
        assert connection.peer is not None
        if self.on_error is not None:
            self.on_error(
                connection.address, connection.transport_name, connection.peer, "connection lost"
            )

    def _unreachable(self, local: str, transport: str, peer: tuple[str, int], code: int) -> None:
        if self.on_error is not None:
            self.on_error(local, transport, peer, errno.errorcode.get(code, str(code)))

    def send_reply(self, data: bytes, peer: tuple[str, int], transport: str, local: str) -> None:
        """Send a stateless reply back the way a request came (no resolution, no connect)."""
        listener = self._listeners.get(local)
        if listener is None:
            return
        try:
            if transport == "udp":
                listener.udp.sendto(data, peer)
            else:
                connection = self._pool.get((local, transport, *peer))
                if connection is None:
                    return
                connection.write(data)
        except TransportError as exc:
            log.debug("stateless reply to %s:%s failed: %s", peer[0], peer[1], exc)
            return
        if self.tap is not None:
            self.tap("out", transport, local, peer, data)

    # --- shutdown -------------------------------------------------------------------------

    async def close(self) -> None:
        """Close every socket and connection."""
        self._closing = True
        connections = list(self._pool.values())
        for connection in connections:
            if connection.transport is not None:
                connection.transport.close()
        for listener in self._listeners.values():
            listener.udp.close()
            for server in listener.servers:
                server.close()
        if connections:
            await asyncio.wait([c.closed for c in connections], timeout=0.2)
        self._listeners.clear()
        self._pool.clear()
