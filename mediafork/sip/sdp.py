"""SDP (RFC 8866) as far as SIPREC needs it, with SDES crypto attributes (RFC 4568).

The SRC only ever offers audio it sends (``sendonly``), one m-line per forked stream, and reads
back where each stream must go. Parsing is lenient about attributes we do not use and strict
about the lines we rely on (``c=``, ``m=``, ``a=crypto``).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass, field

from .errors import SipParseError, excerpt

SUITE_80 = "AES_CM_128_HMAC_SHA1_80"
SUITE_32 = "AES_CM_128_HMAC_SHA1_32"
SUITE_GCM_128 = "AEAD_AES_128_GCM"
SUITE_GCM_256 = "AEAD_AES_256_GCM"
MASTER_KEY_LENGTH = 30
"""Octets of an AES_CM_128 master key plus salt (16 + 14)."""
KEY_LENGTHS = {SUITE_80: 30, SUITE_32: 30, SUITE_GCM_128: 28, SUITE_GCM_256: 44}
"""Master key + salt octets per SDES suite (RFC 4568 §6.2, RFC 7714 §12: 16/32 + 12)."""
SUPPORTED_SUITES = tuple(KEY_LENGTHS)
"""The suites the data plane's libsrtp can key (mediafork.media.srtp.SrtpProfile)."""
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")

_CRYPTO_RE = re.compile(
    r"^(\d{1,9})[ \t]+([A-Za-z0-9_]+)[ \t]+inline:([^ \t|;]+)((?:\|[^ \t|;]+)*)(.*)$"
)


@dataclass(frozen=True)
class Crypto:
    """One ``a=crypto`` line with a single inline key (RFC 4568 §9.1, §6.1)."""

    tag: int
    suite: str
    key: bytes = field(repr=False)
    """Master key || master salt (secret: never shown in repr)."""
    lifetime: str | None = None
    mki: str | None = None
    session_params: str = ""

    @classmethod
    def parse(cls, value: str) -> Crypto:
        """Parse the value of an ``a=crypto`` attribute; raise SipParseError if malformed."""
        match = _CRYPTO_RE.match(value.strip())
        if not match:
            # Do not echo the value: it holds a key.
            raise SipParseError("malformed a=crypto attribute")
        tag, suite, b64, extras, session_params = match.groups()
        try:
            key = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SipParseError("a=crypto key is not valid base64") from exc
        lifetime = mki = None
        for extra in [e for e in extras.split("|") if e]:
            if ":" in extra:
                mki = extra
            else:
                lifetime = extra
        if suite in KEY_LENGTHS and len(key) != KEY_LENGTHS[suite]:
            raise SipParseError(f"a=crypto key for {suite} must be {KEY_LENGTHS[suite]} bytes")
        return cls(int(tag), suite, key, lifetime, mki, session_params.strip())

    def __str__(self) -> str:
        inline = "inline:" + base64.b64encode(self.key).decode("ascii")
        if self.lifetime:
            inline += "|" + self.lifetime
        if self.mki:
            inline += "|" + self.mki
        tail = f" {self.session_params}" if self.session_params else ""
        return f"{self.tag} {self.suite} {inline}{tail}"


