"""rtpengine as a media source: mediafork subscribes to the two parties of a call that
rtpengine already relays, and rtpengine forks their media to mediafork's ingress ports.

NG commands used (rtpengine docs/ng_control_protocol.md; README.md "The ng Control Protocol"
in 10.5): ``subscribe request`` (``call-id``, ``from-tag``, our ``to-tag``; reply ``sdp``, a
sendonly offer, and ``to-tag``), ``subscribe answer`` (``call-id``, ``to-tag``, our recvonly
``sdp``), ``unsubscribe`` (``call-id``, ``to-tag``), ``query`` (``call-id``; reply ``tags``,
each with ``subscriptions``) and ``statistics`` (``totalstatistics.uptime``).

* :class:`RtpengineEndpoint` is one ``[[media_sources]]`` entry: its NG client and what it
  knows of rtpengine's start time, to tell a restart from a deleted call.
* :class:`RtpengineSource` is one call: ``probe()`` when it is registered, ``attach()`` when
  its first Siprec or Recording starts, ``detach()`` when the last stops or the call ends,
  ``check()`` periodically while it is attached (or live).
"""

from __future__ import annotations

import contextlib
import math
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..engine import Track
from ..sip.sdp import SessionDescription
from .errors import (
    CallGone,
    MediaSourceError,
    NgBadReply,
    NgClosed,
    NgOverloaded,
    NgTimeout,
    SourceRestarted,
    SubscriptionLost,
    UnknownCall,
)
from .ng import NgTiming
from .ng_client import NgClient
from .subscription_sdp import TrackMedia, build_answer, read_offer

__all__ = ["RtpengineEndpoint", "RtpengineSource", "SourceMedia", "TrackMedia"]

_CONTROL = re.compile(r"[\x00-\x20\x7f]")
RESTART_TOLERANCE = 1.5
"""Seconds two estimates of rtpengine's start time may differ and still be the same process:
``uptime`` is whole seconds (up to 1 s off) and the request takes a round trip."""
# What every subscription asks of rtpengine: plain RTP whatever the call uses (SRTP, DTLS,
# ICE are rtpengine's business with the phones), and RTCP on the RTP port.
_SUBSCRIBE_OPTIONS: dict[str, Any] = {
    "transport-protocol": "RTP/AVP",
    "ICE": "remove",
    "rtcp-mux": ["offer"],
}


@dataclass(frozen=True)
class SourceMedia:
    """What rtpengine sends for each track of the call."""

    inbound: TrackMedia
    outbound: TrackMedia

    def track(self, track: Track) -> TrackMedia:
        return self.inbound if Track(track) == Track.INBOUND else self.outbound

    @property
    def clock_rate(self) -> int:
        """For ``Engine.add_call(clock_rate=…)``: the inbound party's codec rate."""
        return self.inbound.codec.clock_rate

    @property
    def dtmf_payload_type(self) -> int | None:
        """For ``Engine.add_call(dtmf_payload_type=…)`` (inbound party's)."""
        return self.inbound.dtmf_payload_type


class RtpengineEndpoint:
    """One rtpengine (one ``[[media_sources]]`` entry with ``kind = "rtpengine"``)."""

    def __init__(self, name: str, client: NgClient) -> None:
        self.name = name
        self.client = client
        self.started_at: float | None = None
        """rtpengine's start (wall clock) as last measured; None before the first measure."""
        self.epoch = 0
        """Bumped each time a different start time is measured: a restart."""

    @classmethod
    async def connect(cls, name: str, address: tuple[str, int], *,
                      timing: NgTiming | None = None,
                      max_outstanding: int = 1024) -> RtpengineEndpoint:
        """Open the NG socket (nothing is sent yet: rtpengine may start after us)."""
        return cls(name, await NgClient.connect(address, timing=timing,
                                                max_outstanding=max_outstanding))

    async def measure_start(self) -> bool:
        """Ask rtpengine how long it has been up; True when that shows a restart since the
        previous measure (the epoch was bumped)."""
        reply = await self.client.request({"command": "statistics"})
        try:
            uptime = float(reply["statistics"]["totalstatistics"]["uptime"])
        except (KeyError, TypeError, ValueError):
            raise NgBadReply("rtpengine's statistics reply has no totalstatistics.uptime") from None
        if not math.isfinite(uptime) or uptime < 0:
            raise NgBadReply("rtpengine's statistics reply has an impossible uptime")
        started = time.time() - uptime
        restarted = (self.started_at is not None
                     and abs(started - self.started_at) > RESTART_TOLERANCE)
        if restarted:
            self.epoch += 1
        if self.started_at is None or restarted:
            self.started_at = started
        return restarted

    async def heartbeat(self) -> bool:
        """One request for every call of this endpoint: True when rtpengine restarted since
        the last heartbeat (then every attached source's subscriptions are gone). Raises
        NgTimeout when it does not answer."""
        return await self.measure_start()

    def close(self) -> None:
        self.client.close()


