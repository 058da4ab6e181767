"""Header field names and the structured header values the SIP core needs (RFC 3261 §20, §25).

Names are compared case-insensitively and compact forms are expanded, so ``v``, ``VIA`` and
``Via`` are the same header. Values are kept as text and parsed on demand by the helpers here,
which all raise :class:`SipParseError` on malformed input.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from .errors import SipParseError, excerpt
from .uri import SipUri

# RFC 3261 §7.3.3 and the IANA registry: compact form -> canonical name.
COMPACT_FORMS: dict[str, str] = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}

_CANONICAL = [
    "Accept",
    "Accept-Contact",
    "Accept-Encoding",
    "Accept-Language",
    "Alert-Info",
    "Allow",
    "Allow-Events",
    "Authentication-Info",
    "Authorization",
    "Call-ID",
    "Call-Info",
    "Contact",
    "Content-Disposition",
    "Content-Encoding",
    "Content-Language",
    "Content-Length",
    "Content-Type",
    "CSeq",
    "Date",
    "Error-Info",
    "Event",
    "Expires",
    "From",
    "Identity",
    "Identity-Info",
    "In-Reply-To",
    "Max-Forwards",
    "Min-Expires",
    "Min-SE",
    "MIME-Version",
    "Organization",
    "Priority",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "Proxy-Require",
    "Reason",
    "Record-Route",
    "Refer-To",
    "Referred-By",
    "Reject-Contact",
    "Reply-To",
    "Request-Disposition",
    "Require",
    "Retry-After",
    "Route",
    "RSeq",
    "RAck",
    "Server",
    "Session-Expires",
    "Subject",
    "Supported",
    "Timestamp",
    "To",
    "Unsupported",
    "User-Agent",
    "Via",
    "Warning",
    "WWW-Authenticate",
]
_BY_LOWER = {name.lower(): name for name in _CANONICAL}

# Headers whose value is a comma-separated list (RFC 3261 §7.3.1) and may be split/combined.
LIST_HEADERS = frozenset(
    name.lower()
    for name in (
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Allow",
        "Allow-Events",
        "Contact",
        "Content-Encoding",
        "Content-Language",
        "Proxy-Require",
        "Reason",
        "Record-Route",
        "Require",
        "Route",
        "Supported",
        "Unsupported",
        "Via",
        "Warning",
    )
)
# Headers that must appear at most once (RFC 4475 §3.1.2.x "multi01"/"mcl01").
SINGLE_HEADERS = frozenset(
    name.lower()
    for name in ("To", "From", "Call-ID", "CSeq", "Max-Forwards", "Content-Length", "Content-Type")
)

TOKEN_RE = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")
_WORD_RE = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+$")
_LWS_RE = re.compile(r"[ \t]+")


def canonical_name(name: str) -> str:
    """Canonical spelling of a header name (compact forms expanded; unknown names kept)."""
    lower = name.lower()
    if lower in COMPACT_FORMS:
        return COMPACT_FORMS[lower]
    return _BY_LOWER.get(lower, name)


class Headers:
    """An ordered multi-map of header fields: one entry per header line, names case-insensitive.

    Order matters in SIP (Via, Route, Record-Route), so this is a list of ``(name, value)``
    pairs rather than a dict.
    """

    def __init__(self, items: list[tuple[str, str]] | None = None) -> None:
        self._items: list[tuple[str, str]] = []
        for name, value in items or []:
            self.add(name, value)

    def add(self, name: str, value: str) -> None:
        """Append a header line (after any existing lines of that name)."""
        if "\r" in value or "\n" in value:
            raise SipParseError(f"header {name} value contains a line break")
        self._items.append((canonical_name(name), value))

    def prepend(self, name: str, value: str) -> None:
        """Insert a header line before all others (used for Via)."""
        self._items.insert(0, (canonical_name(name), value))

    def set(self, name: str, value: str) -> None:
        """Replace all lines of ``name`` by one line, kept at the first line's position."""
        key = canonical_name(name).lower()
        for index, (existing, _) in enumerate(self._items):
            if existing.lower() == key:
                self._items[index] = (canonical_name(name), value)
                self._items = [
                    item
                    for i, item in enumerate(self._items)
                    if i <= index or item[0].lower() != key
                ]
                return
        self.add(name, value)

    def remove(self, name: str) -> None:
        """Remove every line of ``name``."""
        key = canonical_name(name).lower()
        self._items = [item for item in self._items if item[0].lower() != key]

    def get(self, name: str, default: str | None = None) -> str | None:
        """Value of the first line of ``name``."""
        key = canonical_name(name).lower()
        for existing, value in self._items:
            if existing.lower() == key:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        """Values of every line of ``name``, in order (not split at commas)."""
        key = canonical_name(name).lower()
        return [value for existing, value in self._items if existing.lower() == key]

    def values(self, name: str) -> list[str]:
        """All values of a list header, split at top-level commas, in order."""
        out: list[str] = []
        for line in self.get_all(name):
            out.extend(split_list(line))
        return out

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def copy(self) -> Headers:
        """A shallow copy (values are immutable strings)."""
        new = Headers()
        new._items = list(self._items)
        return new

    def __repr__(self) -> str:
        return f"Headers({[name for name, _ in self._items]!r})"