@dataclass
class MediaDescription:
    """One ``m=`` section with its connection and attributes."""

    media: str
    port: int
    proto: str
    formats: list[str]
    port_count: int | None = None
    connection: str | None = None
    attributes: list[tuple[str, str | None]] = field(default_factory=list)

    def attribute(self, name: str) -> str | None:
        """Value of the first attribute ``name`` (None if absent or valueless)."""
        for key, value in self.attributes:
            if key == name:
                return value
        return None

    def attribute_values(self, name: str) -> list[str]:
        """Values of every attribute ``name``."""
        return [value or "" for key, value in self.attributes if key == name]

    def has_attribute(self, name: str) -> bool:
        """True if attribute ``name`` is present."""
        return any(key == name for key, _ in self.attributes)

    @property
    def direction(self) -> str:
        """sendrecv / sendonly / recvonly / inactive (sendrecv when unstated)."""
        for key, _ in self.attributes:
            if key in DIRECTIONS:
                return key
        return "sendrecv"

    def set_direction(self, direction: str) -> None:
        """Replace the direction attribute."""
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {direction!r}")
        self.attributes = [(k, v) for k, v in self.attributes if k not in DIRECTIONS]
        self.attributes.append((direction, None))

    @property
    def label(self) -> str | None:
        """``a=label`` (RFC 4574): how SIPREC metadata refers to this stream."""
        return self.attribute("label")

    @property
    def rtpmap(self) -> dict[int, tuple[str, int, int]]:
        """Payload type -> (encoding name, clock rate, channels)."""
        out: dict[int, tuple[str, int, int]] = {}
        for value in self.attribute_values("rtpmap"):
            match = re.match(r"^(\d+)\s+([^/\s]+)/(\d+)(?:/(\d+))?\s*$", value)
            if not match:
                raise SipParseError(f"malformed a=rtpmap: {excerpt(value)}")
            pt, name, rate, channels = match.groups()
            out[int(pt)] = (name, int(rate), int(channels or 1))
        return out

    @property
    def ptime(self) -> int | None:
        """``a=ptime`` in milliseconds."""
        value = self.attribute("ptime")
        if value is None:
            return None
        try:
            return int(float(value))
        except ValueError as exc:
            raise SipParseError("malformed a=ptime") from exc

    @property
    def cryptos(self) -> list[Crypto]:
        """Every ``a=crypto`` line, in order."""
        return [Crypto.parse(value) for value in self.attribute_values("crypto")]

    @property
    def rtcp(self) -> tuple[int, str | None] | None:
        """``a=rtcp`` (RFC 3605) as (port, address or None)."""
        value = self.attribute("rtcp")
        if value is None:
            return None
        parts = value.split()
        if not parts or not parts[0].isdigit() or len(parts) not in (1, 4):
            raise SipParseError(f"malformed a=rtcp: {excerpt(value)}")
        return int(parts[0]), parts[3] if len(parts) == 4 else None

    @property
    def rtcp_mux(self) -> bool:
        """``a=rtcp-mux`` present (RTCP shares the RTP port)."""
        return self.has_attribute("rtcp-mux")


@dataclass
class SessionDescription:
    """A whole SDP body."""

    origin: str = "- 0 0 IN IP4 0.0.0.0"
    name: str = "-"
    connection: str | None = None
    timing: str = "0 0"
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)
    other_lines: list[tuple[str, str]] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        """Serialize with CRLF line ends."""
        lines = ["v=0", f"o={self.origin}", f"s={self.name}"]
        lines += [f"{k}={v}" for k, v in self.other_lines if k in "iuepb"]
        if self.connection:
            lines.append(f"c={_conn(self.connection)}")
        lines.append(f"t={self.timing}")
        lines += [_attr(k, v) for k, v in self.attributes]
        for m in self.media:
            port = f"{m.port}/{m.port_count}" if m.port_count else str(m.port)
            lines.append(f"m={m.media} {port} {m.proto} {' '.join(m.formats)}")
            if m.connection:
                lines.append(f"c={_conn(m.connection)}")
            lines += [_attr(k, v) for k, v in m.attributes]
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")

    @classmethod
    def parse(cls, data: bytes | str) -> SessionDescription:
        """Parse an SDP body; raise SipParseError if malformed."""
        if isinstance(data, bytes):
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SipParseError("SDP is not valid UTF-8") from exc
        lines = [line for line in re.split(r"\r?\n", data) if line]
        if not lines or lines[0].strip() != "v=0":
            raise SipParseError("SDP must start with v=0")
        if len(lines) > 1000:
            raise SipParseError("SDP has too many lines")
        sdp = cls()
        current: MediaDescription | None = None
        seen_origin = False
        for line in lines[1:]:
            if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
                raise SipParseError(f"malformed SDP line: {excerpt(line)}")
            kind, value = line[0], line[2:].strip()
            if kind == "m":
                current = _parse_media(value)
                sdp.media.append(current)
            elif kind == "c":
                address = _parse_conn(value)
                if current is None:
                    sdp.connection = address
                else:
                    current.connection = address
            elif kind == "a":
                name, sep, attr_value = value.partition(":")
                entry = (name, attr_value if sep else None)
                (sdp.attributes if current is None else current.attributes).append(entry)
            elif current is None and kind == "o":
                if len(value.split()) != 6:
                    raise SipParseError("malformed o= line")
                sdp.origin, seen_origin = value, True
            elif current is None and kind == "s":
                sdp.name = value
            elif current is None and kind == "t":
                sdp.timing = value
            else:
                sdp.other_lines.append((kind, value))
        if not seen_origin:
            raise SipParseError("SDP has no o= line")
        return sdp


