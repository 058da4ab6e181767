"""A thin asyncio UDP adapter around :class:`~mediafork.mediasource.ng.NgProtocol`.

One socket per rtpengine, one timer for every retransmission and timeout. Datagrams from any
address but rtpengine's are dropped and counted before they reach the protocol core.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Mapping
from typing import Any

from .errors import NgBadReply, NgClosed
from .ng import MAX_DATAGRAM, Completion, NgProtocol, NgTiming

__all__ = ["NgClient"]


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, client: NgClient) -> None:
        self.client = client

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.client._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        # An unconnected socket hears no ICMP for rtpengine; a local send error (e.g. no
        # route) leaves the request to time out with a clear NgTimeout.
        self.client.counters["socket_errors"] += 1


class NgClient:
    """Requests to one rtpengine's ``listen-ng`` address over UDP.

    ``await NgClient.connect(("127.0.0.1", 22222))``; ``await client.request({...})`` returns
    the reply dictionary or raises a :class:`~mediafork.mediasource.errors.MediaSourceError`;
    ``close()`` fails every waiting request with NgClosed and closes the socket (on the
    loop's next turn: never left to the garbage collector)."""

    def __init__(self, address: tuple[str, int], *, timing: NgTiming | None = None,
                 max_outstanding: int = 1024) -> None:
        host = str(ipaddress.ip_address(address[0]))  # a literal address: replies are matched on it
        self.address = (host, int(address[1]))
        self._core = NgProtocol(timing or NgTiming(), max_outstanding)
        self._transport: asyncio.DatagramTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._closed = False
        self.counters = {"foreign": 0, "socket_errors": 0}

    @classmethod
    async def connect(cls, address: tuple[str, int], *, timing: NgTiming | None = None,
                      max_outstanding: int = 1024) -> NgClient:
        """A client with its socket open (bound to an ephemeral port)."""
        client = cls(address, timing=timing, max_outstanding=max_outstanding)
        await client.open()
        return client

    async def open(self) -> None:
        if self._transport is not None or self._closed:
            raise RuntimeError("NgClient.open() is called once, before close()")
        self._loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET
        local = "::" if family == socket.AF_INET6 else "0.0.0.0"
        if ipaddress.ip_address(self.address[0]).is_loopback:
            local = self.address[0]
        transport, _ = await self._loop.create_datagram_endpoint(
            lambda: _Datagrams(self), local_addr=(local, 0), family=family)
        self._transport = transport  # type: ignore[assignment]

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def outstanding(self) -> int:
        return self._core.outstanding

    @property
    def protocol_counters(self) -> dict[str, int]:
        return dict(self._core.counters)

    @property
    def local_address(self) -> tuple[str, int] | None:
        if self._transport is None:
            return None
        return self._transport.get_extra_info("sockname")[:2]

    async def request(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """Send one request and wait for its reply (retransmitting as the timing says)."""
        if self._closed or self._transport is None or self._loop is None:
            raise NgClosed("the NG client is closed")
        cookie, datagram = self._core.request(message, self._loop.time())
        waiter: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self._waiters[cookie] = waiter
        self._transport.sendto(datagram, self.address)
        self._reschedule()
        try:
            return await waiter
        finally:
            self._waiters.pop(cookie, None)
            if self._core.is_pending(cookie):  # the caller gave up: stop retransmitting
                self._core.cancel(cookie)
                self._reschedule()

    async def ping(self) -> None:
        """Raises unless rtpengine answers ``pong``."""
        reply = await self.request({"command": "ping"})
        if reply.get("result") != "pong":
            raise NgBadReply("rtpengine answered ping without pong")

    def close(self) -> None:
        """Close the socket now and fail every waiting request. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._core.cancel_all()
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(NgClosed("the NG client was closed"))
        if self._transport is not None:
            # Stops reading at once; the loop closes the descriptor on its next turn (closing
            # it here as well could close a reused descriptor number twice under uvloop).
            self._transport.abort()

    async def __aenter__(self) -> NgClient:
        if self._transport is None:
            await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------
    def _on_datagram(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if self._closed or self._loop is None:
            return
        if not _same_address(addr, self.address) or len(data) > MAX_DATAGRAM:
            self.counters["foreign"] += 1
            return
        completion = self._core.receive(data, self._loop.time())
        if completion is not None:
            self._complete(completion)
            self._reschedule()

    def _on_timer(self) -> None:
        self._timer = None
        if self._closed or self._loop is None or self._transport is None:
            return
        resend, expired = self._core.poll(self._loop.time())
        for datagram in resend:
            self._transport.sendto(datagram, self.address)
        for completion in expired:
            self._complete(completion)
        self._reschedule()

    def _complete(self, completion: Completion) -> None:
        waiter = self._waiters.get(completion.cookie)
        if waiter is None or waiter.done():
            return
        if completion.error is not None:
            waiter.set_exception(completion.error)
        else:
            waiter.set_result(completion.reply or {})

    def _reschedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self._core.next_deadline()
        if deadline is not None and self._loop is not None and not self._closed:
            self._timer = self._loop.call_at(deadline, self._on_timer)


def _same_address(addr: tuple[Any, ...], expected: tuple[str, int]) -> bool:
    try:
        host = str(ipaddress.ip_address(str(addr[0]).split("%")[0]))
    except ValueError:
        return False
    if host.startswith("::ffff:"):
        host = host[7:]
    return host == expected[0] and int(addr[1]) == expected[1]
