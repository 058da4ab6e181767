"""The host call API over a Unix socket with msgpack framing, for hosts that are not Python.

Framing: each message is a 4-byte big-endian length followed by that many bytes of one
msgpack map. Frames over :data:`MAX_FRAME` close the connection (a peer that sends one is
broken or hostile; resynchronising is impossible).

Requests carry an ``op`` and an optional ``id`` echoed in the reply::

    {"id": 1, "op": "auth", "account_sid": "AC…", "auth_token": "…"}     must come first
    {"id": 2, "op": "register", "call": {…same body as POST /v1/Calls…}}
    {"id": 3, "op": "get", "call_sid": "CA…"}
    {"id": 4, "op": "list"}
    {"id": 5, "op": "update", "call_sid": "CA…", "from": "…", "to": "…"}
    {"id": 6, "op": "end", "call_sid": "CA…"}
    {"id": 11, "op": "event", "call_sid": "CA…", "event": "hold", "track": "inbound"}
                                                    call events (POST …/Events' body)
    {"id": 7, "op": "subscribe"}                    then events arrive as they happen
    {"id": 8, "op": "reload"}                       re-read the config file (mediafork reload)
    {"id": 9, "op": "pause_siprec", "call_sid": "CA…", "siprec": "SR… or its name"}
    {"id": 10, "op": "resume_siprec", "call_sid": "CA…", "siprec": "SR… or its name"}

``pause_siprec`` / ``resume_siprec`` do what ``POST …/Siprec/{Sid}.json`` with ``Status=paused``
/ ``Status=in-progress`` does (the forks stop, the recorder gets a re-INVITE with
``a=inactive``; resuming offers ``a=sendonly`` again) and answer the Siprec resource; the
status callbacks ``siprec-paused`` / ``siprec-resumed`` also reach subscribers as events.

Replies: ``{"id", "ok": true, "result": …}`` or ``{"id", "ok": false, "error": {code,
message, more_info, status}}`` (the REST error shape). Events: ``{"event": TYPE,
"account_sid": "AC…", "data": {…}}`` where TYPE is ``call-registered``, ``call-updated``,
``call-event``, ``call-ended`` or a status-callback event (``siprec-started``…, recording statuses) and data
its parameters. Only the authenticated account's events are sent. The socket file is created
with mode 0600: the credentials are still required, so a shared host is not a weakness.

Connections are bounded like every listener's (:mod:`mediafork.admission`): over the cap a new
connection is closed at once, and one that has not subscribed to events is closed after
``idle_timeout`` seconds without a complete frame (a subscriber only listens, so it may stay).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack

from ..admission import Admission, make_admission
from ..control import errors
from ..control.errors import ApiError
from ..daemon.service import ControlService, ServiceEvent

log = logging.getLogger("mediafork.control_socket")

__all__ = ["MAX_FRAME", "ControlSocketServer", "read_frame", "write_frame"]

MAX_FRAME = 1024 * 1024
_SIPREC_OPS = ("pause_siprec", "resume_siprec")
_HEADER = struct.Struct("!I")


class FrameError(Exception):
    pass


async def read_frame(reader: asyncio.StreamReader) -> Any:
    """One decoded message, or None at a clean end of stream."""
    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise FrameError("truncated frame header") from None
        return None
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME:
        raise FrameError(f"frame of {length} bytes exceeds {MAX_FRAME}")
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise FrameError("truncated frame") from None
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as exc:
        raise FrameError(f"not msgpack: {type(exc).__name__}") from None


def encode_frame(message: Any) -> bytes:
    body = msgpack.packb(message, use_bin_type=True)
    return _HEADER.pack(len(body)) + body


async def write_frame(writer: asyncio.StreamWriter, message: Any) -> None:
    writer.write(encode_frame(message))
    await writer.drain()


Reload = Callable[[], Awaitable[Any]]
"""The daemon's reload: returns a :class:`~mediafork.daemon.reload.ReloadPlan` or raises."""