def split_list(value: str) -> list[str]:
    """Split a header value at commas that are outside quotes and angle brackets."""
    parts: list[str] = []
    depth = 0
    quoted = False
    start = 0
    i = 0
    while i < len(value):
        ch = value[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            depth += 1
        elif ch == ">":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            parts.append(value[start:i].strip())
            start = i + 1
        i += 1
    if quoted:
        raise SipParseError(f"unterminated quoted string in {excerpt(value)}")
    parts.append(value[start:].strip())
    return [part for part in parts if part] if len(parts) > 1 else [p for p in parts if p]


def _read_quoted(value: str, pos: int) -> tuple[str, int]:
    """Read a quoted-string starting at ``value[pos] == '"'``; return (unescaped, end index)."""
    out: list[str] = []
    i = pos + 1
    while i < len(value):
        ch = value[i]
        if ch == "\\":
            if i + 1 >= len(value):
                break
            out.append(value[i + 1])
            i += 2
            continue
        if ch == '"':
            return "".join(out), i + 1
        out.append(ch)
        i += 1
    raise SipParseError(f"unterminated quoted string in {excerpt(value)}")


def quote(text: str) -> str:
    """Render ``text`` as a quoted-string, escaping quotes and backslashes."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_params(text: str, context: str = "header") -> dict[str, str | None]:
    """Parse ``;name[=value]`` generic parameters (SEMI/EQUAL allow surrounding whitespace).

    Names are lower-cased; quoted values are unquoted. Empty parameters (``;;``) are errors.
    """
    params: dict[str, str | None] = {}
    text = text.strip()
    if not text:
        return params
    if not text.startswith(";"):
        raise SipParseError(f"unexpected text in {context}: {excerpt(text)}")
    i = 1
    n = len(text)
    while True:
        while i < n and text[i] in " \t":
            i += 1
        start = i
        while i < n and text[i] not in ";= \t":
            i += 1
        name = text[start:i]
        if not name or not TOKEN_RE.match(name):
            raise SipParseError(f"bad or empty parameter in {context}: {excerpt(text)}")
        while i < n and text[i] in " \t":
            i += 1
        value: str | None = None
        if i < n and text[i] == "=":
            i += 1
            while i < n and text[i] in " \t":
                i += 1
            if i < n and text[i] == '"':
                value, i = _read_quoted(text, i)
            else:
                start = i
                while i < n and text[i] not in "; \t":
                    i += 1
                value = text[start:i]
                if not value or not re.match(r"^[A-Za-z0-9\-.!%*_+`'~:\[\]]+$", value):
                    raise SipParseError(f"bad parameter value in {context}: {excerpt(text)}")
            while i < n and text[i] in " \t":
                i += 1
        params[name.lower()] = value
        if i >= n:
            return params
        if text[i] != ";":
            raise SipParseError(f"unexpected text in {context}: {excerpt(text)}")
        i += 1


def format_params(params: dict[str, str | None]) -> str:
    """Render parameters back as ``;name=value`` (quoting values that are not tokens)."""
    out = []
    for name, value in params.items():
        if value is None:
            out.append(f";{name}")
        elif re.match(r"^[A-Za-z0-9\-.!%*_+`'~:\[\]]+$", value):
            out.append(f";{name}={value}")
        else:
            out.append(f";{name}={quote(value)}")
    return "".join(out)


@dataclass
class NameAddr:
    """A name-addr or addr-spec with header parameters (From, To, Contact, Route...)."""

    uri: SipUri
    display_name: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def tag(self) -> str | None:
        """The ``tag`` parameter (dialog identification)."""
        return self.params.get("tag")

    def __str__(self) -> str:
        display = f"{quote(self.display_name)} " if self.display_name else ""
        return f"{display}<{self.uri}>{format_params(self.params)}"

    @classmethod
    def parse(cls, value: str) -> NameAddr:
        """Parse one name-addr / addr-spec with parameters; raise SipParseError if malformed."""
        text = value.strip()
        if not text:
            raise SipParseError("empty address")
        display: str | None = None
        if text.startswith('"'):
            display, end = _read_quoted(text, 0)
            rest = text[end:].lstrip(" \t")
            if not rest.startswith("<"):
                raise SipParseError(f"expected '<' after display name in {excerpt(text)}")
            return cls._bracketed(display, rest, text)
        lt = text.find("<")
        if lt >= 0:
            words = text[:lt].strip()
            if words:
                for word in _LWS_RE.split(words):
                    if not TOKEN_RE.match(word):
                        raise SipParseError(f"bad display name in {excerpt(text)}")
                display = " ".join(_LWS_RE.split(words))
            return cls._bracketed(display, text[lt:], text)
        # addr-spec: the URI ends at the first ';' and may not contain ',', '?' or ';'
        # (RFC 3261 §20.10); anything needing those must use <...> (RFC 4475 regbadct).
        uri_text, sep, param_text = text.partition(";")
        uri_text = uri_text.rstrip(" \t")
        if any(ch in uri_text for ch in ",?") or " " in uri_text:
            raise SipParseError(f"URI with ',' '?' or space must be in <> in {excerpt(text)}")
        return cls(SipUri.parse(uri_text), None, parse_params(sep + param_text, "address"))

    @classmethod
    def _bracketed(cls, display: str | None, rest: str, whole: str) -> NameAddr:
        gt = rest.find(">")
        if gt < 0:
            raise SipParseError(f"missing '>' in {excerpt(whole)}")
        uri_text = rest[1:gt]
        if uri_text != uri_text.strip():
            raise SipParseError(f"whitespace inside <> in {excerpt(whole)}")
        return cls(SipUri.parse(uri_text), display, parse_params(rest[gt + 1 :], "address"))


def parse_name_addrs(value: str) -> list[NameAddr]:
    """Parse a comma-separated list of name-addrs (Contact, Route, Record-Route)."""
    return [NameAddr.parse(part) for part in split_list(value)]


_VIA_RE = re.compile(
    r"^([A-Za-z0-9\-.!%*_+`'~]+)[ \t]*/[ \t]*([A-Za-z0-9\-.!%*_+`'~]+)[ \t]*/[ \t]*"
    r"([A-Za-z0-9\-.!%*_+`'~]+)[ \t]+(.+)$"
)


@dataclass
class Via:
    """One Via entry: ``SIP/2.0/<transport> host[:port];params``."""

    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def branch(self) -> str | None:
        """The transaction identifier (RFC 3261 §17.2.3)."""
        return self.params.get("branch")

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"SIP/2.0/{self.transport.upper()} {self.host}{port}{format_params(self.params)}"

    @classmethod
    def parse(cls, value: str) -> Via:
        """Parse one Via entry; raise SipParseError if malformed or not SIP/2.0."""
        match = _VIA_RE.match(value.strip())
        if not match:
            raise SipParseError(f"malformed Via: {excerpt(value)}")
        name, version, transport, rest = match.groups()
        if name.upper() != "SIP" or version != "2.0":
            raise SipParseError(f"unsupported protocol in Via: {excerpt(value)}")
        semi = rest.find(";")
        hostport = (rest if semi < 0 else rest[:semi]).strip()
        hostport = re.sub(r"[ \t]*:[ \t]*", ":", hostport)
        probe = SipUri.parse(f"sip:{hostport}") if hostport else None
        if probe is None or probe.user is not None or probe.params:
            raise SipParseError(f"malformed Via sent-by: {excerpt(value)}")
        params = parse_params(rest[semi:] if semi >= 0 else "", "Via")
        return cls(transport.upper(), probe.host, probe.port, params)


def parse_cseq(value: str) -> tuple[int, str]:
    """Parse CSeq into (number, method); the number must fit in 32 bits (RFC 3261 §8.1.1.5)."""
    parts = value.split()
    if len(parts) != 2 or not parts[0].isdigit() or not TOKEN_RE.match(parts[1]):
        raise SipParseError(f"malformed CSeq: {excerpt(value)}")
    number = int(parts[0]) if len(parts[0]) <= 10 else 2**32
    if number >= 2**31:
        raise SipParseError("CSeq number out of range")
    return number, parts[1]


def check_call_id(value: str) -> str:
    """Validate a Call-ID (``word [@ word]``) and return it stripped."""
    value = value.strip()
    local, _, host = value.partition("@")
    if not local or not _WORD_RE.match(local) or (host and not _WORD_RE.match(host)):
        raise SipParseError(f"malformed Call-ID: {excerpt(value)}")
    if "@" in value and not host:
        raise SipParseError(f"malformed Call-ID: {excerpt(value)}")
    return value


@dataclass
class ContentType:
    """A media type with parameters, e.g. ``multipart/mixed;boundary=x``."""

    type: str
    subtype: str
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def mime(self) -> str:
        """``type/subtype`` in lower case."""
        return f"{self.type}/{self.subtype}"

    def __str__(self) -> str:
        return self.mime + format_params(self.params)

    @classmethod
    def parse(cls, value: str) -> ContentType:
        """Parse a Content-Type value; raise SipParseError if malformed."""
        main, sep, rest = value.strip().partition(";")
        kind, slash, sub = main.strip().partition("/")
        kind, sub = kind.strip(), sub.strip()
        if not slash or not TOKEN_RE.match(kind) or not TOKEN_RE.match(sub):
            raise SipParseError(f"malformed media type: {excerpt(value)}")
        return cls(kind.lower(), sub.lower(), parse_params(sep + rest, "media type"))