def _attr(name: str, value: str | None) -> str:
    return f"a={name}" if value is None else f"a={name}:{value}"


def _conn(address: str) -> str:
    kind = "IP6" if ":" in address else "IP4"
    return f"IN {kind} {address}"


def _parse_conn(value: str) -> str:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SipParseError(f"malformed c= line: {excerpt(value)}")
    return parts[2].split("/")[0]


def _parse_media(value: str) -> MediaDescription:
    parts = value.split()
    if len(parts) < 3:
        raise SipParseError(f"malformed m= line: {excerpt(value)}")
    port_text, _, count = parts[1].partition("/")
    if not port_text.isdigit() or int(port_text) > 65535 or (count and not count.isdigit()):
        raise SipParseError(f"bad port in m= line: {excerpt(value)}")
    return MediaDescription(
        parts[0], int(port_text), parts[2], parts[3:], int(count) if count else None
    )


# --- the SRC offer and the SRS answer ---------------------------------------------------------


@dataclass(frozen=True)
class Codec:
    """The call's audio codec, forwarded unchanged to the SRS."""

    name: str
    payload_type: int
    clock_rate: int
    channels: int = 1
    """Written in the rtpmap when not 1 (Opus: always 2, RFC 7587 §7)."""
    fmtp: str | None = None
    """Format parameters for ``a=fmtp:<pt>`` (one line of printable ASCII); None: none."""

    def __post_init__(self) -> None:
        if self.fmtp is not None and (
            not self.fmtp or any(not 0x20 <= ord(c) <= 0x7E for c in self.fmtp)
        ):
            raise ValueError("fmtp must be one non-empty line of printable ASCII")


@dataclass(frozen=True)
class OfferStream:
    """One forked stream as offered: its label, local RTP port and optional SDES keys."""

    label: str
    port: int
    codec: Codec
    key_80: bytes | None = field(default=None, repr=False)
    """Master key+salt (30 bytes) offered with AES_CM_128_HMAC_SHA1_80 (secret)."""
    key_32: bytes | None = field(default=None, repr=False)
    """Master key+salt (30 bytes) offered with AES_CM_128_HMAC_SHA1_32 (secret)."""
    ptime: int | None = 20
    keys: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)
    """(suite, master key+salt) offered in this order with tags 1, 2, … (a connector's
    ``srtp_suites``); when given, ``key_80``/``key_32`` are ignored (secret)."""

    @property
    def secure(self) -> bool:
        """True when the stream is offered as RTP/SAVP."""
        return bool(self.keys) or self.key_80 is not None or self.key_32 is not None

    def offered_cryptos(self) -> list[Crypto]:
        """The a=crypto lines we offer: ``keys`` in order, or else the _80 suite (tag 1)
        then _32 (tag 2)."""
        pairs = list(self.keys) or [(SUITE_80, self.key_80), (SUITE_32, self.key_32)]
        out = []
        for tag, (suite, key) in enumerate(pairs, start=1):
            if key is not None:
                length = KEY_LENGTHS.get(suite)
                if length is None:
                    raise ValueError(f"unsupported SRTP suite {suite}")
                if len(key) != length:
                    raise ValueError(f"SRTP key for {suite} must be {length} bytes")
                out.append(Crypto(tag, suite, key))
        return out


