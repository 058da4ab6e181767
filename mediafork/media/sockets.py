"""Media sockets: UDP port allocation inside a configured range.

Sockets are made and bound here, where a bind error can be raised as a clear
Python exception, then their descriptors are handed to the C worker, which
owns (and eventually closes) them.
"""

from __future__ import annotations

import errno
import socket
import threading

# Linux values; the socket module does not export all of them.
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)

INGRESS_BUFFER = 1 << 20  # ~3,000 packets of 172 bytes: rides out worker hiccups
EGRESS_BUFFER = 1 << 19


class PortsExhausted(OSError):
    """No free port pair is left in the configured media port range."""


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _set_buffer(sock: socket.socket, force_opt: int, opt: int, size: int) -> None:
    # SO_*BUFFORCE passes net.core.[rw]mem_max when we are privileged.
    try:
        sock.setsockopt(socket.SOL_SOCKET, force_opt, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, opt, size)


def udp_socket(address: str, port: int, *, receive_buffer: int = 0, send_buffer: int = 0,
               report_errors: bool = False) -> socket.socket:
    """A non-blocking UDP socket bound to address:port (port 0: any)."""
    family = _family(address)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if receive_buffer:
            _set_buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, receive_buffer)
        if send_buffer:
            _set_buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, send_buffer)
        if report_errors:
            # ICMP errors (port unreachable) on an unconnected socket are only
            # reported through the error queue; the worker reads it.
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        sock.bind((address, port))
    except BaseException:
        sock.close()
        raise
    return sock


class PortAllocator:
    """Hands out even ports (RTP convention) from [low, high], round robin.

    A port that the OS refuses (in use by someone else) is skipped; the
    allocator never holds state about released ports beyond its cursor, the
    kernel is the source of truth for what is free.
    """

    def __init__(self, low: int, high: int) -> None:
        if not (1024 <= low < high <= 65535):
            raise ValueError(f"invalid media port range [{low}, {high}]")
        self.low = low + (low & 1)
        self.high = high
        self._cursor = self.low
        self._lock = threading.Lock()
        self.exhausted = False
        """True from a request that found no free ports until the next one that did
        (the daemon's /readyz reports it)."""

    def bind(self, address: str, count: int = 1, *, rtcp_pairs: bool = False,
             **options: int | bool) -> list[socket.socket]:
        """Bind `count` sockets on consecutive even ports (p, p+2, ...). With
        ``rtcp_pairs`` each even port p also gets p+1 (RFC 3550 §11), returned
        right after it: [p, p+1, p+2, p+3, ...]."""
        span = 2 * count
        last = span - (1 if rtcp_pairs else 2)  # offset of the highest port bound from base
        slots = (self.high - self.low + 1) // 2
        with self._lock:
            for _ in range(slots):
                base = self._cursor
                self._cursor += span
                if self._cursor + span - 2 > self.high:
                    self._cursor = self.low
                if base + last > self.high:  # an RTCP port past the range is not ours
                    continue
                sockets: list[socket.socket] = []
                try:
                    for i in range(count):
                        sockets.append(udp_socket(address, base + 2 * i, **options))  # type: ignore[arg-type]
                        if rtcp_pairs:
                            sockets.append(udp_socket(address, base + 2 * i + 1, **options))  # type: ignore[arg-type]
                    self.exhausted = False
                    return sockets
                except OSError as exc:
                    for s in sockets:
                        s.close()
                    if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                        raise
            self.exhausted = True
        raise PortsExhausted(f"no free media ports in [{self.low}, {self.high}] on {address}")
