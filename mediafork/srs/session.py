"""One recording session at the reference recorder: offer/answer, metadata, media and files.

A :class:`RecordedSession` is created for every initial INVITE the recorder decides about (even
rejected ones, so tests can see what happened). Accepted sessions own one
:class:`~mediafork.srs.media.StreamReceiver` per offered stream and a folder under the output
directory holding the metadata documents, one WAV per stream and ``summary.json``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..sip.errors import SipParseError
from ..sip.message import Request, parse_multipart
from ..sip.metadata import (
    CONTENT_TYPE as METADATA_TYPE,
)
from ..sip.metadata import (
    LEGACY_CONTENT_TYPE,
    REQUEST_CONTENT_TYPE,
    ParsedMetadata,
    parse_metadata,
)
from ..sip.sdp import KEY_LENGTHS, Crypto, MediaDescription, SessionDescription
from .media import PROFILES, MediaParams, StreamReceiver

log = logging.getLogger("mediafork.srs")

STATIC_PAYLOADS = {0: ("PCMU", 8000), 8: ("PCMA", 8000), 9: ("G722", 8000), 18: ("G729", 8000)}
"""RFC 3551 static payload types an offer may use without a=rtpmap."""
PREFERRED = ("PCMU", "PCMA")
"""Codecs the recorder can decode into WAV; chosen first when offered."""


class OfferError(Exception):
    """The request cannot be answered; carries the SIP status and a Warning text."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


@dataclass
class Bodies:
    """The parts of a request body the recorder cares about."""

    sdp: SessionDescription | None = None
    metadata: bytes | None = None
    metadata_type: str | None = None
    snapshot_request: bool = False


def split_body(request: Request) -> Bodies:
    """Find the SDP and the RFC 7865 metadata in a (possibly multipart) body.

    Raises OfferError 415 for body types we cannot read and 400 for malformed SDP, as an SRS
    would (RFC 7866 §7.1.1 lets the SRC retry with the other metadata type on 415).
    """
    out = Bodies()
    if not request.body:
        return out
    ctype = request.content_type
    if ctype is None:
        raise OfferError(400, "body without Content-Type")
    if ctype.type == "multipart":
        try:
            parts = [(p.content_type, p.body) for p in parse_multipart(request.body, ctype)]
        except SipParseError as exc:
            raise OfferError(400, f"malformed multipart body: {exc}") from exc
    else:
        parts = [(ctype.mime, request.body)]
    for mime, body in parts:
        if mime == "application/sdp":
            try:
                out.sdp = SessionDescription.parse(body)
            except SipParseError as exc:
                raise OfferError(400, f"malformed SDP: {exc}") from exc
        elif mime in (METADATA_TYPE, LEGACY_CONTENT_TYPE):
            out.metadata, out.metadata_type = body, mime
        elif mime == REQUEST_CONTENT_TYPE:
            out.snapshot_request = True
        elif len(parts) == 1:
            raise OfferError(415, f"unsupported body type {mime}")
    return out


def _choose_codec(media: MediaDescription) -> tuple[int, str, int] | None:
    """Pick (payload type, name, clock rate): G.711 first (we can write it), else the first
    audio format that is not telephone-event/CN (counted but not decoded)."""
    rtpmap = media.rtpmap
    candidates: list[tuple[int, str, int]] = []
    for fmt in media.formats:
        if not fmt.isdigit():
            continue
        pt = int(fmt)
        if pt in rtpmap:
            name, rate, _ = rtpmap[pt]
        elif pt in STATIC_PAYLOADS:
            name, rate = STATIC_PAYLOADS[pt]
        else:
            continue
        if name.lower() in ("telephone-event", "cn"):
            continue
        candidates.append((pt, name.upper(), rate))
    for pt, name, rate in candidates:
        if name in PREFERRED:
            return pt, name, rate
    return candidates[0] if candidates else None


def _format_attributes(media: MediaDescription, pt: int, name: str, rate: int
                       ) -> list[tuple[str, str | None]]:
    """The answer's rtpmap and fmtp for the chosen format: the offer's own lines (so Opus
    stays ``opus/48000/2`` with its parameters, RFC 7587 §7), else ``name/rate``."""
    def of(attribute: str) -> str | None:
        for value in media.attribute_values(attribute):
            if value.split(" ", 1)[0] == str(pt):
                return value
        return None

    out: list[tuple[str, str | None]] = [("rtpmap", of("rtpmap") or f"{pt} {name}/{rate}")]
    fmtp = of("fmtp")
    if fmtp is not None:
        out.append(("fmtp", fmtp))
    return out


