"""API errors in the platform's shape: ``{"code", "message", "more_info", "status"}``.

One exception type, :class:`ApiError`, travels from validation code up to the HTTP layer,
which only has to call :meth:`ApiError.to_dict`. Codes come from one registry so that
``docs/api-errors.md`` can be checked against it by a test: a code that is raised but not
documented is a bug.

Where the seeds' platform has a code for a rule, that code is used, so that applications
written against the platform recognise it. Everything else uses a mediafork code in the
900000-909999 range: six digits, so it can never collide with the platform's five-digit
dictionary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_PLATFORM_ERRORS_URL = "https://www.twilio.com/docs/errors/"
_MEDIAFORK_ERRORS_URL = "https://github.com/mediafork/mediafork/blob/main/docs/api-errors.md#"


@dataclass(frozen=True)
class ErrorCode:
    """One entry of the error registry."""

    code: int
    """The numeric code sent in the ``code`` field."""
    status: int
    """The HTTP status that goes with it."""
    title: str
    """Short description, also the heading in docs/api-errors.md."""

    @property
    def platform(self) -> bool:
        """True when the code is the platform's own (five digits), False for mediafork's."""
        return self.code < 100000

    @property
    def more_info(self) -> str:
        if self.platform:
            return f"{_PLATFORM_ERRORS_URL}{self.code}"
        return f"{_MEDIAFORK_ERRORS_URL}{self.code}"


REGISTRY: dict[int, ErrorCode] = {}


def _register(code: int, status: int, title: str) -> ErrorCode:
    if code in REGISTRY:
        raise RuntimeError(f"error code {code} registered twice")
    entry = ErrorCode(code, status, title)
    REGISTRY[code] = entry
    return entry


# Platform codes (the seeds' platform uses these numbers for these rules).
DOCUMENT_PARSE_FAILURE = _register(12100, 400, "Document parse failure")
ROOT_NOT_RESPONSE = _register(12102, 400, "The root element must be Response")
TWIML_SCHEMA = _register(12200, 400, "TwiML does not conform to the schema")
AUTHENTICATE = _register(20003, 401, "Authentication required")
NOT_FOUND = _register(20404, 404, "The requested resource was not found")
INTERNAL = _register(20500, 500, "Internal server error")
INVALID_STATUS_CALLBACK = _register(21609, 400, "Invalid StatusCallback URL")
INVALID_STATUS_CALLBACK_EVENT = _register(21626, 400, "Invalid StatusCallbackEvent")
INVALID_CONNECTOR_NAME = _register(31940, 400, "Invalid connectorName")
INVALID_TRACK = _register(31941, 400, "Invalid track")
TWIML_TOO_LARGE = _register(32018, 400, "TwiML size exceeded maximum allowed value")

# mediafork codes.
INVALID_PARAMETER = _register(900001, 400, "Invalid parameter value")
MISSING_PARAMETER = _register(900002, 400, "Missing required parameter")
REPEATED_PARAMETER = _register(900003, 400, "Parameter given more than once")
INVALID_CUSTOM_PARAMETER = _register(900004, 400, "Invalid custom parameter")
INVALID_METHOD = _register(900005, 400, "Invalid callback method")
INVALID_NAME = _register(900006, 400, "Invalid Siprec name")
TOO_MANY_STREAMS = _register(900007, 400, "Too many forked streams on the call")
DUPLICATE_NAME = _register(900008, 400, "Siprec name already used on the call")
CALL_NOT_LIVE = _register(900009, 400, "The call is not live")
INVALID_STATUS = _register(900010, 400, "Invalid status update")
INVALID_SID = _register(900011, 400, "Invalid SID")
ENGINE_RESTARTED = _register(900012, 500, "Media engine restarted")
ENGINE_UNAVAILABLE = _register(900503, 503, "Media engine unavailable")


class ApiError(Exception):
    """An error to return to the API client; the HTTP layer renders it as JSON.

    The message must say which rule was broken and must never contain a secret: messages
    are returned to clients and logged. Callers pass field *names*, and values only when
    they are the client's own non-secret input (e.g. an invalid track value).
    """

    def __init__(self, error: ErrorCode, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.error = error
        self.code = error.code
        self.status = status if status is not None else error.status
        self.message = message

    @property
    def more_info(self) -> str:
        return self.error.more_info

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "more_info": self.more_info,
            "status": self.status,
        }

    def __repr__(self) -> str:
        return f"ApiError(status={self.status}, code={self.code}, message={self.message!r})"


def not_found(what: str) -> ApiError:
    """404 that names the kind of resource only: never hints whether it exists elsewhere."""
    return ApiError(NOT_FOUND, f"The requested {what} was not found")


def authenticate() -> ApiError:
    return ApiError(AUTHENTICATE, "Authenticate")


# Added with the HTTP server (mediafork.api, mediafork.daemon.service).
CALL_ALREADY_REGISTERED = _register(900013, 409, "Call already registered")
SESSION_NOT_STARTED = _register(900014, 503, "Recording session could not be started")
# One code for what the HTTP layer refuses before any handler runs; the response's HTTP
# status says which case it is (405 method not allowed, 413 body too large, 400 otherwise).
HTTP_REQUEST_REJECTED = _register(900015, 400, "Request rejected by the HTTP layer")
# Per-account limits (mediafork.control.quotas): 429 like the platform's "too many requests",
# but a limit on live resources, not a rate: ending a call or a Siprec frees room at once.
QUOTA_EXCEEDED = _register(900429, 429, "Account limit reached")
# Media sources (mediafork.mediasource): the codes of its MediaSourceError classes, so an
# API request that hits one answers with the class's code and status. Kept equal to the
# classes by tests/rtpengine/test_ng_protocol.py.
NG_TIMEOUT = _register(900060, 503, "rtpengine did not answer")
NG_ERROR_REPLY = _register(900061, 503, "rtpengine answered with an error")
NG_BAD_REPLY = _register(900062, 503, "Bad reply from rtpengine")
MEDIA_SOURCE_UNKNOWN_CALL = _register(900063, 400, "Unknown call on the media source")
MEDIA_SOURCE_UNKNOWN_TAG = _register(900064, 400, "Unknown tag on the media source")
MEDIA_SOURCE_RESTARTED = _register(900065, 503, "Media source restarted")
MEDIA_SOURCE_CALL_GONE = _register(900066, 400, "Call ended on the media source")
MEDIA_SOURCE_SUBSCRIPTION_LOST = _register(900067, 503, "Media source subscription lost")
UNKNOWN_MEDIA_SOURCE = _register(900068, 400, "Unknown media source")
NO_USABLE_CODEC = _register(900069, 400, "No usable codec from the media source")
NG_OVERLOADED = _register(900070, 503, "Too many requests waiting for the media source")
NG_CLOSED = _register(900071, 503, "Media source closed")