def build_offer(
    streams: list[OfferStream],
    address: str,
    session_id: int,
    version: int,
    direction: str = "sendonly",
    username: str = "mediafork",
) -> SessionDescription:
    """Build the SRC's SDP: one audio m-line per forked stream, labelled, no telephone-event."""
    labels = [s.label for s in streams]
    if len(set(labels)) != len(labels):
        raise ValueError("stream labels must be unique")
    ipaddress.ip_address(address)  # the SDP must carry a literal address
    kind = "IP6" if ":" in address else "IP4"
    sdp = SessionDescription(
        origin=f"{username} {session_id} {version} IN {kind} {address}",
        name="SIPREC",
        connection=address,
    )
    for stream in streams:
        codec = stream.codec
        media = MediaDescription(
            "audio",
            stream.port,
            "RTP/SAVP" if stream.secure else "RTP/AVP",
            [str(codec.payload_type)],
        )
        media.attributes.append(("label", stream.label))
        channels = f"/{codec.channels}" if codec.channels != 1 else ""
        media.attributes.append(
            ("rtpmap", f"{codec.payload_type} {codec.name}/{codec.clock_rate}{channels}")
        )
        if codec.fmtp:
            media.attributes.append(("fmtp", f"{codec.payload_type} {codec.fmtp}"))
        if stream.ptime:
            media.attributes.append(("ptime", str(stream.ptime)))
        for crypto in stream.offered_cryptos():
            media.attributes.append(("crypto", str(crypto)))
        media.attributes.append((direction, None))
        sdp.media.append(media)
    return sdp


@dataclass(frozen=True)
class AnsweredStream:
    """Where one offered stream must be sent, as the answer says."""

    label: str
    address: str | None
    port: int | None
    """RTP destination port; None when the answer set port 0 (do not send)."""
    direction: str
    rtcp: tuple[str, int] | None
    """RTCP destination (address, port); same as RTP when rtcp-mux is answered."""
    suite: str | None = None
    """SRTP suite selected by the answer's a=crypto tag (None for plain RTP)."""
    tag: int | None = None
    """The offered a=crypto tag the answer selected."""
    remote_key: bytes | None = field(default=None, repr=False)
    """The answerer's own master key+salt (secret)."""


def read_answer(answer: SessionDescription, offered: list[OfferStream]) -> list[AnsweredStream]:
    """Match the answer's m-lines to our offer (by position, RFC 3264 §6) and read each one.

    Raises SipParseError when the answer is unusable: wrong number of m-lines, a secure stream
    answered without a crypto line naming one of our tags, or a non-zero port without address.
    """
    if len(answer.media) != len(offered):
        raise SipParseError(
            f"answer has {len(answer.media)} m-lines for an offer of {len(offered)}"
        )
    out: list[AnsweredStream] = []
    for media, stream in zip(answer.media, offered, strict=True):
        address = media.connection or answer.connection
        if media.port == 0:
            out.append(AnsweredStream(stream.label, address, None, "inactive", None))
            continue
        if address is None:
            raise SipParseError("answer m-line has no connection address")
        if not _answers_codec(media, stream.codec):
            # We can only forward the call's codec as it is: an SRS expecting another one
            # would decode it into noise and record "successfully".
            raise SipParseError(
                f"answer for stream {stream.label} accepts none of the offered formats "
                f"({stream.codec.name}/{stream.codec.clock_rate})"
            )
        suite = tag = remote_key = None
        if stream.secure:
            offered_tags = {c.tag: c.suite for c in stream.offered_cryptos()}
            for crypto in media.cryptos:
                if offered_tags.get(crypto.tag) == crypto.suite:
                    suite, tag, remote_key = crypto.suite, crypto.tag, crypto.key
                    break
            if suite is None:
                raise SipParseError(f"answer for stream {stream.label} selects no offered crypto")
        rtcp_attr = media.rtcp
        if media.rtcp_mux:
            rtcp: tuple[str, int] | None = (address, media.port)
        elif rtcp_attr is not None:
            rtcp = (rtcp_attr[1] or address, rtcp_attr[0])
        else:
            rtcp = (address, media.port + 1)
        out.append(
            AnsweredStream(
                stream.label, address, media.port, media.direction, rtcp, suite, tag, remote_key
            )
        )
    return out


