"""SIP and other URIs (RFC 3261 §19.1, §25.1).

SIP/SIPS URIs are parsed into their parts because the core needs host, port, transport and
parameters to route requests. Any other scheme (tel:, http:, urn:...) is kept opaque: SIP allows
them in most places and we must not reject a message only because it names one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import SipParseError, excerpt

_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*$")
# RFC 3261 hostname / IPv4 (a superset: we do not validate label lengths) and IPv6 reference.
_HOST_RE = re.compile(r"^(?:[A-Za-z0-9_](?:[A-Za-z0-9_\-.]*[A-Za-z0-9_.])?|\[[0-9A-Fa-f:.]+\])$")
# Characters allowed (unescaped) in a URI: unreserved, reserved and '%' for escapes.
_URI_CHARS_RE = re.compile(r"^[A-Za-z0-9\-_.!~*'()&=+$,;?/:@%\[\]]+$")
_PARAM_CHARS_RE = re.compile(r"^[A-Za-z0-9\-_.!~*'()\[\]/:&+$%]+$")


@dataclass
class SipUri:
    """A parsed URI; ``scheme`` is lower case. For non-SIP schemes only ``opaque`` is set."""

    scheme: str = "sip"
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: str | None = None
    opaque: str | None = None

    @property
    def is_sip(self) -> bool:
        """True for sip: and sips: URIs (the only ones we can route to)."""
        return self.scheme in ("sip", "sips")

    @property
    def transport(self) -> str | None:
        """The ``transport`` parameter in lower case, if present."""
        value = self.params.get("transport")
        return value.lower() if value else None

    def param(self, name: str) -> str | None:
        """Value of a URI parameter (names are case-insensitive); None if absent or valueless."""
        return self.params.get(name.lower())

    def has_param(self, name: str) -> bool:
        """True if the parameter is present, with or without a value."""
        return name.lower() in self.params

    def __str__(self) -> str:
        if not self.is_sip:
            return f"{self.scheme}:{self.opaque}"
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out.append(":" + self.password)
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out.append(f":{self.port}")
        for name, value in self.params.items():
            out.append(f";{name}" if value is None else f";{name}={value}")
        if self.headers:
            out.append("?" + self.headers)
        return "".join(out)

    @classmethod
    def parse(cls, text: str) -> SipUri:
        """Parse ``text`` as a URI; raise :class:`SipParseError` if it is not one."""
        if not text or any(ch.isspace() for ch in text):
            raise SipParseError(f"URI is empty or contains whitespace: {excerpt(text)}")
        scheme, sep, rest = text.partition(":")
        if not sep or not _SCHEME_RE.match(scheme) or not rest:
            raise SipParseError(f"not a URI: {excerpt(text)}")
        scheme = scheme.lower()
        if scheme not in ("sip", "sips"):
            if any(ord(ch) < 0x21 or ch in '<>"' for ch in rest):
                raise SipParseError(f"bad characters in URI: {excerpt(text)}")
            return cls(scheme=scheme, opaque=rest)
        if not _URI_CHARS_RE.match(rest):
            raise SipParseError(f"bad characters in SIP URI: {excerpt(text)}")
        user = password = None
        # '@' is not allowed unescaped after the host (params/headers), so the last one ends
        # the userinfo even when the user part itself contains '?' or ';' (RFC 4475 §3.1.1.2).
        if "@" in rest:
            userinfo, _, rest = rest.rpartition("@")
            if not userinfo:
                raise SipParseError(f"empty user part in URI: {excerpt(text)}")
            user, has_pw, pw = userinfo.partition(":")
            password = pw if has_pw else None
            if not user:
                raise SipParseError(f"empty user part in URI: {excerpt(text)}")
        hostpart, has_headers, headers = rest.partition("?")
        if has_headers and not headers:
            raise SipParseError(f"empty headers part in URI: {excerpt(text)}")
        hostport, *raw_params = hostpart.split(";")
        host, port = _split_hostport(hostport, text)
        params: dict[str, str | None] = {}
        for raw in raw_params:
            name, has_value, value = raw.partition("=")
            if (
                not name
                or not _PARAM_CHARS_RE.match(name)
                or (has_value and (not value or not _PARAM_CHARS_RE.match(value)))
            ):
                raise SipParseError(f"bad URI parameter in {excerpt(text)}")
            params[name.lower()] = value if has_value else None
        return cls(
            scheme=scheme,
            user=user,
            password=password,
            host=host,
            port=port,
            params=params,
            headers=headers if has_headers else None,
        )


def _split_hostport(hostport: str, text: str) -> tuple[str, int | None]:
    if hostport.startswith("["):
        end = hostport.find("]")
        host, tail = hostport[: end + 1], hostport[end + 1 :]
        if end < 0 or (tail and not tail.startswith(":")):
            raise SipParseError(f"bad IPv6 reference in URI: {excerpt(text)}")
        port_text = tail[1:] if tail else None
    else:
        host, has_port, port_text_ = hostport.partition(":")
        port_text = port_text_ if has_port else None
    if not host or not _HOST_RE.match(host):
        raise SipParseError(f"bad host in URI: {excerpt(text)}")
    if port_text is None:
        return host, None
    if not port_text.isdigit() or len(port_text) > 5 or not 0 < int(port_text) < 65536:
        raise SipParseError(f"bad port in URI: {excerpt(text)}")
    return host, int(port_text)


def split_connector_uri(text: str) -> tuple[str, bool, str | None]:
    """Split a connector's SRS URI into (clean SIP URI, secure flag, edge name).

    Connectors write ``sip:rec@host;secure=true&edge=NAME`` (or ``;secure=true;edge=NAME``);
    ``secure`` and ``edge`` are mediafork's own knobs, not URI parameters to send to the SRS.
    """
    base, *raw_params = text.split(";")
    kept: list[str] = []
    secure = False
    edge: str | None = None
    for raw in raw_params:
        for item in raw.split("&") if raw.lower().startswith(("secure=", "edge=")) else [raw]:
            name, _, value = item.partition("=")
            if name.lower() == "secure":
                secure = value.lower() in ("true", "1", "yes")
            elif name.lower() == "edge":
                edge = value or None
            else:
                kept.append(item)
    clean = ";".join([base, *kept])
    SipUri.parse(clean)
    return clean, secure, edge
