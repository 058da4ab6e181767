"""Typed failures of media sources, each with a documented code (docs/api-errors.md,
"Codes from media sources").

A media source error is reported in one of two ways: when it happens while a call is being
registered (``POST /v1/Calls`` with ``media_source``), as an API error with the code and
``http_status`` below; when it happens to a live Siprec or Recording, as ``siprec-error`` with
the code as ``SiprecErrorCode``. The message never contains SDP or keys, only the command,
the call-id or tag concerned and rtpengine's own ``error-reason``.
"""

from __future__ import annotations

__all__ = [
    "CallGone",
    "MediaSourceError",
    "NgBadReply",
    "NgClosed",
    "NgErrorReply",
    "NgOverloaded",
    "NgTimeout",
    "NoUsableCodec",
    "SourceRestarted",
    "SubscriptionLost",
    "UnknownCall",
    "UnknownMediaSource",
    "UnknownTag",
]


class MediaSourceError(Exception):
    """Base class: ``code`` is the documented mediafork code, ``http_status`` the status an
    API request that hits it answers with."""

    code: int = 900060
    http_status: int = 503

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NgTimeout(MediaSourceError):
    """rtpengine did not answer a request, retransmissions included, within the timeout."""

    code = 900060
    http_status = 503


class NgErrorReply(MediaSourceError):
    """rtpengine answered ``result: error``; ``reason`` is its ``error-reason``."""

    code = 900061
    http_status = 503

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class NgBadReply(MediaSourceError):
    """A reply that is not what the protocol promises: not bencode, no ``result``, a
    missing or ill-typed key, or an SDP that cannot be parsed."""

    code = 900062
    http_status = 503
    cookie: str | None = None
    """The cookie of the datagram, when it had a readable one."""


class UnknownCall(NgErrorReply):
    """rtpengine has no call with this call-id (never had, or deleted before we asked)."""

    code = 900063
    http_status = 400


class UnknownTag(NgErrorReply):
    """The call exists on rtpengine but has no participant with this tag."""

    code = 900064
    http_status = 400


class SourceRestarted(MediaSourceError):
    """rtpengine restarted since we subscribed: every subscription (and, without Redis,
    every call) it had is gone."""

    code = 900065
    http_status = 503


class CallGone(MediaSourceError):
    """The call ended on rtpengine's side (deleted by the proxy, or timed out) while
    mediafork still had it."""

    code = 900066
    http_status = 400


class SubscriptionLost(MediaSourceError):
    """The call is still on rtpengine but our subscription to one of its parties is not
    (someone unsubscribed it, or state was restored without it)."""

    code = 900067
    http_status = 503


class UnknownMediaSource(MediaSourceError):
    """``media_source.name`` names no ``[[media_sources]]`` entry."""

    code = 900068
    http_status = 400


class NoUsableCodec(MediaSourceError):
    """rtpengine's offer for a party has no audio stream with a codec mediafork can forward."""

    code = 900069
    http_status = 400


class NgOverloaded(MediaSourceError):
    """Too many NG requests are already waiting for rtpengine; nothing was sent."""

    code = 900070
    http_status = 503


class NgClosed(MediaSourceError):
    """The NG client was closed before the request completed."""

    code = 900071
    http_status = 503
