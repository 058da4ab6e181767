"""Structured log fields for everything an API request logs: the account, call, Siprec and
Recording SIDs named in its path (see :func:`mediafork.daemon.logs.log_fields`).

Only well-formed SIDs are attached: the path is the client's text, and a value with a
newline in it would forge a line in a text log. For host API requests (``/v1/Calls``) the
account is the authenticated one, set by the handler's own log lines where it matters.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from ..control.sids import ACCOUNT, CALL, RECORDING, SIPREC, is_sid
from ..daemon.logs import log_fields

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _sid(value: str | None, prefix: str) -> str | None:
    return value if value is not None and is_sid(value, prefix) else None


@web.middleware
async def log_context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    info = request.match_info
    resource = info.get("Sid")  # a Siprec (by SID; names are not logged as fields) or Recording
    with log_fields(account_sid=_sid(info.get("AccountSid"), ACCOUNT),
                    call_sid=_sid(info.get("CallSid"), CALL),
                    siprec_sid=_sid(resource, SIPREC),
                    recording_sid=_sid(resource, RECORDING)):
        return await handler(request)
