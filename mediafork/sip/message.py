"""SIP messages: parsing, serialization and stream framing (RFC 3261 §7, §18.3).

``parse_message`` takes one complete datagram; ``StreamFramer`` cuts a TCP/TLS byte stream into
messages using Content-Length. Both raise only :class:`SipParseError` for bad input and enforce
size limits, because every byte here comes from the network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import SipParseError, excerpt
from .headers import (
    SINGLE_HEADERS,
    TOKEN_RE,
    ContentType,
    Headers,
    NameAddr,
    Via,
    canonical_name,
    check_call_id,
    parse_cseq,
    parse_name_addrs,
)
from .uri import SipUri

MAX_MESSAGE_SIZE = 65536
"""Largest message (head + body) we accept; SIPREC INVITEs are a few kilobytes."""
MAX_HEADERS = 256
"""Most header lines we accept in one message."""

SIP_VERSION = "SIP/2.0"
_DATE_RE = re.compile(
    r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d{2}:\d{2}:\d{2} GMT$"
)
_FOLD_RE = re.compile(r"\r\n[ \t]+")


@dataclass
class _Message:
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    # Convenience accessors: all raise SipParseError if the header is missing or malformed.
    @property
    def call_id(self) -> str:
        """The Call-ID."""
        return check_call_id(_required(self.headers, "Call-ID"))

    @property
    def cseq(self) -> tuple[int, str]:
        """CSeq as (number, method)."""
        return parse_cseq(_required(self.headers, "CSeq"))

    @property
    def from_(self) -> NameAddr:
        """The From address."""
        return NameAddr.parse(_required(self.headers, "From"))

    @property
    def to(self) -> NameAddr:
        """The To address."""
        return NameAddr.parse(_required(self.headers, "To"))

    @property
    def vias(self) -> list[Via]:
        """All Via entries, topmost first."""
        return [Via.parse(v) for v in self.headers.values("Via")]

    @property
    def top_via(self) -> Via:
        """The topmost Via (identifies the transaction)."""
        values = self.headers.values("Via")
        if not values:
            raise SipParseError("missing Via")
        return Via.parse(values[0])

    @property
    def contacts(self) -> list[NameAddr]:
        """Contact addresses (empty if none or ``*``)."""
        out: list[NameAddr] = []
        for line in self.headers.get_all("Contact"):
            if line.strip() != "*":
                out.extend(parse_name_addrs(line))
        return out

    @property
    def content_type(self) -> ContentType | None:
        """Parsed Content-Type, if present."""
        value = self.headers.get("Content-Type")
        return ContentType.parse(value) if value is not None else None

    def _head_lines(self) -> list[str]:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """Serialize; Content-Length is always (re)computed from the body."""
        lines = self._head_lines()
        for name, value in self.headers:
            if name.lower() != "content-length":
                lines.append(f"{name}: {value}")
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + self.body

    def __bytes__(self) -> bytes:
        return self.to_bytes()


@dataclass
class Request(_Message):
    """A SIP request. ``uri`` is the Request-URI text."""

    method: str = "OPTIONS"
    uri: str = ""

    def __init__(
        self, method: str, uri: str, headers: Headers | None = None, body: bytes = b""
    ) -> None:
        self.method = method
        self.uri = uri
        self.headers = headers if headers is not None else Headers()
        self.body = body

    def _head_lines(self) -> list[str]:
        return [f"{self.method} {self.uri} {SIP_VERSION}"]

    def __repr__(self) -> str:
        return f"Request({self.method} {self.uri!s:.60})"


@dataclass
class Response(_Message):
    """A SIP response."""

    status: int = 200
    reason: str = "OK"

    def __init__(
        self, status: int, reason: str, headers: Headers | None = None, body: bytes = b""
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers if headers is not None else Headers()
        self.body = body

    def _head_lines(self) -> list[str]:
        return [f"{SIP_VERSION} {self.status} {self.reason}"]

    def __repr__(self) -> str:
        return f"Response({self.status} {self.reason[:40]})"


Message = Request | Response


def _required(headers: Headers, name: str) -> str:
    value = headers.get(name)
    if value is None:
        raise SipParseError(f"missing {name}")
    return value


def _parse_start_line(line: str) -> tuple[str, str, str]:
    """Split the start line into its three parts exactly as RFC 3261 §7.1/§7.2 write them."""
    if line.startswith(SIP_VERSION + " ") or line.upper().startswith("SIP/"):
        version, sep, rest = line.partition(" ")
        code, sep2, reason = rest.partition(" ")
        if not sep or not sep2:
            raise SipParseError(f"malformed status line: {excerpt(line)}")
        if version != SIP_VERSION:
            raise SipParseError(f"unsupported SIP version: {excerpt(version)}")
        if len(code) != 3 or not code.isdigit() or not 100 <= int(code) <= 699:
            raise SipParseError(f"bad status code: {excerpt(code)}")
        if any(ord(ch) < 0x20 and ch != "\t" for ch in reason):
            raise SipParseError("control character in reason phrase")
        return "response", code, reason
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        raise SipParseError(f"malformed request line: {excerpt(line)}")
    method, uri, version = parts
    if not TOKEN_RE.match(method):
        raise SipParseError(f"bad method: {excerpt(method)}")
    if version != SIP_VERSION:
        raise SipParseError(f"unsupported SIP version: {excerpt(version)}")
    parsed = SipUri.parse(uri)
    if parsed.is_sip and parsed.headers is not None:
        raise SipParseError("Request-URI must not contain headers")
    return "request", method, uri


def parse_head(head: bytes) -> tuple[Message, int | None]:
    """Parse the start line and headers (without the blank line); return (message, Content-Length).

    Validates the headers every message needs (RFC 3261 §8.1.1) and the single-valued ones, so
    that a message that gets past here can be handled by the transaction layer without surprises.
    """
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SipParseError("message head is not valid UTF-8") from exc
    text = _FOLD_RE.sub(" ", text)
    lines = text.split("\r\n")
    if len(lines) - 1 > MAX_HEADERS:
        raise SipParseError(f"too many header lines (limit {MAX_HEADERS})")
    kind, first, second = _parse_start_line(lines[0])
    headers = Headers()
    for line in lines[1:]:
        if "\n" in line or "\r" in line:
            raise SipParseError("bare CR or LF in message head")
        name, sep, value = line.partition(":")
        name = name.rstrip(" \t")
        if not sep or not TOKEN_RE.match(name):
            raise SipParseError(f"malformed header line: {excerpt(line)}")
        headers.add(name, value.strip(" \t"))
    msg: Message
    if kind == "request":
        msg = Request(first, second, headers)
    else:
        msg = Response(int(first), second, headers)
    seen: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        if key in SINGLE_HEADERS:
            if key in seen and (key != "content-length" or seen[key] != value):
                raise SipParseError(f"{canonical_name(name)} appears more than once")
            seen[key] = value
    for required in ("To", "From", "Call-ID", "CSeq", "Via"):
        if required not in headers:
            raise SipParseError(f"missing {required}")
    msg.to  # noqa: B018 - parsed for validation only
    msg.from_  # noqa: B018
    msg.call_id  # noqa: B018
    _, cseq_method = msg.cseq
    if isinstance(msg, Request) and cseq_method != msg.method:
        raise SipParseError("CSeq method does not match the request method")
    msg.vias  # noqa: B018
    msg.contacts  # noqa: B018
    for name in ("Route", "Record-Route"):
        for line in headers.get_all(name):
            parse_name_addrs(line)
    max_forwards = headers.get("Max-Forwards")
    if max_forwards is not None and (
        not max_forwards.isdigit() or len(max_forwards) > 4 or int(max_forwards) > 255
    ):
        raise SipParseError("bad Max-Forwards")
    date = headers.get("Date")
    if date is not None and not _DATE_RE.match(date):
        raise SipParseError("Date is not an RFC 1123 date in GMT")
    if "Content-Type" in headers:
        msg.content_type  # noqa: B018
    length: int | None = None
    raw_length = headers.get("Content-Length")
    if raw_length is not None:
        if not raw_length.isdigit() or len(raw_length) > 9:
            raise SipParseError("bad Content-Length")
        length = int(raw_length)
    return msg, length


def _split_head(data: bytes) -> tuple[bytes, int]:
    """Return (head without leading CRLFs, offset of the body) for a complete message."""
    start = 0
    while data.startswith(b"\r\n", start):
        start += 2
    end = data.find(b"\r\n\r\n", start)
    if end < 0:
        raise SipParseError("message head is not terminated by an empty line")
    return data[start:end], end + 4


def parse_message(data: bytes) -> Message:
    """Parse one message received as a datagram.

    Without Content-Length the body is the rest of the datagram; with it, the body is exactly
    that many octets and anything after it is ignored (RFC 3261 §18.3, RFC 4475 "dblreq");
    a Content-Length larger than what arrived is an error ("clerr").
    """
    if len(data) > MAX_MESSAGE_SIZE:
        raise SipParseError(f"message larger than {MAX_MESSAGE_SIZE} bytes")
    head, body_at = _split_head(data)
    msg, length = parse_head(head)
    available = len(data) - body_at
    if length is None:
        msg.body = data[body_at:]
    elif length > available:
        raise SipParseError(
            f"Content-Length {length} is larger than the {available} body bytes received"
        )
    else:
        msg.body = data[body_at : body_at + length]
    return msg


class StreamFramer:
    """Cut a reliable byte stream (TCP/TLS) into SIP messages (RFC 3261 §18.3).

    Feed bytes as they arrive; get back every complete message. CRLF keepalives between
    messages (RFC 5626 §3.5.1) are skipped and counted in ``keepalives`` (a double CRLF
    "ping" should be answered with a single CRLF "pong" by the transport). After a
    :class:`SipParseError` the stream is out of sync and the connection should be closed.
    """

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE) -> None:
        self._buffer = bytearray()
        self._max_size = max_size
        self._pending: tuple[Message, int, int] | None = None  # message, body offset, length
        self.keepalives = 0
        """Number of double-CRLF keepalive pings seen."""

    def feed(self, data: bytes) -> list[Message]:
        """Add received bytes and return the messages completed by them (possibly none)."""
        self._buffer.extend(data)
        out: list[Message] = []
        while True:
            msg = self._next()
            if msg is None:
                return out
            out.append(msg)

    def _next(self) -> Message | None:
        buf = self._buffer
        if self._pending is None:
            crlfs = 0
            while buf[:2] == b"\r\n":
                del buf[:2]
                crlfs += 1
            self.keepalives += crlfs // 2
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > self._max_size:
                    raise SipParseError(f"message head larger than {self._max_size} bytes")
                return None
            if end + 4 > self._max_size:
                raise SipParseError(f"message head larger than {self._max_size} bytes")
            msg, length = parse_head(bytes(buf[:end]))
            if length is None:
                raise SipParseError("Content-Length is required on stream transports")
            if end + 4 + length > self._max_size:
                raise SipParseError(f"message larger than {self._max_size} bytes")
            self._pending = (msg, end + 4, length)
        msg, body_at, length = self._pending
        if len(buf) < body_at + length:
            return None
        msg.body = bytes(buf[body_at : body_at + length])
        del buf[: body_at + length]
        self._pending = None
        return msg


# --- multipart bodies (RFC 2046 §5.1, RFC 5621) -----------------------------------------------


@dataclass
class BodyPart:
    """One part of a multipart body: its own headers (Content-Type, Content-Disposition...)."""

    headers: Headers
    body: bytes

    @property
    def content_type(self) -> str | None:
        """``type/subtype`` of the part in lower case (None if absent)."""
        value = self.headers.get("Content-Type")
        return ContentType.parse(value).mime if value else None


def build_multipart(parts: list[BodyPart], boundary: str) -> tuple[str, bytes]:
    """Build a ``multipart/mixed`` body; return (Content-Type value, body bytes)."""
    if not re.match(r"^[A-Za-z0-9'()+_,\-./:=?]{1,70}$", boundary):
        raise ValueError("invalid multipart boundary")
    delimiter = b"--" + boundary.encode("ascii")
    chunks: list[bytes] = []
    for part in parts:
        if delimiter in part.body:
            raise ValueError("multipart boundary occurs inside a body part")
        head = "".join(f"{name}: {value}\r\n" for name, value in part.headers)
        chunks.append(delimiter + b"\r\n" + head.encode("utf-8") + b"\r\n" + part.body + b"\r\n")
    body = b"".join(chunks) + delimiter + b"--\r\n"
    return f"multipart/mixed;boundary={boundary}", body


def parse_multipart(body: bytes, content_type: ContentType | str) -> list[BodyPart]:
    """Split a multipart body into its parts; raise SipParseError if malformed."""
    ctype = ContentType.parse(content_type) if isinstance(content_type, str) else content_type
    if ctype.type != "multipart":
        raise SipParseError(f"not a multipart body: {ctype.mime}")
    boundary = ctype.params.get("boundary")
    if not boundary:
        raise SipParseError("multipart body without boundary")
    delimiter = b"--" + boundary.encode("utf-8")
    # Normalise so every delimiter is preceded by CRLF, including the very first one.
    data = b"\r\n" + body
    marker = b"\r\n" + delimiter
    pos = data.find(marker)
    if pos < 0:
        raise SipParseError("multipart boundary not found")
    parts: list[BodyPart] = []
    while True:
        after = pos + len(marker)
        if data[after : after + 2] == b"--":
            return parts
        line_end = data.find(b"\r\n", after)
        if line_end < 0 or data[after:line_end].strip(b" \t"):
            raise SipParseError("malformed multipart delimiter line")
        nxt = data.find(marker, line_end)
        if nxt < 0:
            raise SipParseError("multipart body has no closing delimiter")
        parts.append(_parse_part(data[line_end + 2 : nxt]))
        if len(parts) > 32:
            raise SipParseError("too many multipart parts")
        pos = nxt


def _parse_part(raw: bytes) -> BodyPart:
    if raw.startswith(b"\r\n"):
        return BodyPart(Headers(), raw[2:])
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        raise SipParseError("multipart part has no header/body separator")
    try:
        head = _FOLD_RE.sub(" ", raw[:end].decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise SipParseError("multipart part headers are not UTF-8") from exc
    headers = Headers()
    for line in head.split("\r\n"):
        name, sep, value = line.partition(":")
        if not sep or not TOKEN_RE.match(name.strip()):
            raise SipParseError(f"malformed part header: {excerpt(line)}")
        headers.add(name.strip(), value.strip())
    return BodyPart(headers, raw[end + 4 :])