def _check_text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 256 or _CONTROL.search(value):
        raise ValueError(f"{what} must be 1-256 printable characters without spaces")
    return value


class RtpengineSource:
    """One call relayed by rtpengine, seen as mediafork's two tracks.

    ``inbound_tag`` is the SIP tag of the party whose media is the inbound track (what the
    platform receives from the caller), ``outbound_tag`` the other party's.
    """

    def __init__(self, endpoint: RtpengineEndpoint, call_id: str, inbound_tag: str,
                 outbound_tag: str) -> None:
        self.endpoint = endpoint
        self.call_id = _check_text(call_id, "call_id")
        self.tags = {Track.INBOUND: _check_text(inbound_tag, "inbound_tag"),
                     Track.OUTBOUND: _check_text(outbound_tag, "outbound_tag")}
        if inbound_tag == outbound_tag:
            raise ValueError("inbound_tag and outbound_tag must differ")
        token = secrets.token_hex(6)
        self.subscription_tags = {track: f"mediafork-{token}-{track.label}" for track in Track}
        """Our ``to-tag`` per track: the participant rtpengine creates for the subscription."""
        self.media: SourceMedia | None = None
        self._subscribed: set[Track] = set()
        self._epoch: int | None = None

    @property
    def client(self) -> NgClient:
        return self.endpoint.client

    @property
    def attached(self) -> bool:
        """True while rtpengine forks at least one track to us."""
        return bool(self._subscribed)

    def __repr__(self) -> str:
        return (f"RtpengineSource({self.endpoint.name!r}, call_id={self.call_id!r}, "
                f"attached={self.attached})")

    # -- registration ------------------------------------------------------------------------
    async def probe(self) -> SourceMedia:
        """Check that rtpengine has the call and both tags and learn their codecs, without
        making anything flow: each subscription is requested, read and dropped at once.
        Raises UnknownCall, UnknownTag, NgTimeout, NgErrorReply, NgBadReply, NoUsableCodec."""
        await self._remember_epoch()
        found: dict[Track, TrackMedia] = {}
        for track in Track:
            tag = self.subscription_tags[track]
            try:
                _, _, found[track] = await self._request_subscription(track)
            except (NgTimeout, NgClosed, NgOverloaded):
                # Unanswered, no media flows from it, and asking again would only double the
                # wait of the request that registers the call: rtpengine drops it with the call.
                raise
            except BaseException:
                await self._unsubscribe_quietly(tag)
                raise
            await self._unsubscribe_quietly(tag)
        self.media = SourceMedia(found[Track.INBOUND], found[Track.OUTBOUND])
        return self.media

    # -- forking -----------------------------------------------------------------------------
    async def attach(self, ingress: Mapping[Track, tuple[str, int]]) -> SourceMedia:
        """Subscribe to both parties and have rtpengine send each to its ingress port.

        On failure nothing stays subscribed (the first track is unsubscribed when the second
        fails) and the error says why."""
        if self._subscribed:
            raise RuntimeError("already attached; detach() first")
        await self._remember_epoch()
        found: dict[Track, TrackMedia] = {}
        try:
            for track in Track:
                address, port = ingress[track]
                # Counted before the request: whatever fails after rtpengine created the
                # subscription, detach() below removes it.
                self._subscribed.add(track)
                offer, index, media = await self._request_subscription(track)
                answer = build_answer(offer, index, address, port, secrets.randbits(31))
                await self.client.request({
                    "command": "subscribe answer", "call-id": self.call_id,
                    "to-tag": self.subscription_tags[track], "sdp": answer.decode("ascii")})
                found[track] = media
        except BaseException:
            await self.detach()
            raise
        self.media = SourceMedia(found[Track.INBOUND], found[Track.OUTBOUND])
        return self.media

    async def detach(self) -> None:
        """Unsubscribe both tracks; rtpengine stops sending to the ingress ports. Idempotent.
        Best effort: when rtpengine does not answer, its side ends with the call anyway."""
        subscribed, self._subscribed = self._subscribed, set()
        for track in Track:
            if track in subscribed:
                await self._unsubscribe_quietly(self.subscription_tags[track])

    # -- liveness ----------------------------------------------------------------------------
    async def check(self) -> None:
        """Return when both parties and (while attached) our subscriptions to them are alive
        on rtpengine; raise SourceRestarted, CallGone or SubscriptionLost otherwise (NgTimeout
        when rtpengine does not answer). Two ``query`` requests, one per party.

        Each query names the party's tag: a proxy's ``delete`` of a branch destroys both
        parties, yet while our subscriptions exist the call itself stays listed, and a query
        without a tag would still show the destroyed parties. A call deleted with a delete
        delay (rtpengine's ``delete-delay``, 30 s by default) is found gone once that delay
        has passed; a timed-out call is removed whole."""
        for track in Track:
            tag = self.tags[track]
            try:
                reply = await self.client.request(
                    {"command": "query", "call-id": self.call_id, "from-tag": tag})
            except UnknownCall:
                await self._raise_if_restarted()
                raise CallGone(f"rtpengine no longer has call {self.call_id} "
                               "(deleted or timed out)") from None
            tags = reply.get("tags")
            if not isinstance(tags, dict):
                raise NgBadReply("rtpengine's query reply has no tags")
            party = tags.get(tag)
            if not isinstance(party, dict):
                await self._raise_if_restarted()
                raise CallGone(f"rtpengine's call {self.call_id} no longer has the "
                               f"{track.label} party {tag} (deleted)")
            if track in self._subscribed and not _lists(party.get("subscribers"),
                                                        self.subscription_tags[track]):
                await self._raise_if_restarted()
                raise SubscriptionLost(f"rtpengine's call {self.call_id} lost mediafork's "
                                       f"subscription to the {track.label} party")

    # -- internals ---------------------------------------------------------------------------
    async def _remember_epoch(self) -> None:
        if self.endpoint.started_at is None:
            await self.endpoint.measure_start()
        self._epoch = self.endpoint.epoch

    async def _raise_if_restarted(self) -> None:
        await self.endpoint.measure_start()
        if self._epoch is not None and self.endpoint.epoch != self._epoch:
            self._subscribed.clear()  # nothing of ours survived on rtpengine's side
            raise SourceRestarted(f"rtpengine {self.endpoint.name} restarted: the "
                                  f"subscriptions of call {self.call_id} are gone")

    async def _request_subscription(
            self, track: Track) -> tuple[SessionDescription, int, TrackMedia]:
        tag = self.tags[track]
        reply = await self.client.request({
            "command": "subscribe request", "call-id": self.call_id, "from-tag": tag,
            "to-tag": self.subscription_tags[track], **_SUBSCRIBE_OPTIONS})
        if reply.get("to-tag") not in (None, self.subscription_tags[track]):
            raise NgBadReply("rtpengine's subscription reply names another to-tag")
        return read_offer(reply.get("sdp"), tag)

    async def _unsubscribe_quietly(self, to_tag: str) -> None:
        # Unknown call or tag: nothing left to stop. No answer: see detach().
        with contextlib.suppress(MediaSourceError):
            await self.client.request({"command": "unsubscribe", "call-id": self.call_id,
                                       "to-tag": to_tag})


def _lists(participants: object, tag: str) -> bool:
    """True when a ``subscriptions``/``subscribers`` list of a query reply names ``tag``."""
    if not isinstance(participants, list):
        return False
    return any(isinstance(p, dict) and p.get("tag") == tag for p in participants)