class _Connection:
    def __init__(self, service: ControlService, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, admission: Admission,
                 idle_timeout: float, reload: Reload | None = None) -> None:
        self.service = service
        self.reload = reload
        self.admission = admission
        self.idle_timeout = idle_timeout
        self.reader = reader
        self.writer = writer
        self.account: str | None = None
        self.lock = asyncio.Lock()  # replies and events never interleave inside a frame
        self.events: asyncio.Queue[ServiceEvent | None] | None = None
        self.forwarder: asyncio.Task[None] | None = None

    async def send(self, message: Any) -> None:
        async with self.lock:
            await write_frame(self.writer, message)

    async def run(self) -> None:
        try:
            while True:
                message = await self.next_frame()
                if message is None:
                    return
                await self.send(await self.handle(message))
        except FrameError as exc:
            log.info("control socket: closing a connection: %s", exc)
            with contextlib.suppress(Exception):
                await self.send({"ok": False, "error": ApiError(
                    errors.HTTP_REQUEST_REJECTED, "malformed frame").to_dict()})
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            await self.close()

    async def next_frame(self) -> Any:
        """The next request; None at the end of the stream or after ``idle_timeout``
        without one on a connection that has not subscribed."""
        if self.events is not None:
            return await read_frame(self.reader)
        try:
            return await asyncio.wait_for(read_frame(self.reader), self.idle_timeout)
        except TimeoutError:
            self.admission.closed("idle_timeout")
            return None

    async def close(self) -> None:
        if self.events is not None:
            self.service.unsubscribe(self.events)
        if self.forwarder is not None:
            self.forwarder.cancel()
            with contextlib.suppress(BaseException):
                await self.forwarder
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()

    async def handle(self, message: Any) -> dict[str, Any]:
        request_id = message.get("id") if isinstance(message, dict) else None
        try:
            if not isinstance(message, dict):
                raise ApiError(errors.HTTP_REQUEST_REJECTED, "a request must be a map")
            result = await self.dispatch(message)
            return {"id": request_id, "ok": True, "result": result}
        except ApiError as exc:
            return {"id": request_id, "ok": False, "error": exc.to_dict()}
        except Exception:
            log.exception("control socket: %s failed", message.get("op"))
            return {"id": request_id, "ok": False,
                    "error": ApiError(errors.INTERNAL, "internal server error").to_dict()}

    async def dispatch(self, message: dict[str, Any]) -> Any:
        op = message.get("op")
        if op == "auth":
            account, token = message.get("account_sid"), message.get("auth_token")
            if not (isinstance(account, str) and isinstance(token, str)
                    and self.service.authenticate(account, token)):
                raise errors.authenticate()
            self.account = account
            return {"account_sid": account}
        if self.account is None:
            raise errors.authenticate()
        account = self.account
        service = self.service
        call_sid = message.get("call_sid")
        if op in ("get", "update", "event", "end", *_SIPREC_OPS) and not isinstance(call_sid, str):
            raise errors.not_found("resource")
        if op in _SIPREC_OPS:
            siprec = message.get("siprec")
            if not isinstance(siprec, str) or not siprec:
                raise ApiError(errors.MISSING_PARAMETER,
                               "siprec (the Siprec's SID or name) is required")
            change = service.pause_siprec if op == "pause_siprec" else service.resume_siprec
            return await change(account, call_sid, siprec)  # type: ignore[arg-type]
        if op == "register":
            body = message.get("call")
            if not isinstance(body, dict):
                raise ApiError(errors.MISSING_PARAMETER, "call must be a map")
            return await service.register_call(account, body)
        if op == "get":
            return await service.call_view(account, call_sid)  # type: ignore[arg-type]
        if op == "list":
            return await service.list_calls(account)
        if op == "update":
            body = {k: v for k, v in message.items() if k in ("from", "to")}
            return await service.update_call(account, call_sid, body)  # type: ignore[arg-type]
        if op == "event":
            # The same body as POST /v1/Calls/{CallSid}/Events, beside op/id/call_sid.
            body = {k: v for k, v in message.items() if k not in ("id", "op", "call_sid")}
            return await service.call_event(account, call_sid, body)  # type: ignore[arg-type]
        if op == "end":
            await service.end_call(account, call_sid)  # type: ignore[arg-type]
            return None
        if op == "reload":
            return await self._reload()
        if op == "subscribe":
            if self.events is None:
                self.events = service.subscribe()
                self.forwarder = asyncio.get_running_loop().create_task(self.forward(account))
            return {"subscribed": True}
        raise ApiError(errors.INVALID_PARAMETER, "op must be one of auth, register, get, "
                       "list, update, event, end, subscribe, reload, pause_siprec, "
                       "resume_siprec")

    async def _reload(self) -> dict[str, Any]:
        """Counts only: the plan names other accounts' SIDs and connectors, which an
        account's credentials must not reveal (the log has the full summary)."""
        from ..daemon.process import ReloadError

        if self.reload is None:
            raise ApiError(errors.INVALID_PARAMETER, "this daemon cannot reload")
        try:
            plan = await self.reload()
        except ReloadError as exc:
            raise ApiError(errors.INVALID_PARAMETER, f"reload refused: {exc}") from None
        return {"reloaded": True, "added": len(plan.added), "changed": len(plan.changed),
                "removed": len(plan.removed), "restart_required": list(plan.restart_required)}

    async def forward(self, account: str) -> None:
        assert self.events is not None
        while True:
            event = await self.events.get()
            if event is None:
                return
            if event.account_sid != account:
                continue
            try:
                await self.send({"event": event.type, "account_sid": event.account_sid,
                                 "data": event.data})
            except (ConnectionError, RuntimeError):
                return


class ControlSocketServer:
    """``await ControlSocketServer(service, path).start()``; ``await close()`` at the end."""

    def __init__(self, service: ControlService, path: str | os.PathLike[str], *,
                 admission: Admission | None = None, idle_timeout: float = 300.0,
                 reload: Reload | None = None) -> None:
        """``admission`` caps the open connections (default: derived from the descriptor
        limit; a Unix socket has no peer address, so only the total cap applies)."""
        self.service = service
        self.path = Path(path)
        self.admission = admission or make_admission("control_socket", per_peer=False)
        self.idle_timeout = idle_timeout
        self.reload = reload
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if self.path.is_socket():
                self.path.unlink()  # left by a previous process
        # umask so the socket is never reachable by others, not even briefly.
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._accept, path=str(self.path),
                                                           limit=MAX_FRAME + 16)
        finally:
            os.umask(old)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.admission.admit(None) is not None:
            writer.transport.abort()  # over the cap: the descriptor goes at once
            return
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            await _Connection(self.service, reader, writer, self.admission,
                              self.idle_timeout, self.reload).run()
        finally:
            self.admission.release(None)
            if task is not None:
                self._connections.discard(task)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            if self._connections:
                await asyncio.gather(*self._connections, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
