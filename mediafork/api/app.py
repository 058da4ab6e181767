"""The HTTP server: Twilio-compatible REST (``/2010-04-01/…``) and the host call API (``/v1/…``).

Handlers are thin: authenticate, check the path, hand the request to
:class:`~mediafork.daemon.service.ControlService`, render its answer. Every error leaves as the
platform's JSON shape through :func:`error_middleware`, including aiohttp's own (404 for an
unknown path, 405, 413 for a body over the limit), so clients never see an HTML page and a
server error never carries a traceback or a secret.

Authentication is HTTP Basic ``AccountSid:AuthToken``, compared in constant time. A request
for another account's path, call or resource answers 404 exactly as a non-existent one does.
``/healthz`` and ``/readyz`` are left to the daemon (not registered here).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..control import callback_view, errors
from ..control.errors import ApiError
from ..control.forms import parse_recording_create, parse_recording_update
from ..control.sids import CALL, RECORDING, is_sid
from ..daemon.service import ControlService
from .log_context import log_context_middleware

log = logging.getLogger("mediafork.api")

__all__ = ["SERVICE_KEY", "build_app", "error_middleware", "ROUTES"]

SERVICE_KEY: web.AppKey[ControlService] = web.AppKey("mediafork_service", ControlService)

API = "/2010-04-01/Accounts/{AccountSid}"
CALL_PATH = API + "/Calls/{CallSid}"
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024

# (method, path) of every route: docs/openapi.yaml is checked against this by a test.
ROUTES: list[tuple[str, str]] = []

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d,
                                                                             ensure_ascii=False))


def _error_response(error: ApiError) -> web.Response:
    response = _json(error.to_dict(), status=error.status)
    if error.status == 401:
        response.headers["WWW-Authenticate"] = 'Basic realm="mediafork"'
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        declared = request.content_length
        if declared is not None and declared > request.client_max_size:
            # Refuse from the header alone: aiohttp would read (or wait for) up to the limit
            # of a body that can never be accepted before answering 413.
            raise web.HTTPRequestEntityTooLarge(max_size=request.client_max_size,
                                                actual_size=declared)
        return await handler(request)
    except ApiError as exc:
        return _error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            return _error_response(errors.not_found("resource"))
        reasons = {405: f"method {request.method} is not allowed on this path",
                   413: "the request body is too large"}
        reason = reasons.get(exc.status, "the request was rejected")
        return _error_response(ApiError(errors.HTTP_REQUEST_REJECTED, reason,
                                        status=exc.status))
    except Exception:
        # Anything else is a server bug, however ordinary its type: a ValueError here used to
        # be answered 400 and hid exactly such bugs. Client faults are ApiError by the time
        # they leave a handler (the body decoders below convert theirs). The traceback names
        # code, not request contents; the client gets no detail.
        log.exception("unhandled error on %s %s", request.method, request.rel_url.path)
        return _error_response(ApiError(errors.INTERNAL, "internal server error"))


# -- authentication and path checks ----------------------------------------------------------


def _authenticated_account(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        raise errors.authenticate()
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise errors.authenticate() from None
    account_sid, sep, token = decoded.partition(":")
    if not sep or not request.app[SERVICE_KEY].authenticate(account_sid, token):
        raise errors.authenticate()
    return account_sid


def _account(request: web.Request) -> str:
    """Authenticate and check the path's AccountSid: another account's path is a 404."""
    account_sid = _authenticated_account(request)
    if request.match_info.get("AccountSid", account_sid) != account_sid:
        raise errors.not_found("resource")
    return account_sid


def _call_sid(request: web.Request) -> str:
    call_sid = request.match_info["CallSid"]
    if not is_sid(call_sid, CALL):
        raise errors.not_found("resource")
    return call_sid


_UNDECODABLE_BODY = (UnicodeError, ValueError, LookupError, HttpProcessingError)
"""What decoding a client's body can raise: invalid UTF-8, a malformed form, LookupError for a
declared charset Python does not know, HttpProcessingError for multipart part headers aiohttp
cannot parse. Caught around the decoding only, where it can only be the client's fault."""