def _answers_codec(media: MediaDescription, codec: Codec) -> bool:
    """The answer keeps our codec: by payload type (same number, and its rtpmap, if any,
    names the codec) or, for a renumbered dynamic type, by rtpmap name and clock rate."""
    rtpmap = media.rtpmap
    name = (codec.name.lower(), codec.clock_rate)
    for fmt in media.formats:
        if not fmt.isdigit():
            continue
        mapped = rtpmap.get(int(fmt))
        if mapped is not None and (mapped[0].lower(), mapped[1]) == name:
            return True
        if int(fmt) == codec.payload_type and mapped is None:
            return True
    return False


def build_answer(
    remote_offer: SessionDescription,
    local: list[OfferStream],
    address: str,
    session_id: int,
    version: int,
    paused: bool,
) -> tuple[SessionDescription, list[AnsweredStream]]:
    """Answer an SRS-initiated offer (re-INVITE/UPDATE) and read where media must now go.

    Each of their m-lines maps to our stream at the same position; extra m-lines are rejected
    with port 0. Our direction is sendonly unless they asked for inactive/sendonly or we are
    paused. For SRTP we pick their first a=crypto line with a suite we offer and answer with our
    own key for that suite under their tag.
    """
    sdp = build_offer([], address, session_id, version)
    result: list[AnsweredStream] = []
    for index, their in enumerate(remote_offer.media):
        if index >= len(local):
            sdp.media.append(MediaDescription(their.media, 0, their.proto, their.formats))
            continue
        stream = local[index]
        peer_dir = their.direction
        inactive = paused or their.port == 0 or peer_dir in ("inactive", "sendonly")
        direction = "inactive" if inactive else "sendonly"
        ours = build_offer([stream], address, session_id, version, direction).media[0]
        ours.attributes = [(k, v) for k, v in ours.attributes if k != "crypto"]
        chosen: Crypto | None = None
        if stream.secure:
            keys = {c.suite: c.key for c in stream.offered_cryptos()}
            for crypto in their.cryptos:
                key = keys.get(crypto.suite)
                if key is not None:
                    chosen = crypto
                    ours.attributes.insert(
                        -1, ("crypto", str(Crypto(crypto.tag, crypto.suite, key)))
                    )
                    break
            if chosen is None:
                ours.port = 0
        sdp.media.append(ours)
        address_ = their.connection or remote_offer.connection
        port = (
            their.port
            if their.port and address_ and not (stream.secure and chosen is None)
            else None
        )
        rtcp = None
        if port is not None and address_ is not None:
            attr = their.rtcp
            rtcp = (
                (address_, port)
                if their.rtcp_mux
                else (((attr[1] or address_), attr[0]) if attr else (address_, port + 1))
            )
        result.append(
            AnsweredStream(
                stream.label,
                address_,
                port,
                direction,
                rtcp,
                chosen.suite if chosen else None,
                chosen.tag if chosen else None,
                chosen.key if chosen else None,
            )
        )
    return sdp, result
