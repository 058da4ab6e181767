"""Exceptions of the SIP core.

One class per kind of failure, so that callers can tell "the peer sent garbage" (a remote
protocol error: drop the message or answer 400) from "we were asked to do something that makes
no sense" (a local error: a bug or bad configuration).
"""

from __future__ import annotations


class SipError(Exception):
    """Base class of every error raised by :mod:`mediafork.sip`."""


class SipParseError(SipError, ValueError):
    """A SIP message, header, URI, SDP or metadata document is malformed.

    This is the only exception the parsers raise for bad input: the message says what was wrong
    (never echoing secrets; at most a short, truncated excerpt of the offending text).
    """


class SipStateError(SipError, RuntimeError):
    """A method was called in a state where it is not allowed (a local programming error)."""


def excerpt(text: str | bytes, limit: int = 40) -> str:
    """Return a short printable excerpt of untrusted input for error messages."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return repr(text if len(text) <= limit else text[:limit] + "...")