async def _form(request: web.Request) -> Any:
    try:
        return await request.post()
    except _UNDECODABLE_BODY:
        raise ApiError(errors.HTTP_REQUEST_REJECTED,
                       "the request body could not be decoded") from None


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json(loads=json.loads) if await request.read() else {}
    except (*_UNDECODABLE_BODY, RecursionError):
        # RecursionError: deeply nested arrays/objects ("[[[[…") fit easily under the size
        # limit and exhaust json's recursion depth; that is the client's fault, not a 500.
        raise ApiError(errors.HTTP_REQUEST_REJECTED, "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(errors.HTTP_REQUEST_REJECTED, "the body must be a JSON object")
    return body


# -- Siprec -------------------------------------------------------------------------------


async def create_siprec(request: web.Request) -> web.Response:
    account = _account(request)
    call_sid = _call_sid(request)
    form = await _form(request)
    result = await request.app[SERVICE_KEY].create_siprec(account, call_sid, form)
    # 201, as issue 4 says; the reference OpenAPI documents 200 and the official client
    # accepts any 2xx for a create (docs/api.md).
    return _json(result, status=201)


async def update_siprec(request: web.Request) -> web.Response:
    account = _account(request)
    call_sid = _call_sid(request)
    form = await _form(request)
    result = await request.app[SERVICE_KEY].update_siprec(
        account, call_sid, request.match_info["Sid"], form)
    return _json(result)


async def fetch_siprec(request: web.Request) -> web.Response:
    account = _account(request)
    call_sid = _call_sid(request)
    return _json(await request.app[SERVICE_KEY].fetch_siprec(
        account, call_sid, request.match_info["Sid"]))


async def list_siprecs(request: web.Request) -> web.Response:
    account = _account(request)
    call_sid = _call_sid(request)
    return _json(await request.app[SERVICE_KEY].list_siprecs(account, call_sid, request.query))


# -- Calls (TwiML) ------------------------------------------------------------------------


async def update_call(request: web.Request) -> web.Response:
    account = _account(request)
    call_sid = _call_sid(request)
    form = await _form(request)
    values = form.getall("Twiml", [])
    if not values or not values[0]:
        raise ApiError(errors.MISSING_PARAMETER,
                       "Twiml is required (mediafork does not fetch Url or change Status)")
    if len(values) > 1:
        raise ApiError(errors.REPEATED_PARAMETER, "Twiml must be given at most once")
    return _json(await request.app[SERVICE_KEY].run_twiml(account, call_sid, values[0]))


# -- Recordings -----------------------------------------------------------------------------


def _recording_sid(request: web.Request) -> str:
    sid = request.match_info["Sid"]
    if not is_sid(sid, RECORDING):
        raise errors.not_found("resource")
    return sid


async def create_recording(request: web.Request) -> web.Response:
    account = _account(request)
    call_sid = _call_sid(request)
    service = request.app[SERVICE_KEY]
    # The daemon's own policy, so the refusal reads as it does for Siprecs and TwiML.
    parsed = parse_recording_create(await _form(request), service.outbox.dispatcher.egress)
    result = await service.create_recording(account, call_sid, parsed)
    return _json(result, status=201)


async def list_recordings(request: web.Request) -> web.Response:
    account = _account(request)
    call_sid = _call_sid(request)
    return _json(await request.app[SERVICE_KEY].list_recordings(account, call_sid,
                                                                 request.query))


async def fetch_recording(request: web.Request) -> web.Response:
    account = _account(request)
    call_sid = _call_sid(request)
    sid = _recording_sid(request)
    return _json(await request.app[SERVICE_KEY].fetch_recording(account, call_sid, sid))


async def update_recording(request: web.Request) -> web.Response:
    account = _account(request)
    call_sid = _call_sid(request)
    sid = _recording_sid(request)
    parsed = parse_recording_update(await _form(request))
    return _json(await request.app[SERVICE_KEY].update_recording(account, call_sid, sid,
                                                                  parsed))


async def delete_recording(request: web.Request) -> web.Response:
    account = _account(request)
    call_sid = _call_sid(request)
    sid = _recording_sid(request)
    await request.app[SERVICE_KEY].delete_recording(account, call_sid, sid)
    return web.Response(status=204)


async def recording_wav(request: web.Request) -> web.StreamResponse:
    account = _account(request)
    call_sid = _call_sid(request)
    sid = _recording_sid(request)
    path = await request.app[SERVICE_KEY].recording_wav(account, call_sid, sid)
    return web.FileResponse(path, headers={"Content-Type": "audio/x-wav"})


# -- the Call resource and account-level Recordings --------------------------------------------


async def fetch_call(request: web.Request) -> web.Response:
    account = _account(request)
    call_sid = _call_sid(request)
    return _json(await request.app[SERVICE_KEY].fetch_call(account, call_sid))


async def list_account_recordings(request: web.Request) -> web.Response:
    account = _account(request)
    return _json(await request.app[SERVICE_KEY].list_account_recordings(account, request.query))


async def _account_recording(request: web.Request) -> tuple[str, str, str]:
    """(account, call, recording) of an account-level recording route; 404 if not its own."""
    account = _account(request)
    sid = _recording_sid(request)
    return account, await request.app[SERVICE_KEY].recording_call(account, sid), sid


async def fetch_account_recording(request: web.Request) -> web.Response:
    account, call_sid, sid = await _account_recording(request)
    return _json(await request.app[SERVICE_KEY].fetch_recording(account, call_sid, sid))


async def delete_account_recording(request: web.Request) -> web.Response:
    account, call_sid, sid = await _account_recording(request)
    await request.app[SERVICE_KEY].delete_recording(account, call_sid, sid)
    return web.Response(status=204)


async def account_recording_wav(request: web.Request) -> web.StreamResponse:
    account, call_sid, sid = await _account_recording(request)
    path = await request.app[SERVICE_KEY].recording_wav(account, call_sid, sid)
    return web.FileResponse(path, headers={"Content-Type": "audio/x-wav"})


# -- host call API ------------------------------------------------------------------------------


async def register_call(request: web.Request) -> web.Response:
    account = _account(request)
    body = await _json_body(request)
    view = await request.app[SERVICE_KEY].register_call(account, body)
    return _json(view, status=201)


async def list_calls(request: web.Request) -> web.Response:
    account = _account(request)
    return _json(await request.app[SERVICE_KEY].list_calls(account))


async def get_call(request: web.Request) -> web.Response:
    account = _account(request)
    call_sid = _call_sid(request)
    return _json(await request.app[SERVICE_KEY].call_view(account, call_sid))


async def update_host_call(request: web.Request) -> web.Response:
    account = _account(request)
    call_sid = _call_sid(request)
    body = await _json_body(request)
    return _json(await request.app[SERVICE_KEY].update_call(account, call_sid, body))


async def host_call_event(request: web.Request) -> web.Response:
    account = _account(request)
    call_sid = _call_sid(request)
    body = await _json_body(request)
    return _json(await request.app[SERVICE_KEY].call_event(account, call_sid, body))


async def end_call(request: web.Request) -> web.Response:
    account = _account(request)
    call_sid = _call_sid(request)
    await request.app[SERVICE_KEY].end_call(account, call_sid)
    return web.Response(status=204)


async def list_callbacks(request: web.Request) -> web.Response:
    account = _account(request)
    states = callback_view.parse_states(request.query.get("State"))
    limit = callback_view.parse_page_size(request.query.get("PageSize"))
    service = request.app[SERVICE_KEY]
    return _json(await callback_view.list_callbacks(service.store, account, states, limit))


async def redeliver_callbacks(request: web.Request) -> web.Response:
    account = _account(request)
    ids = callback_view.parse_redeliver(await _json_body(request))
    service = request.app[SERVICE_KEY]
    return _json(await callback_view.redeliver(service.outbox, account, ids))


# -- the app ------------------------------------------------------------------------------------

_TABLE: list[tuple[str, str, Handler]] = [
    ("POST", CALL_PATH + "/Siprec.json", create_siprec),
    ("GET", CALL_PATH + "/Siprec.json", list_siprecs),
    ("POST", CALL_PATH + "/Siprec/{Sid}.json", update_siprec),
    ("GET", CALL_PATH + "/Siprec/{Sid}.json", fetch_siprec),
    ("POST", CALL_PATH + ".json", update_call),
    ("GET", CALL_PATH + ".json", fetch_call),
    ("GET", API + "/Recordings.json", list_account_recordings),
    ("GET", API + "/Recordings/{Sid}.json", fetch_account_recording),
    ("DELETE", API + "/Recordings/{Sid}.json", delete_account_recording),
    ("GET", API + "/Recordings/{Sid}.wav", account_recording_wav),
    ("POST", CALL_PATH + "/Recordings.json", create_recording),
    ("GET", CALL_PATH + "/Recordings.json", list_recordings),
    ("POST", CALL_PATH + "/Recordings/{Sid}.json", update_recording),
    ("GET", CALL_PATH + "/Recordings/{Sid}.json", fetch_recording),
    ("DELETE", CALL_PATH + "/Recordings/{Sid}.json", delete_recording),
    ("GET", CALL_PATH + "/Recordings/{Sid}.wav", recording_wav),
    ("POST", "/v1/Calls", register_call),
    ("GET", "/v1/Calls", list_calls),
    ("GET", "/v1/Calls/{CallSid}", get_call),
    ("POST", "/v1/Calls/{CallSid}", update_host_call),
    ("POST", "/v1/Calls/{CallSid}/Events", host_call_event),
    ("DELETE", "/v1/Calls/{CallSid}", end_call),
    ("GET", "/v1/Callbacks", list_callbacks),
    ("POST", "/v1/Callbacks/Redeliver", redeliver_callbacks),
]
ROUTES.extend((method, path) for method, path, _ in _TABLE)


def build_app(service: ControlService, *,
              max_request_bytes: int | None = None) -> web.Application:
    """The aiohttp application. The caller runs it (``web.AppRunner``) and owns *service*'s
    lifecycle (``await service.start()`` before serving, ``await service.close()`` after)."""
    limit = max_request_bytes or service.config.api.max_request_bytes or DEFAULT_MAX_REQUEST_BYTES
    # Outermost: the error middleware's own log lines carry the request's fields too.
    app = web.Application(middlewares=[log_context_middleware, error_middleware],
                          client_max_size=limit)
    app[SERVICE_KEY] = service
    for method, path, handler in _TABLE:
        app.router.add_route(method, path, handler)
    return app
