"""Bounds on the HTTP API's connections: caps, a header timeout and an idle timeout.

aiohttp has one timer of its own (``keepalive_timeout``), which neither limits how long a
client may take to send a request head nor counts anything, and no cap on connections.
So the server's protocol factory is wrapped (:func:`admitted_factory`): each accepted
connection first passes :class:`~mediafork.admission.Admission` (over a cap it is aborted
at once, before aiohttp sees it), then gets a timer:

* from accept, and from the first byte after an idle period, the request head must be
  complete within ``header_timeout`` (a slowloris sending half a head is closed), and a body
  announced by ``Content-Length`` must follow within ``header_timeout`` too;
* between requests, a keep-alive connection may stay silent for ``idle_timeout``.

The wrapper learns where a request begins and ends from :func:`request_bounds`, a
middleware (the head is complete when aiohttp calls the application). Everything else is
passed through to aiohttp's own protocol untouched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..admission import Admission

__all__ = ["AdmittedConnection", "admitted_factory", "request_bounds"]

_IDLE, _HEAD, _REQUEST = "idle", "head", "request"


class AdmittedConnection(asyncio.Protocol):
    """One accepted HTTP connection: admission, timers, then aiohttp's protocol."""

    def __init__(self, make_inner: Callable[[], asyncio.Protocol], admission: Admission,
                 header_timeout: float, idle_timeout: float) -> None:
        self._make_inner = make_inner
        self._admission = admission
        self._header_timeout = header_timeout
        self._idle_timeout = idle_timeout
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._peer: str | None = None
        self._state = _HEAD
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peername = transport.get_extra_info("peername")
        self._peer = str(peername[0]) if peername else None
        if self._admission.admit(self._peer) is not None:
            # abort, not close: the descriptor is freed now, without a FIN handshake.
            transport.abort()  # type: ignore[attr-defined]
            return
        self._transport = transport  # type: ignore[assignment]
        self._arm(self._header_timeout, "header_timeout")
        self._inner = self._make_inner()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        if self._state == _IDLE:  # the next request starts: its head has a deadline now
            self._state = _HEAD
            self._arm(self._header_timeout, "header_timeout")
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        if self._transport is None:
            return  # refused at accept: it never held a slot
        self._transport = None
        self._admission.release(self._peer)
        if self._inner is not None:
            self._inner.connection_lost(exc)
            self._inner = None

    # -- request bounds (from the middleware) -------------------------------------------------
    def request_started(self) -> None:
        self._state = _REQUEST
        self._cancel()  # the handler's own work is not bounded here

    async def body_arrives(self, request: web.Request) -> bool:
        """Read the announced body within ``header_timeout``; False (and the connection
        closed) when it does not come. Bodies the handler refuses anyway (over the size
        limit) or streams itself (multipart) are left to it."""
        length = request.content_length
        if (not length or length > request.client_max_size
                or request.content_type.startswith("multipart/")):
            return True
        try:
            # read() keeps the body: the handler's post()/json() get it from there.
            await asyncio.wait_for(request.read(), self._header_timeout)
        except TimeoutError:
            if self._transport is not None:
                self._admission.closed("header_timeout")
                self._transport.abort()
            return False
        return True

    def request_finished(self) -> None:
        if self._transport is None:
            return
        self._state = _IDLE
        self._arm(self._idle_timeout, "idle_timeout")

    # -- timers -------------------------------------------------------------------------------
    def _arm(self, delay: float, reason: str) -> None:
        self._cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(delay, self._expire, reason, delay)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, reason: str, delay: float) -> None:
        self._timer = None
        transport = self._transport
        if transport is None or self._state == _REQUEST:
            return
        if reason == "idle_timeout" and transport.get_write_buffer_size():
            # The last response is still being written to a slow reader: not idle.
            self._arm(delay, reason)
            return
        self._admission.closed(reason)
        transport.abort()


def admitted_factory(server: Callable[[], asyncio.Protocol], admission: Admission, *,
                     header_timeout: float, idle_timeout: float
                     ) -> Callable[[], AdmittedConnection]:
    """A protocol factory for ``loop.create_server`` around aiohttp's ``web.Server``."""

    def factory() -> AdmittedConnection:
        return AdmittedConnection(server, admission, header_timeout, idle_timeout)

    return factory


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def request_bounds(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tell the connection's :class:`AdmittedConnection` that a request head arrived and,
    when the handler is done, that the connection is idle again. Install it first (outermost)
    so it sees every request, including those other middlewares turn into errors."""
    transport = request.transport
    connection = transport.get_protocol() if transport is not None else None
    if not isinstance(connection, AdmittedConnection):
        return await handler(request)
    connection.request_started()
    try:
        if not await connection.body_arrives(request):
            raise web.HTTPRequestTimeout()  # the connection is closed already
        return await handler(request)
    finally:
        connection.request_finished()