def _safe(text: str, limit: int = 48) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:limit] or "session"


def _iso(when: float | None) -> str | None:
    if when is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{int(when % 1 * 1000):03d}Z"


class RecordedSession:
    """State of one SIPREC session seen from the recorder (the UAS side of its dialog)."""

    def __init__(
        self,
        request: Request,
        transport: str,
        source: tuple[str, int],
        out_dir: Path,
        media_host: str,
        media_ports: tuple[int, int],
        rtcp_interval: float,
        *,
        keep_payloads: bool = False,
    ) -> None:
        self.call_id = request.call_id
        self.transport = transport
        self.source = source
        self.from_value = request.headers.get("From") or ""
        self.to_value = request.headers.get("To") or ""
        self.request_uri = request.uri
        self.remote_tag = request.from_.tag
        self.local_tag = secrets.token_hex(6)
        contacts = request.contacts
        self.remote_target = str(contacts[0].uri) if contacts else str(request.from_.uri)
        self.src_contact = request.headers.get("Contact") or ""
        self.src_feature = "+sip.src" in self.src_contact
        # A UAS keeps the INVITE's Record-Route in order as its route set (RFC 3261 §12.1.1).
        self.route_set = list(request.headers.get_all("Record-Route"))
        require = [t.lower() for t in request.headers.values("Require")]
        self.siprec = "siprec" in require
        self.local_cseq = 0
        self.remote_cseq = request.cseq[0]
        self.out_dir = out_dir
        self.media_host = media_host
        self.media_ports = media_ports
        self.rtcp_interval = rtcp_interval
        self.keep_payloads = keep_payloads
        self.state = "new"
        """new → answered → established → ended; or rejected / unanswered / cancelled."""
        self.status: int | None = None
        self.reason: str | None = None
        self.started_at = time.time()
        self.established_at: float | None = None
        self.ended_at: float | None = None
        self.ended_by: str | None = None
        """``src`` (their BYE), ``srs`` (our BYE: hangup-after), ``shutdown``, ``ack-timeout``."""
        self.bye_status: int | None = None
        self.receivers: list[StreamReceiver | None] = []
        self.metadata_docs: list[ParsedMetadata] = []
        self.metadata_type: str | None = None
        self.metadata_errors: list[str] = []
        self.warnings: list[str] = []
        self.reinvites = 0
        self.updates = 0
        self.snapshot_requests = 0
        self.srs_reinvites = 0
        """Re-INVITEs the recorder sent that the SRC accepted."""
        self.offered_directions: list[list[str]] = []
        """Per SDP offer from the SRC, in order: each m-line's direction (``sendonly``;
        ``inactive`` while the SRC pauses). Bounded: the last 64 offers."""
        self._pending_offer: SessionDescription | None = None
        self.sdp_version = 0
        self.sdp_session_id = secrets.randbelow(2**31)
        self.last_answer: SessionDescription | None = None
        self._last_answer_key: bytes | None = None
        self.directory: Path | None = None
        self.peer: Any = None
        """The server's record of the path the INVITE came on (requests we send use it)."""
        if not self.siprec:
            self.warnings.append("INVITE without Require: siprec")
        if not self.src_feature:
            self.warnings.append("Contact without +sip.src")

    # --- dialog helpers ----------------------------------------------------------------------

    @property
    def live(self) -> bool:
        return self.state in ("answered", "established")

    def next_cseq(self) -> int:
        self.local_cseq += 1
        return self.local_cseq

    # --- offer / answer ----------------------------------------------------------------------

    async def accept(self, bodies: Bodies) -> SessionDescription:
        """Handle the initial offer: open receivers and return the answer."""
        if bodies.sdp is None:
            raise OfferError(488, "no SDP offer (offer-less INVITE is not supported)")
        if bodies.metadata is None:
            self.warnings.append("INVITE without recording metadata")
        self.directory = self._make_directory()
        self._add_metadata(bodies)
        try:
            answer = await self._answer(bodies.sdp)
        except SipParseError as exc:  # e.g. a malformed a=rtpmap only read when answering
            await self.close_media()
            raise OfferError(400, f"malformed SDP: {exc}") from exc
        if all(r is None for r in self.receivers):
            await self.close_media()
            raise OfferError(488, "no acceptable audio stream in the offer")
        self.write_summary()
        return answer

    async def reoffer(self, bodies: Bodies, method: str) -> SessionDescription | None:
        """A re-INVITE/UPDATE from the SRC: new metadata, new SDP (or none: repeat ours)."""
        if method == "INVITE":
            self.reinvites += 1
        else:
            self.updates += 1
        if bodies.snapshot_request:
            self.snapshot_requests += 1
        self._add_metadata(bodies)
        if bodies.sdp is not None:
            try:
                answer = await self._answer(bodies.sdp)
            except SipParseError as exc:
                raise OfferError(400, f"malformed SDP: {exc}") from exc
        else:
            answer = self.last_answer
        self.write_summary()
        return answer

    async def _answer(self, offer: SessionDescription) -> SessionDescription:
        self.offered_directions = [*self.offered_directions[-63:],
                                   [m.direction for m in offer.media]]
        kind = "IP6" if ":" in self.media_host else "IP4"
        answer = SessionDescription(
            origin=f"mediafork-srs {self.sdp_session_id} {self.sdp_version} IN {kind} "
            f"{self.media_host}",
            name="mediafork reference recorder",
            connection=self.media_host,
        )
        for index, media in enumerate(offer.media):
            existing = self.receivers[index] if index < len(self.receivers) else None
            line, receiver = await self._answer_media(offer, index, media, existing)
            answer.media.append(line)
            if index < len(self.receivers):
                self.receivers[index] = receiver
            else:
                self.receivers.append(receiver)
        # Streams the new offer no longer carries stop (RFC 3264 §8.2 removes them with port 0).
        for index in range(len(offer.media), len(self.receivers)):
            receiver = self.receivers[index]
            if receiver is not None:
                receiver.set_paused(True)
        # RFC 3264 §8: the version moves only when the answer changed.
        key = answer.to_bytes().split(b"\r\n", 2)[2]
        if self._last_answer_key is not None and key != self._last_answer_key:
            self.sdp_version += 1
            answer.origin = (
                f"mediafork-srs {self.sdp_session_id} {self.sdp_version} IN {kind} "
                f"{self.media_host}"
            )
        self._last_answer_key = key
        self.last_answer = answer
        return answer

    async def _answer_media(
        self,
        offer: SessionDescription,
        index: int,
        media: MediaDescription,
        existing: StreamReceiver | None,
    ) -> tuple[MediaDescription, StreamReceiver | None]:
        rejected = MediaDescription(media.media, 0, media.proto, media.formats[:1] or ["0"])
        if media.media != "audio":
            return rejected, existing
        if media.port == 0:  # the SRC removed or disabled the stream: answer port 0, stop it
            if existing is not None:
                existing.set_paused(True)
            return rejected, existing
        codec = _choose_codec(media)
        if codec is None:
            self.warnings.append(f"m-line {index}: no usable audio format")
            return rejected, existing
        pt, name, rate = codec
        label = media.label or f"stream{index}"
        secure = "SAVP" in media.proto.upper()
        suite = rx_key = tx_key = None
        tag = 0
        if secure:
            try:
                cryptos = media.cryptos
            except SipParseError:
                cryptos = []
                self.warnings.append(f"stream {label}: malformed a=crypto")
            for crypto in cryptos:
                if crypto.suite in PROFILES:
                    suite, tag, rx_key = crypto.suite, crypto.tag, crypto.key
                    break
            if suite is None:
                self.warnings.append(f"stream {label}: no supported SDES suite offered")
                return rejected, existing
            # Keep our key across re-offers: a new key would force the SRC to re-key for nothing.
            same = existing is not None and existing.params.suite == suite
            tx_key = (existing.params.tx_key if same and existing
                      else secrets.token_bytes(KEY_LENGTHS[suite]))
        address = media.connection or offer.connection
        remote_rtp = (address, media.port) if address and media.port else None
        mux = media.rtcp_mux
        remote_rtcp: tuple[str, int] | None = None
        if remote_rtp is not None:
            try:
                attr = media.rtcp
            except SipParseError:
                attr = None  # lenient: reports go to port+1, and the summary says why
                self.warnings.append(f"stream {label}: malformed a=rtcp ignored")
            if mux:
                remote_rtcp = remote_rtp
            elif attr is not None:
                remote_rtcp = (attr[1] or remote_rtp[0], attr[0])
            else:
                remote_rtcp = (remote_rtp[0], remote_rtp[1] + 1)
        params = MediaParams(label, pt, name, rate, remote_rtp, remote_rtcp, mux, suite, tag,
                             rx_key, tx_key)
        if existing is None:
            assert self.directory is not None
            receiver = StreamReceiver(params, self.media_host, self.directory, self.media_ports,
                                      self.rtcp_interval, keep_payloads=self.keep_payloads)
            await receiver.start()
        else:
            receiver = existing
            receiver.update(params)
        their = media.direction
        inactive = their in ("inactive", "recvonly")
        receiver.set_paused(inactive)
        line = MediaDescription("audio", receiver.port, media.proto, [str(pt)])
        if media.label:
            line.attributes.append(("label", media.label))
        line.attributes += _format_attributes(media, pt, name, rate)
        if receiver.params.rtcp_mux:
            line.attributes.append(("rtcp-mux", None))
        elif receiver.rtcp_port != receiver.port + 1:
            line.attributes.append(("rtcp", str(receiver.rtcp_port)))
        if suite is not None and tx_key is not None:
            line.attributes.append(("crypto", str(Crypto(tag, suite, tx_key))))
        line.attributes.append(("inactive" if inactive else "recvonly", None))
        return line, receiver

    # --- recorder-initiated offers (re-INVITE with new ports) ---------------------------------

    async def new_ports_offer(self) -> SessionDescription:
        """Move every stream to fresh ports and offer that (same codec, same key and tag)."""
        assert self.last_answer is not None
        offer = SessionDescription.parse(self.last_answer.to_bytes())
        for media, receiver in zip(offer.media, self.receivers, strict=False):
            if receiver is not None and media.port:
                await receiver.rebind()
                media.port = receiver.port
                media.attributes = [(k, v) for k, v in media.attributes if k != "rtcp"]
        self.sdp_version += 1
        kind = "IP6" if ":" in self.media_host else "IP4"
        offer.origin = (
            f"mediafork-srs {self.sdp_session_id} {self.sdp_version} IN {kind} {self.media_host}"
        )
        self._pending_offer = offer
        return offer

    def apply_answer(self, answer: SessionDescription) -> None:
        """The SRC answered our re-INVITE: note where it sends from and its (maybe new) key."""
        offer = self._pending_offer
        for media, receiver in zip(answer.media, self.receivers, strict=False):
            if receiver is None:
                continue
            if media.port == 0:
                receiver.set_paused(True)
                continue
            params = replace(receiver.params)
            address = media.connection or answer.connection
            params.remote_rtp = (address, media.port) if address else None
            if params.remote_rtp is not None:
                rtcp = media.rtcp
                if media.rtcp_mux:
                    params.remote_rtcp = params.remote_rtp
                elif rtcp is not None:
                    params.remote_rtcp = (rtcp[1] or params.remote_rtp[0], rtcp[0])
                else:
                    params.remote_rtcp = (params.remote_rtp[0], params.remote_rtp[1] + 1)
            if params.suite is not None:
                chosen = [c for c in media.cryptos if c.tag == params.tag]
                if chosen:
                    params.rx_key = chosen[0].key
                else:
                    self.warnings.append(f"re-INVITE answer for {params.label}: no crypto "
                                         f"with tag {params.tag}")
            receiver.update(params)
            receiver.set_paused(media.direction in ("inactive", "recvonly"))
        if offer is not None:
            self.last_answer = offer
            self._last_answer_key = offer.to_bytes().split(b"\r\n", 2)[2]
        self._pending_offer = None
        self.srs_reinvites += 1
        self.write_summary()

    def revert_offer(self) -> None:
        """Our re-INVITE was refused: keep using the previous ports."""
        for receiver in self.receivers:
            if receiver is not None:
                receiver.revert_rebind()
        self._pending_offer = None
        self.sdp_version -= 1

    # --- metadata ----------------------------------------------------------------------------

    def _add_metadata(self, bodies: Bodies) -> None:
        if bodies.metadata is None:
            return
        self.metadata_type = bodies.metadata_type
        number = len(self.metadata_docs) + len(self.metadata_errors) + 1
        if self.directory is not None:
            name = "metadata.xml" if number == 1 else f"metadata-{number}.xml"
            try:
                (self.directory / name).write_bytes(bodies.metadata)
            except OSError as exc:
                self.warnings.append(f"could not save {name}: {exc.strerror}")
        try:
            self.metadata_docs.append(parse_metadata(bodies.metadata))
        except SipParseError as exc:
            self.metadata_errors.append(str(exc))

    def _merged_metadata(self) -> dict[str, Any]:
        """Fold complete and partial documents into one view (later documents win)."""
        participants: dict[str, dict[str, Any]] = {}
        streams: dict[str, str] = {}
        custom: dict[str, str] = {}
        sip_session_ids: list[str] = []
        session_ids: list[str] = []
        for doc in self.metadata_docs:
            streams.update(doc.streams)
            custom.update(doc.custom)
            for sid in doc.sip_session_ids:
                if sid not in sip_session_ids:
                    sip_session_ids.append(sid)
            for sid in doc.session_ids:
                if sid not in session_ids:
                    session_ids.append(sid)
            for pid, part in doc.participants.items():
                entry = participants.setdefault(
                    pid, {"id": pid, "aors": [], "names": [], "send": [], "recv": [],
                          "disassociated": False}
                )
                for key, values in (("aors", part.aors), ("names", part.names)):
                    for value in values:
                        if value not in entry[key]:
                            entry[key].append(value)
                if part.has_streams:  # a call event's update: these are its streams now
                    entry["send"], entry["recv"] = list(part.send), list(part.recv)
            for pid in doc.associated:  # (re)joined
                if pid in participants:
                    participants[pid]["disassociated"] = False
            for pid in doc.disassociated:
                if pid in participants:
                    participants[pid]["disassociated"] = True
        for entry in participants.values():
            entry["send"] = [streams.get(s, s) for s in entry["send"]]
            entry["recv"] = [streams.get(s, s) for s in entry["recv"]]
        return {
            "documents": len(self.metadata_docs),
            "errors": list(self.metadata_errors),
            "content_type": self.metadata_type,
            "datamodes": [d.datamode for d in self.metadata_docs],
            "sip_session_ids": sip_session_ids,
            "session_ids": session_ids,
            "streams": streams,
            "custom": custom,
            "participants": list(participants.values()),
        }

    # --- end and files -----------------------------------------------------------------------

    def _make_directory(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self.started_at))
        base = self.out_dir / f"{stamp}-{_safe(self.call_id)}"
        path, n = base, 1
        while True:
            try:
                path.mkdir(parents=True)
                return path
            except FileExistsError:
                n += 1
                path = base.with_name(f"{base.name}-{n}")

    async def close_media(self) -> None:
        for receiver in self.receivers:
            if receiver is not None:
                await receiver.close()

    async def end(self, by: str) -> None:
        """Stop media, finish WAVs and write the final summary (idempotent)."""
        if self.state == "ended":
            return
        self.state = "ended"
        self.ended_by = by
        self.ended_at = time.time()
        await self.close_media()
        self.write_summary()

    def summary(self) -> dict[str, Any]:
        """Everything a test or a user wants to check about this session (JSON-ready)."""
        streams = [r.summary() for r in self.receivers if r is not None]
        meta = self._merged_metadata()
        end = self.ended_at or time.time()
        totals = {
            key: sum(s[key] for s in streams)
            for key in ("packets", "bytes", "lost", "seq_gaps", "srtp_auth_failures",
                        "srtp_replays", "rtcp_sent", "rtcp_received")
        }
        return {
            "call_id": self.call_id,
            "state": self.state,
            "status": self.status,
            "reason": self.reason,
            "transport": self.transport,
            "source": f"{self.source[0]}:{self.source[1]}",
            "request_uri": self.request_uri,
            "from": self.from_value,
            "to": self.to_value,
            "src_contact": self.src_contact,
            "siprec": self.siprec,
            "warnings": list(self.warnings),
            "started_at": _iso(self.started_at),
            "established_at": _iso(self.established_at),
            "ended_at": _iso(self.ended_at),
            "duration_seconds": round(end - (self.established_at or self.started_at), 3),
            "ended_by": self.ended_by,
            "bye_status": self.bye_status,
            "reinvites": self.reinvites,
            "offered_directions": [list(d) for d in self.offered_directions],
            "updates": self.updates,
            "snapshot_requests": self.snapshot_requests,
            "srs_reinvites": self.srs_reinvites,
            "labels": [s["label"] for s in streams],
            "participants": meta.pop("participants"),
            "parameters": meta["custom"],
            "metadata": meta,
            "streams": streams,
            "totals": totals,
            "directory": str(self.directory) if self.directory else None,
        }

    def write_summary(self) -> None:
        if self.directory is None:
            return
        path = self.directory / "summary.json"
        tmp = path.with_name("summary.json.tmp")
        try:
            tmp.write_text(json.dumps(self.summary(), indent=2, sort_keys=False) + "\n")
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("srs: could not write %s: %s", path, exc.strerror)

