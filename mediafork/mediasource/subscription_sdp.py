"""The SDP of an rtpengine subscription: read rtpengine's sendonly offer (the codec of the
party we subscribed to, its telephone-event payload type, where the media will come from)
and write our recvonly answer pointing at one of mediafork's ingress ports.

rtpengine rejects a ``subscribe answer`` that does not accept every offered codec (unless
``allow transcoding`` is given, which we never want: mediafork forwards what it gets), so the
answer repeats every offered format with its rtpmap and fmtp lines.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..sip.errors import SipParseError
from ..sip.sdp import Codec, MediaDescription, SessionDescription
from .errors import NgBadReply, NoUsableCodec

__all__ = ["TrackMedia", "build_answer", "read_offer"]

# RFC 3551 static payload types a SIP call may use without an rtpmap line.
_STATIC = {0: ("PCMU", 8000), 3: ("GSM", 8000), 4: ("G723", 8000), 8: ("PCMA", 8000),
           9: ("G722", 8000), 18: ("G729", 8000)}
# Not the call's audio: DTMF events, comfort noise, redundancy wrappers.
_NOT_AUDIO = {"telephone-event", "cn", "red", "ulpfec"}


@dataclass(frozen=True)
class TrackMedia:
    """What rtpengine will send for one party."""

    codec: Codec
    """The first audio codec of the offer: the one the party's media uses."""
    dtmf_payload_type: int | None
    """telephone-event payload type at the codec's clock rate (None: not offered)."""
    payload_types: tuple[int, ...]
    """Every payload type offered (and accepted by our answer)."""
    source: tuple[str, int]
    """rtpengine's address and port for this stream: it sends from there (symmetric RTP)."""
    ptime: int | None = None


def read_offer(sdp_text: object, tag: str) -> tuple[SessionDescription, int, TrackMedia]:
    """Parse the offer of a ``subscribe request`` reply for the party ``tag``: returns the
    parsed SDP, the index of its audio m-line, and what that m-line says."""
    if not isinstance(sdp_text, str | bytes):
        raise NgBadReply(f"rtpengine's subscription for {tag} has no SDP")
    try:
        sdp = SessionDescription.parse(sdp_text)
    except SipParseError as exc:
        raise NgBadReply(f"rtpengine's SDP for {tag} cannot be parsed: {exc}") from None
    audio = [i for i, m in enumerate(sdp.media) if m.media == "audio" and m.port != 0]
    if not audio:
        raise NoUsableCodec(f"rtpengine offers no audio stream for {tag}")
    index = audio[0]
    media = sdp.media[index]
    if media.proto != "RTP/AVP":
        # We ask for transport-protocol RTP/AVP: anything else would be encrypted or
        # feedback-profiled media the ingress cannot read.
        raise NoUsableCodec(f"rtpengine offers {media.proto} for {tag}; mediafork takes RTP/AVP")
    address = media.connection or sdp.connection
    try:
        address = str(ipaddress.ip_address(address or ""))
    except ValueError:
        raise NgBadReply(f"rtpengine's SDP for {tag} has no usable connection address") from None
    try:
        rtpmap = media.rtpmap
        ptime = media.ptime
    except SipParseError as exc:
        raise NgBadReply(f"rtpengine's SDP for {tag}: {exc}") from None
    payload_types: list[int] = []
    for fmt in media.formats:
        if not fmt.isdigit() or int(fmt) > 127:
            raise NgBadReply(f"rtpengine's SDP for {tag} has a bad format {fmt[:16]!r}")
        payload_types.append(int(fmt))
    codec: Codec | None = None
    for pt in payload_types:
        name, rate, channels = rtpmap.get(pt, (*_STATIC.get(pt, ("", 0)), 1))
        if name and name.lower() not in _NOT_AUDIO:
            codec = Codec(name, pt, rate, channels)
            break
    if codec is None:
        raise NoUsableCodec(f"rtpengine offers no audio codec mediafork knows for {tag}")
    fmtp = _fmtp(media, codec.payload_type)
    if fmtp is not None:
        try:
            codec = Codec(codec.name, codec.payload_type, codec.clock_rate, codec.channels, fmtp)
        except ValueError:
            raise NgBadReply(f"rtpengine's SDP for {tag} has a bad a=fmtp") from None
    events = [pt for pt in payload_types
              if rtpmap.get(pt, ("",))[0].lower() == "telephone-event"]
    same_rate = [pt for pt in events if rtpmap[pt][1] == codec.clock_rate]
    dtmf = (same_rate or events or [None])[0]
    return sdp, index, TrackMedia(codec, dtmf, tuple(payload_types), (address, media.port),
                                  ptime)


def _fmtp(media: MediaDescription, payload_type: int) -> str | None:
    """The parameters of ``a=fmtp:<payload_type>`` (None: no such line)."""
    for value in media.attribute_values("fmtp"):
        pt, _, params = (value or "").partition(" ")
        if pt == str(payload_type) and params.strip():
            return params.strip()
    return None


def build_answer(offer: SessionDescription, index: int, address: str, port: int,
                 session_id: int) -> bytes:
    """Our recvonly answer: the offered formats at ``address``:``port`` for m-line ``index``,
    every other m-line refused with port 0 (RFC 3264 §6)."""
    ip = ipaddress.ip_address(address)
    kind = "IP6" if ip.version == 6 else "IP4"
    answer = SessionDescription(origin=f"mediafork {session_id} 1 IN {kind} {ip}",
                                name="mediafork", connection=str(ip))
    for i, offered in enumerate(offer.media):
        if i != index:
            answer.media.append(MediaDescription(offered.media, 0, offered.proto,
                                                 offered.formats))
            continue
        media = MediaDescription("audio", port, offered.proto, list(offered.formats))
        for name in ("rtpmap", "fmtp"):
            media.attributes += [(name, v) for v in offered.attribute_values(name)]
        if offered.ptime is not None:
            media.attributes.append(("ptime", str(offered.ptime)))
        if offered.rtcp_mux:
            # RTCP then comes to the RTP port, where the data plane counts and drops it;
            # without mux it would go to port + 1, which mediafork does not listen on.
            media.attributes.append(("rtcp-mux", None))
        media.attributes.append(("recvonly", None))
        answer.media.append(media)
    return answer.to_bytes()
