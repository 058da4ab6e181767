"""Per-connector SIP profiles: what one recorder needs beyond plain SIPREC.

Recorders differ: one wants a tenant header on every request, another the Siprec's custom
parameters as ``X-`` headers (like Telnyx's ``includeMetadataCustomHeaders``), another only
GCM suites, or plain RTP/AVP. A :class:`SipProfile` holds those choices for one connector;
:func:`parse_profile` reads it from the connector's ``[connectors.sip]`` TOML table (see
docs/operations.md for every key and default) and refuses anything the UA could not send
correctly, with the key path in the message and never a header value (values may be
tokens).

Sans-I/O: no sockets, no logging; the recorder links turn a profile into a
:class:`~mediafork.sip.session.SessionConfig`.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from .metadata import NS as RECORDING_NS
from .sdp import SUITE_32, SUITE_80, SUPPORTED_SUITES

__all__ = [
    "EXTENSION_NS",
    "ProfileError",
    "RESERVED_HEADERS",
    "SipProfile",
    "header_safe_value",
    "parameter_header_name",
    "parse_profile",
]

EXTENSION_NS = "urn:mediafork:params:xml:ns:siprec-extension"
"""Namespace given to configured extension elements written without one (RFC 7865's XSD
admits extensions only from ``##other`` namespaces, which excludes "no namespace")."""

ET.register_namespace("mfx", EXTENSION_NS)

ParametersAs = Literal["metadata", "headers", "both"]
TransportProfile = Literal["RTP/SAVP", "RTP/AVP"]

RESERVED_HEADERS = frozenset(name.lower() for name in (
    "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Max-Forwards", "Require", "Supported",
    "Proxy-Require", "Allow", "Accept", "User-Agent", "Session-Expires", "Min-SE", "Route",
    "Record-Route", "Authorization", "Proxy-Authorization", "Expires", "RAck", "RSeq",
    "MIME-Version",
))
"""Headers the UA writes itself (dialog identity, transaction, capabilities, timers, auth,
body description): a profile cannot add or replace them. ``Content-*`` and every one-letter
(compact) name are refused too."""

_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!*_+`'~")
"""RFC 3261 ``token`` characters, without ``%``: a parameter header name keeps these and
percent-encodes everything else (``%`` included, so the mapping can be undone)."""
_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
_PARAMETERS_AS = ("metadata", "headers", "both")
_TRANSPORT_PROFILES = ("RTP/SAVP", "RTP/AVP")
_UNSUPPORTED_SUITES = ("AES_256_CM_HMAC_SHA1_80", "AES_256_CM_HMAC_SHA1_32",
                       "AES_192_CM_HMAC_SHA1_80", "AES_192_CM_HMAC_SHA1_32")
"""RFC 6188 suites: valid names, but pylibsrtp's bundled libsrtp has no policy for them."""

MAX_HEADERS = 32
MAX_HEADER_NAME = 128
MAX_HEADER_VALUE = 1024
MAX_EXTENSIONS = 8
MAX_EXTENSION_CHARS = 8192
MAX_EXTENSIONS_TOTAL = 16384
MAX_GROUP_NAME = 256
DEFAULT_PARAMETER_HEADERS_MAX_BYTES = 4096

_KEYS = {"headers", "parameters_as", "parameter_header_prefix", "parameter_headers_max_bytes",
         "group_name", "extension_xml", "session_expires", "keepalive_interval",
         "setup_timeout", "srtp_suites", "transport_profile"}


class ProfileError(ValueError):
    """A bad ``[connectors.sip]`` value; the message starts with the key path."""


@dataclass(frozen=True)
class SipProfile:
    """One connector's SIP profile. The defaults are mediafork's behaviour without one."""

    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    """Static headers added to every request of the session (values may be tokens: never
    shown in repr, logs or errors)."""
    parameters_as: ParametersAs = "metadata"
    """Where the Siprec's custom parameters go: RFC 7865 metadata, SIP headers on the
    INVITE, or both."""
    parameter_header_prefix: str = "X-"
    """Prefix of a parameter's header name (see :func:`parameter_header_name`)."""
    parameter_headers_max_bytes: int = DEFAULT_PARAMETER_HEADERS_MAX_BYTES
    """Bound on the parameter headers' total size (``Name: value\\r\\n``); parameters past it
    are not sent as headers (still in the metadata with ``both``)."""
    group_name: str | None = None
    """Sent as ``<mf:group-name>`` in the metadata's ``<group>``."""
    extension_xml: tuple[str, ...] = ()
    """Extension elements (checked, namespaced, serialized) appended to ``<recording>`` in
    complete metadata documents."""
    session_expires: int | None = None
    """Session-Expires to ask for (RFC 4028); 0: no session timer; None: the daemon's."""
    keepalive_interval: float | None = None
    """In-dialog OPTIONS period without a session timer; None: the daemon's."""
    setup_timeout: float | None = None
    """Longest wait for the INVITE's final answer (then CANCEL, next recorder); None: the
    daemon's."""
    srtp_suites: tuple[str, ...] = (SUITE_80, SUITE_32)
    """SDES suites offered, in this order (a=crypto tags 1, 2, …)."""
    transport_profile: TransportProfile | None = None
    """The m= line protocol; None: RTP/SAVP when the connector is secure, else RTP/AVP."""

    def __post_init__(self) -> None:
        # A profile built in Python (not from TOML) gets the same guarantees the UA relies
        # on: no header line can be split or replaced, every suite can be keyed.
        _headers(dict(self.headers), "headers")
        if len({n.lower() for n, _ in self.headers}) != len(self.headers):
            raise ProfileError("headers: a name is given twice")
        if self.parameters_as not in _PARAMETERS_AS:
            raise ProfileError(f"parameters_as: must be one of {', '.join(_PARAMETERS_AS)}")
        if not self.parameter_header_prefix or not _TOKEN_RE.fullmatch(
                self.parameter_header_prefix):
            raise ProfileError("parameter_header_prefix: must be header-name characters")
        if not self.srtp_suites or any(s not in SUPPORTED_SUITES for s in self.srtp_suites) \
                or len(set(self.srtp_suites)) != len(self.srtp_suites):
            raise ProfileError("srtp_suites: distinct suites from "
                               f"{', '.join(SUPPORTED_SUITES)}")
        if self.transport_profile not in (None, *_TRANSPORT_PROFILES):
            raise ProfileError("transport_profile: must be RTP/SAVP or RTP/AVP")

    @property
    def parameters_in_metadata(self) -> bool:
        return self.parameters_as in ("metadata", "both")

    def parameter_headers(
        self, parameters: Iterable[tuple[str, str]]
    ) -> tuple[tuple[tuple[str, str], ...], int]:
        """The custom parameters as SIP headers (none unless ``parameters_as`` says so) and
        how many did not fit in ``parameter_headers_max_bytes`` or mapped onto a reserved
        name. Order is the parameters' order."""
        if self.parameters_as == "metadata":
            return (), 0
        out: list[tuple[str, str]] = []
        used = skipped = 0
        for name, value in parameters:
            header = parameter_header_name(self.parameter_header_prefix, name)
            text = header_safe_value(value)
            size = len(header) + 2 + len(text) + 2
            if _reserved(header) or used + size > self.parameter_headers_max_bytes:
                skipped += 1
                continue
            used += size
            out.append((header, text))
        return tuple(out), skipped


def parameter_header_name(prefix: str, name: str) -> str:
    """``prefix`` + *name* with every character outside RFC 3261's ``token`` (and ``%``)
    percent-encoded as UTF-8: ``Agent Name`` -> ``X-Agent%20Name``, ``Straße`` ->
    ``X-Stra%C3%9Fe``. Percent-decoding the part after the prefix gives the name back."""
    return prefix + "".join(c if c in _TOKEN_CHARS else _percent(c) for c in name)


def header_safe_value(value: str) -> str:
    """A parameter value as header text: printable ASCII kept, except ``%``; ``%``,
    control characters, non-ASCII and leading/trailing spaces percent-encoded as UTF-8
    (a parser would strip the spaces; a CR/LF would split the header)."""
    out = []
    last = len(value) - 1
    for i, c in enumerate(value):
        keep = 0x20 <= ord(c) <= 0x7E and c != "%" and not (c == " " and i in (0, last))
        out.append(c if keep else _percent(c))
    return "".join(out)


def _percent(c: str) -> str:
    # surrogatepass: a lone surrogate cannot reach here from the API, but must not raise.
    return "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass"))


def _reserved(name: str) -> bool:
    lower = name.lower()
    return len(name) == 1 or lower in RESERVED_HEADERS or lower.startswith("content-")


# -- parsing ----------------------------------------------------------------------------------


def parse_profile(table: Any, where: str, *, secure: bool) -> SipProfile:
    """Read a connector's ``sip`` table (None: the default profile). ``secure``: the
    connector's srs or a standby says ``secure=true``. Raises :class:`ProfileError`."""
    if table is None:
        return SipProfile()
    if not isinstance(table, Mapping):
        raise ProfileError(f"{where}: must be a table")
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise ProfileError(f"{where}.{unknown[0]}: unknown key")

    def get(name: str, kind: type | tuple[type, ...], what: str) -> Any:
        value = table.get(name)
        if value is not None and (isinstance(value, bool) and kind is not bool
                                  or not isinstance(value, kind)):
            raise ProfileError(f"{where}.{name}: must be {what}")
        return value

    headers = _headers(get("headers", Mapping, "a table of name = \"value\""), where)
    parameters_as = get("parameters_as", str, "a string") or "metadata"
    if parameters_as not in _PARAMETERS_AS:
        raise ProfileError(f"{where}.parameters_as: must be one of {', '.join(_PARAMETERS_AS)}")
    prefix = get("parameter_header_prefix", str, "a string")
    if prefix is None:
        prefix = "X-"
    elif not prefix or len(prefix) > 32 or not _TOKEN_RE.fullmatch(prefix):
        raise ProfileError(f"{where}.parameter_header_prefix: must be 1-32 header-name "
                           "characters (RFC 3261 token), e.g. \"X-\"")
    max_bytes = get("parameter_headers_max_bytes", int, "an integer")
    if max_bytes is None:
        max_bytes = DEFAULT_PARAMETER_HEADERS_MAX_BYTES
    elif not 128 <= max_bytes <= 16384:
        raise ProfileError(f"{where}.parameter_headers_max_bytes: must be between 128 and 16384")
    group_name = get("group_name", str, "a string")
    if group_name is not None and (not 1 <= len(group_name) <= MAX_GROUP_NAME
                                   or _CONTROL_RE.search(group_name)):
        raise ProfileError(f"{where}.group_name: must be 1-{MAX_GROUP_NAME} printable characters")
    extensions = _extensions(get("extension_xml", list, "an array of strings"), where)

    session_expires = get("session_expires", int, "an integer")
    if session_expires is not None and session_expires != 0 and not (
            90 <= session_expires <= 86400):
        raise ProfileError(f"{where}.session_expires: must be 0 (no session timer) or "
                           "90-86400 seconds (RFC 4028 minimum 90)")
    keepalive = _seconds(get("keepalive_interval", (int, float), "a number"),
                         f"{where}.keepalive_interval", 1, 3600)
    setup = _seconds(get("setup_timeout", (int, float), "a number"),
                     f"{where}.setup_timeout", 1, 600)

    transport_profile = get("transport_profile", str, "a string")
    if transport_profile is not None:
        if transport_profile not in _TRANSPORT_PROFILES:
            raise ProfileError(f"{where}.transport_profile: must be \"RTP/SAVP\" or \"RTP/AVP\"")
        if transport_profile == "RTP/AVP" and secure:
            raise ProfileError(f"{where}.transport_profile: RTP/AVP (no SRTP) cannot be used "
                               "with a secure connector (srs ...;secure=true)")
        if transport_profile == "RTP/SAVP" and not secure:
            raise ProfileError(f"{where}.transport_profile: RTP/SAVP needs a secure connector "
                               "(add ;secure=true to srs)")
    suites = _suites(get("srtp_suites", list, "an array of suite names"), where, secure)
    return SipProfile(headers=headers, parameters_as=parameters_as,
                      parameter_header_prefix=prefix, parameter_headers_max_bytes=max_bytes,
                      group_name=group_name, extension_xml=extensions,
                      session_expires=session_expires, keepalive_interval=keepalive,
                      setup_timeout=setup, srtp_suites=suites,
                      transport_profile=transport_profile)


def _seconds(value: float | None, where: str, low: float, high: float) -> float | None:
    if value is None:
        return None
    if not low <= value <= high:
        raise ProfileError(f"{where}: must be between {low:g} and {high:g} seconds")
    return float(value)


def _headers(table: Mapping[str, Any] | None, where: str) -> tuple[tuple[str, str], ...]:
    if table is None:
        return ()
    if len(table) > MAX_HEADERS:
        raise ProfileError(f"{where}.headers: at most {MAX_HEADERS} headers")
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, value in table.items():
        # The name is shown (it is configuration, not a secret); the value never is.
        key = f"{where}.headers.{name!r}"
        if not _TOKEN_RE.fullmatch(name) or len(name) > MAX_HEADER_NAME:
            raise ProfileError(f"{key}: not a SIP header name (RFC 3261 token, 1-128 characters)")
        if _reserved(name):
            raise ProfileError(f"{key}: the user agent writes this header itself")
        if name.lower() in seen:
            raise ProfileError(f"{key}: given twice")
        seen.add(name.lower())
        if not isinstance(value, str):
            raise ProfileError(f"{key}: must be a string")
        if _CONTROL_RE.search(value) or len(value) > MAX_HEADER_VALUE or value != value.strip():
            raise ProfileError(f"{key}: the value must be at most {MAX_HEADER_VALUE} printable "
                               "characters without leading or trailing spaces")
        out.append((name, value))
    return tuple(out)


def _suites(value: list[Any] | None, where: str, secure: bool) -> tuple[str, ...]:
    if value is None:
        return SipProfile.srtp_suites
    if not secure:
        raise ProfileError(f"{where}.srtp_suites: needs a secure connector (add ;secure=true "
                           "to srs); without it media is plain RTP/AVP")
    if not 1 <= len(value) <= len(SUPPORTED_SUITES):
        raise ProfileError(f"{where}.srtp_suites: must name 1-{len(SUPPORTED_SUITES)} suites")
    out: list[str] = []
    for i, suite in enumerate(value):
        key = f"{where}.srtp_suites[{i}]"
        if not isinstance(suite, str):
            raise ProfileError(f"{key}: must be a string")
        if suite in _UNSUPPORTED_SUITES:
            raise ProfileError(f"{key}: {suite} is not supported by the bundled libsrtp")
        if suite not in SUPPORTED_SUITES:
            raise ProfileError(f"{key}: unknown suite (supported: {', '.join(SUPPORTED_SUITES)})")
        if suite in out:
            raise ProfileError(f"{key}: {suite} given twice")
        out.append(suite)
    return tuple(out)


def _extensions(value: list[Any] | None, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if len(value) > MAX_EXTENSIONS:
        raise ProfileError(f"{where}.extension_xml: at most {MAX_EXTENSIONS} blocks")
    out: list[str] = []
    for i, text in enumerate(value):
        key = f"{where}.extension_xml[{i}]"
        if not isinstance(text, str) or not text.strip():
            raise ProfileError(f"{key}: must be a non-empty string")
        if len(text) > MAX_EXTENSION_CHARS:
            raise ProfileError(f"{key}: at most {MAX_EXTENSION_CHARS} characters")
        out.append(ET.tostring(extension_element(text, key), encoding="unicode"))
    if sum(len(t) for t in out) > MAX_EXTENSIONS_TOTAL:
        raise ProfileError(f"{where}.extension_xml: at most {MAX_EXTENSIONS_TOTAL} characters "
                           "in all")
    return tuple(out)


def extension_element(text: str, where: str = "extension_xml") -> ET.Element:
    """Parse one configured extension block (one element, well-formed, no DTD/entities) and
    put its un-namespaced elements in :data:`EXTENSION_NS`. RFC 7865's own namespace is
    refused: such elements would be read as (invalid) recording metadata."""
    try:
        root = SafeET.fromstring(text)
    except ET.ParseError as exc:
        raise ProfileError(f"{where}: not well-formed XML ({exc})") from None
    except (DefusedXmlException, ValueError, LookupError) as exc:
        raise ProfileError(f"{where}: refused XML ({type(exc).__name__}: DTDs and entities "
                           "are not allowed)") from None
    for elem in root.iter():
        if not isinstance(elem.tag, str):  # comments, processing instructions
            continue
        if elem.tag.startswith(f"{{{RECORDING_NS}}}"):
            raise ProfileError(f"{where}: elements in the RFC 7865 namespace are not "
                               "extensions; use your own namespace")
        if not elem.tag.startswith("{"):
            elem.tag = f"{{{EXTENSION_NS}}}{elem.tag}"
    return root
