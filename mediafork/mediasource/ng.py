"""The NG control protocol of rtpengine, sans I/O.

A datagram is a cookie, one space, and a bencoded dictionary (rtpengine's
docs/ng_control_protocol.md, "The NG Control Protocol"; README.md in 10.5). A request carries
``command``; a reply carries ``result`` (``ok``, ``pong`` for ``ping``, or ``error`` with
``error-reason``) and the same cookie. rtpengine remembers the reply to a cookie for a while
and sends it again when the same cookie comes back, so a request is retransmitted unchanged,
cookie included, and is idempotent.

:class:`NgProtocol` holds the requests in flight as pure state: callers pass the time in and
get datagrams to send and completions back. The asyncio adapter is ``ng_client.py``.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import bencodepy

from .errors import (
    MediaSourceError,
    NgBadReply,
    NgErrorReply,
    NgOverloaded,
    NgTimeout,
    UnknownCall,
    UnknownTag,
)

__all__ = [
    "Completion",
    "NgProtocol",
    "NgTiming",
    "check_reply",
    "classify_error",
    "decode_datagram",
    "encode_request",
]

MAX_DATAGRAM = 65535
_MAX_COOKIE = 64
# utf-8 where it decodes (every key and value rtpengine sends is text), bytes otherwise, so
# that a stray binary value is a typed problem later rather than a decoder exception now.
_CODEC = bencodepy.Bencode(encoding="utf-8", encoding_fallback="all", max_depth=32)


@dataclass(frozen=True)
class NgTiming:
    """When to retransmit and when to give up. The first retransmission goes out after
    ``retransmit`` seconds, each later one after twice the previous interval (at most
    ``max_interval``), until ``timeout`` seconds after the first send."""

    timeout: float = 3.0
    retransmit: float = 0.5
    max_interval: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retransmit <= self.timeout:
            raise ValueError("retransmit must be > 0 and at most timeout")
        if self.max_interval < self.retransmit:
            raise ValueError("max_interval must be at least retransmit")


def encode_request(cookie: str, message: Mapping[str, Any]) -> bytes:
    """``cookie SP bencode(message)``. ``message`` must hold ``command``; values are str,
    int, lists and dicts of those (bencode has no bool or float)."""
    if not cookie or " " in cookie or len(cookie) > _MAX_COOKIE:
        raise ValueError("an NG cookie is 1-64 characters without spaces")
    if not isinstance(message.get("command"), str):
        raise ValueError("an NG request needs a string 'command'")
    _check_encodable(message)
    return cookie.encode("ascii") + b" " + _CODEC.encode(dict(message))


def _check_encodable(value: Any, depth: int = 0) -> None:
    if depth > 16:
        raise ValueError("NG request nested too deep")
    if isinstance(value, bool | float):
        raise ValueError("NG values are strings, integers, lists and dictionaries")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError("NG dictionary keys are strings")
            _check_encodable(item, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_encodable(item, depth + 1)
    elif not isinstance(value, str | bytes | int):
        raise ValueError(f"cannot encode {type(value).__name__} in an NG message")


def decode_datagram(data: bytes) -> tuple[str, dict[str, Any]]:
    """Split a reply into its cookie and dictionary. Raises :class:`NgBadReply` for anything
    else; its ``cookie`` attribute is the cookie when one could be read (else None)."""
    cookie_bytes, sep, body = data.partition(b" ")
    if not sep or not cookie_bytes or len(cookie_bytes) > _MAX_COOKIE:
        raise NgBadReply("NG reply has no cookie")
    try:
        cookie = cookie_bytes.decode("ascii")
    except UnicodeDecodeError:
        raise NgBadReply("NG reply cookie is not ASCII") from None
    try:
        decoded = _CODEC.decode(body)
    except Exception:  # the decoder is third-party code fed untrusted bytes: any failure is ours to type
        raise _bad("NG reply is not valid bencode", cookie) from None
    if not isinstance(decoded, dict):
        raise _bad("NG reply is not a dictionary", cookie)
    return cookie, decoded


def _bad(message: str, cookie: str | None) -> NgBadReply:
    error = NgBadReply(message)
    error.cookie = cookie
    return error


def classify_error(command: str, reason: str) -> NgErrorReply:
    """The typed error for an ``error-reason``. rtpengine's wording differs between commands
    ("Unknown call-ID" for subscribe, "Unknown call-id" for query; "From-tag given, but no
    such tag exists", "To-tag not found"), so matching is by keywords, case-insensitively."""
    text = reason.lower()
    message = f"rtpengine refused {command}: {reason}"
    if "unknown call" in text:
        return UnknownCall(message, reason)
    if "tag" in text and ("no such" in text or "not found" in text or "unknown" in text):
        return UnknownTag(message, reason)
    return NgErrorReply(message, reason)


def check_reply(command: str, reply: Mapping[str, Any]) -> dict[str, Any]:
    """The reply of a successful request, or the typed error it stands for."""
    result = reply.get("result")
    if result in ("ok", "pong"):
        return dict(reply)
    if result == "error":
        reason = reply.get("error-reason")
        if not isinstance(reason, str):
            raise NgBadReply(f"rtpengine error reply to {command} without an error-reason")
        raise classify_error(command, _printable(reason))
    raise NgBadReply(f"rtpengine reply to {command} has no valid result")


def _printable(text: str, limit: int = 200) -> str:
    """rtpengine's text, safe to log and to return to API clients."""
    clean = "".join(c if c.isprintable() else "?" for c in text)
    return clean if len(clean) <= limit else clean[:limit] + "…"


@dataclass(frozen=True)
class Completion:
    """A request that is done: ``reply`` on success, otherwise ``error``."""

    cookie: str
    command: str
    reply: dict[str, Any] | None = None
    error: MediaSourceError | None = None


@dataclass
class _Pending:
    command: str
    datagram: bytes
    deadline: float
    next_send: float
    interval: float


@dataclass
class NgProtocol:
    """Requests in flight to one rtpengine. Every method takes ``now`` (seconds on any
    monotonic clock) and never blocks or does I/O."""

    timing: NgTiming = field(default_factory=NgTiming)
    max_outstanding: int = 1024
    cookie_prefix: str = field(default_factory=lambda: secrets.token_hex(4))
    """Cookies are PREFIX_N: unique per client, so that rtpengine's reply cache never hands
    us another client's reply and ours never match a stale one from a previous process."""

    def __post_init__(self) -> None:
        if self.max_outstanding < 1:
            raise ValueError("max_outstanding must be at least 1")
        self._pending: dict[str, _Pending] = {}
        self._next = 0
        self.counters = {"sent": 0, "retransmits": 0, "replies": 0, "ignored": 0,
                         "malformed": 0, "timeouts": 0}

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    def request(self, message: Mapping[str, Any], now: float) -> tuple[str, bytes]:
        """Start a request: returns its cookie and the datagram to send now."""
        if len(self._pending) >= self.max_outstanding:
            raise NgOverloaded(
                f"{len(self._pending)} NG requests already wait for rtpengine "
                f"(limit {self.max_outstanding})")
        self._next += 1
        cookie = f"{self.cookie_prefix}_{self._next}"
        datagram = encode_request(cookie, message)
        if len(datagram) > MAX_DATAGRAM:
            raise ValueError("NG request does not fit in one datagram")
        self._pending[cookie] = _Pending(
            command=str(message["command"]), datagram=datagram,
            deadline=now + self.timing.timeout,
            next_send=now + self.timing.retransmit, interval=self.timing.retransmit)
        self.counters["sent"] += 1
        return cookie, datagram

    def receive(self, data: bytes, now: float) -> Completion | None:
        """A datagram from rtpengine's address. Returns the request it completes, or None
        when it completes none of ours (garbage, a late duplicate, another cookie)."""
        try:
            cookie, reply = decode_datagram(data)
        except NgBadReply as exc:
            cookie = exc.cookie
            pending = self._pending.pop(cookie, None) if cookie else None
            if pending is None:
                self.counters["ignored"] += 1
                return None
            # rtpengine would cache and resend the same bytes: retrying cannot help.
            self.counters["malformed"] += 1
            return Completion(cookie, pending.command,
                              error=NgBadReply(f"{exc.message} (reply to {pending.command})"))
        pending = self._pending.pop(cookie, None)
        if pending is None:
            self.counters["ignored"] += 1
            return None
        self.counters["replies"] += 1
        try:
            return Completion(cookie, pending.command, reply=check_reply(pending.command, reply))
        except MediaSourceError as exc:
            return Completion(cookie, pending.command, error=exc)

    def poll(self, now: float) -> tuple[list[bytes], list[Completion]]:
        """Retransmissions due by ``now``, and the requests that timed out."""
        resend: list[bytes] = []
        expired: list[Completion] = []
        for cookie, pending in list(self._pending.items()):
            if now >= pending.deadline:
                del self._pending[cookie]
                self.counters["timeouts"] += 1
                expired.append(Completion(cookie, pending.command, error=NgTimeout(
                    f"rtpengine did not answer {pending.command} within "
                    f"{self.timing.timeout:g} s")))
            elif now >= pending.next_send:
                resend.append(pending.datagram)
                self.counters["retransmits"] += 1
                pending.interval = min(pending.interval * 2, self.timing.max_interval)
                pending.next_send = now + pending.interval
        return resend, expired

    def next_deadline(self) -> float | None:
        """When :meth:`poll` next has something to do (None: nothing in flight)."""
        if not self._pending:
            return None
        return min(min(p.next_send, p.deadline) for p in self._pending.values())

    def is_pending(self, cookie: str) -> bool:
        return cookie in self._pending

    def cancel(self, cookie: str) -> None:
        """Forget a request (its caller gave up); a late reply is then ignored."""
        self._pending.pop(cookie, None)

    def cancel_all(self) -> list[str]:
        """Forget every request; returns their cookies."""
        cookies = list(self._pending)
        self._pending.clear()
        return cookies
