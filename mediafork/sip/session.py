"""One SIPREC recording session, as the Session Recording Client (RFC 7866), sans I/O.

``RecordingSession`` owns one dialog with one SRS at a time. It is driven only by its inputs:
``start/stop/pause/resume/update_participants`` from the control plane, ``handle_message``
for parsed SIP messages from the transport, ``handle_timer`` when ``get_timer()`` is due, and
``handle_transport_error``. It produces ``messages_to_send()`` (each with its destination) and
events (:mod:`mediafork.sip.events`). Time is always passed in: nothing here reads a clock,
opens a socket or imports asyncio, so the whole behaviour is testable in memory.
"""

from __future__ import annotations

import dataclasses
import enum
import secrets
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from . import events as ev
from .call_events import CallEvent, Roster, partial_metadata
from .dialog import Dialog, build_response
from .digest import Challenge, DigestClient
from .errors import SipParseError, SipStateError
from .headers import Headers, NameAddr
from .message import BodyPart, Message, Request, Response, build_multipart, parse_multipart
from .metadata import (
    CONTENT_TYPE,
    LEGACY_CONTENT_TYPE,
    REQUEST_CONTENT_TYPE,
    MetaStream,
    build_metadata,
)
from .sdp import (
    AnsweredStream,
    Codec,
    OfferStream,
    SessionDescription,
    build_answer,
    build_offer,
    read_answer,
)
from .transaction import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ResponseReceived,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    State,
    TimerConfig,
    TransactionTimedOut,
    TransportFailed,
    new_branch,
)
from .uri import SipUri

__all__ = [
    "Codec",
    "Destination",
    "ForkedStream",
    "Outgoing",
    "Participant",
    "RecordingSession",
    "SessionConfig",
    "SessionState",
]

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE"
DIALOG_RECORD_VERSION = 1
HANGUP_CSEQ_GAP = 1000
"""How far a restored dialog's CSeq jumps: past any re-INVITE, UPDATE or OPTIONS the dead
process may have sent after the record was written (CSeq only has to grow, §12.2.1.1)."""
RETRY_491_DELAY = 2.5
"""Seconds before retrying a re-INVITE refused with 491 (RFC 3261 §14.1: 2.1-4 s for the UAC
that owns the Call-ID)."""


@dataclass(frozen=True)
class ForkedStream:
    """One forked stream of the call, as the data plane set it up."""

    label: str
    """SDP label, unique and stable within the session (metadata refers to it)."""
    track: Literal["inbound", "outbound"]
    """inbound = audio the platform receives from the caller; outbound = audio sent to them."""
    rtp_port: int
    """Local RTP port the stream is sent from (goes into the m= line)."""
    codec: Codec
    """The call's codec (no telephone-event is offered)."""
    key_80: bytes | None = field(default=None, repr=False)
    """SRTP master key+salt (30 bytes) offered with AES_CM_128_HMAC_SHA1_80; secret."""
    key_32: bytes | None = field(default=None, repr=False)
    """SRTP master key+salt (30 bytes) offered with AES_CM_128_HMAC_SHA1_32; secret."""
    keys: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)
    """(suite, master key+salt) offered in this order (the connector profile's
    ``srtp_suites``); replaces key_80/key_32 when given; secret."""


@dataclass(frozen=True)
class Participant:
    """A participant of the recorded call (from its From/To)."""

    aor: str
    """Address of record, e.g. ``sip:+15551230000@pbx.example``."""
    name: str | None = None
    """Display name, if known."""


@dataclass(frozen=True)
class SessionConfig:
    """Everything one recording session needs. Secrets are excluded from ``repr``."""

    srs_uri: str
    """SIP URI of the primary SRS (without mediafork's ``secure``/``edge`` knobs)."""
    local_address: str
    """Local IP address SIP (and by default media) leaves from: the edge's address."""
    local_port: int
    """Local SIP port (Via, Contact) for UDP and TCP."""
    streams: tuple[ForkedStream, ...]
    """The forked streams, one m=audio line each."""
    call_id: str
    """Identifier of the recorded call (sent as sipSessionID in the metadata)."""
    caller: Participant
    """The call's From participant (sends the inbound track)."""
    callee: Participant
    """The call's To participant (sends the outbound track)."""
    standby_uris: tuple[str, ...] = ()
    """Standby SRS URIs tried in order when setup with the primary fails."""
    transport: Literal["udp", "tcp", "tls"] | None = None
    """Signalling transport; None = from the URI (transport param, sips: → tls, else udp)."""
    media_address: str | None = None
    """Address put in the SDP c= line; defaults to ``local_address``."""
    credentials_header: str | None = None
    """Name of the connector's credentials header (e.g. ``X-Auth-Token``)."""
    credentials_value: str | None = field(default=None, repr=False)
    """Value of the credentials header; secret."""
    digest_username: str | None = None
    """Username for digest challenges (401/407)."""
    digest_password: str | None = field(default=None, repr=False)
    """Password for digest challenges; secret."""
    metadata_content_type: str = CONTENT_TYPE
    """``application/rs-metadata+xml`` (RFC 9806) or legacy ``application/rs-metadata``."""
    custom_parameters: tuple[tuple[str, str], ...] = ()
    """The Siprec's custom parameters, sent as metadata extension data."""
    timers: TimerConfig = TimerConfig()
    """RFC 3261 T1/T2/T4."""
    session_expires: int | None = 1800
    """Session-Expires we ask for (RFC 4028); None = do not offer session timers."""
    min_se: int = 90
    """Our Min-SE."""
    keepalive_interval: float = 30.0
    """OPTIONS keepalive period when no session timer was negotiated."""
    stop_timeout: float = 5.0
    """How long stop() waits for the BYE/CANCEL to be answered before reporting Ended."""
    setup_timeout: float = 60.0
    """Longest wait for a final answer to the INVITE once it is ringing (then CANCEL)."""
    user: str = "mediafork"
    """User part of our From/Contact URIs."""
    user_agent: str = "mediafork"
    """User-Agent header value."""
    extra_headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    """The connector profile's static headers, on every request we send (values may be
    tokens: not in repr)."""
    invite_headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    """Headers for the session-creating INVITE only (custom parameters as headers)."""
    parameters_in_metadata: bool = True
    """Send ``custom_parameters`` in the metadata (profile ``parameters_as``)."""
    group_name: str | None = None
    """Profile ``group_name``: ``<mf:group-name>`` in the metadata's group."""
    metadata_extensions: tuple[str, ...] = ()
    """Profile ``extension_xml``: checked extension elements for complete metadata."""
    tls_port: int | None = None
    """Port of our SIP TLS listener on ``local_address`` (Via and Contact over TLS); None:
    there is none, so a TLS dialog's Contact names the TCP listener (``transport=tcp``)
    rather than a TLS port nothing listens on."""
    roster: Roster | None = None
    """The call's participants and held tracks when the host already reported call events
    (its caller/callee are then ``caller``/``callee``); None: just those two."""
    skip_failover_codes: frozenset[int] = frozenset()
    """Final statuses to the INVITE that end set-up at once, without trying the next
    standby (the connector's ``skip_failover_codes``)."""
    metadata_seed: str | None = None
    """The metadata identifiers' seed; None: derived from ``call_id`` and this session.
    A mid-call failover passes the lost session's, so that the new recorder gets the same
    recording-session, group, participant and stream identifiers (RFC 7865 §6)."""

    def __post_init__(self) -> None:
        labels = [s.label for s in self.streams]
        if not labels or len(set(labels)) != len(labels):
            raise ValueError("streams must be non-empty with unique labels")
        if self.metadata_content_type not in (CONTENT_TYPE, LEGACY_CONTENT_TYPE):
            raise ValueError("metadata_content_type must be rs-metadata+xml or rs-metadata")
        if (self.credentials_header is None) != (self.credentials_value is None):
            raise ValueError("credentials_header and credentials_value go together")
        for uri in (self.srs_uri, *self.standby_uris):
            if not SipUri.parse(uri).is_sip:
                raise ValueError("SRS URIs must be sip: or sips: URIs")


@dataclass(frozen=True)
class Destination:
    """Where the transport must send a message. ``host`` may be a name to resolve."""

    host: str
    port: int
    transport: str
    """"udp", "tcp" or "tls"."""


@dataclass(frozen=True)
class Outgoing:
    """A message to send and where to."""

    message: Message
    destination: Destination


class SessionState(enum.Enum):
    """Where the session is in its life."""

    IDLE = "idle"
    INVITING = "inviting"
    ESTABLISHED = "established"
    STOPPING = "stopping"
    ENDED = "ended"
    FAILED = "failed"


@dataclass
class _Client:
    txn: ClientInviteTransaction | ClientNonInviteTransaction
    purpose: str
    destination: Destination
    template: Request
    auth_tries: int = 0
    provisional: bool = False
    cancelled: bool = False


def _uri_destination(uri: SipUri, transport: str) -> Destination:
    tls = transport == "tls"
    host = uri.param("maddr") or uri.host
    return Destination(host.strip("[]"), uri.port or (5061 if tls else 5060), transport)


class RecordingSession:
    """The SRC side of one SIPREC recording session (RFC 7866), as a sans-I/O state machine."""

    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        self.state = SessionState.IDLE
        self._targets: list[str] = [config.srs_uri, *config.standby_uris]
        self._target_index = 0
        self._redirected = False
        self._metadata_type = config.metadata_content_type
        self._ctype_retried = False
        self._session_expires = config.session_expires
        self._call_id = ""
        self._local_tag = ""
        self._cseq = 0
        self._invite: _Client | None = None
        self._dialog: Dialog | None = None
        self._clients: dict[str, _Client] = {}
        self._servers: dict[
            tuple[str, str], ServerInviteTransaction | ServerNonInviteTransaction
        ] = {}
        self._server_dest: dict[tuple[str, str], Destination] = {}
        self._acks: dict[int, Request] = {}
        self._out: list[Outgoing] = []
        self._events: deque[ev.SessionEvent] = deque()
        self._timers: dict[str, float] = {}
        self._ops: deque[str] = deque()
        self._reinvite: _Client | None = None
        self._paused = False
        self._remote_paused = False
        self._stop_requested = False
        self._stop_reason = "stopped"
        self._answered: list[AnsweredStream] = []
        self._sdp_id = secrets.randbelow(2**31)
        self._sdp_version = 1
        self._challenges: dict[str, Challenge] = {}
        self._digest = (
            DigestClient(config.digest_username, config.digest_password)
            if config.digest_username is not None and config.digest_password is not None
            else None
        )
        self._refresher_is_us = False
        self._interval: int | None = None
        self._update_allowed = False
        self._roster = config.roster or Roster(config.caller, config.callee)
        self._removed: list[str] = []
        self._event_docs: deque[bytes] = deque()
        """Partial documents of call events not yet sent, in the order they happened."""
        self._event_inflight: bytes | None = None
        self._start_time: datetime | None = None
        self._offer = [
            OfferStream(s.label, s.rtp_port, s.codec, s.key_80, s.key_32, keys=s.keys)
            for s in config.streams
        ]

    def __repr__(self) -> str:
        return f"RecordingSession(state={self.state.value}, call_id={self._call_id!r})"

    # --- public inputs ----------------------------------------------------------------------

    @property
    def call_id(self) -> str:
        """Call-ID of the current INVITE/dialog (route incoming messages by it)."""
        return self._call_id

    @property
    def srs_uri(self) -> str:
        """The SRS currently tried or connected to."""
        return self._targets[min(self._target_index, len(self._targets) - 1)]

    @property
    def transport(self) -> str:
        """Signalling transport for the current SRS."""
        return self._transport_for(SipUri.parse(self.srs_uri))

    @property
    def paused(self) -> bool:
        """True while recording is paused (by us or by the SRS)."""
        return self._paused or self._remote_paused

    def remote_key(self, label: str) -> bytes | None:
        """The SRS's own SRTP master key+salt for stream ``label`` from the current answer
        (its a=crypto for the selected suite); the data plane needs it to authenticate the
        SRS's SRTCP. Secret: never log it. None for plain RTP or before an answer."""
        for answered in self._answered:
            if answered.label == label:
                return answered.remote_key
        return None

    @property
    def metadata_content_type(self) -> str:
        """The metadata content type in use (may have switched after a 415/488)."""
        return self._metadata_type

    def dialog_record(self) -> dict[str, Any] | None:
        """What another process needs to end this session with a BYE if this one dies
        (JSON-ready; identifiers and addresses, no secrets). None unless established."""
        if self.state is not SessionState.ESTABLISHED or self._dialog is None:
            return None
        return {
            "version": DIALOG_RECORD_VERSION,
            "srs_uri": self.srs_uri,
            "transport": self.transport,
            "dialog": dataclasses.asdict(self._dialog),
        }

    @classmethod
    def for_hangup(cls, config: SessionConfig, record: Mapping[str, Any]) -> RecordingSession:
        """A session rebuilt from :meth:`dialog_record` only to be ended: ``stop()`` sends
        the BYE (with ``config``'s credentials and transport) and reports ``Ended``.
        ``config.srs_uri`` should be ``record["srs_uri"]``. Raises ``ValueError`` for a
        record this version cannot read."""
        if not isinstance(record, Mapping) or record.get("version") != DIALOG_RECORD_VERSION:
            raise ValueError("not a dialog record of a known version")
        fields = record.get("dialog")
        names = {f.name for f in dataclasses.fields(Dialog)}
        if not isinstance(fields, Mapping) or set(fields) != names:
            raise ValueError("dialog record has missing or unknown fields")
        for name in ("call_id", "local_tag", "remote_tag", "local_uri", "remote_uri",
                     "remote_target"):
            if not isinstance(fields[name], str) or not fields[name]:
                raise ValueError(f"dialog record: {name} must be a non-empty string")
        seq = fields["local_seq"]
        routes = fields["route_set"]
        if not isinstance(seq, int) or not 0 <= seq < 2**31 - HANGUP_CSEQ_GAP:
            raise ValueError("dialog record: local_seq out of range")
        if not isinstance(routes, list) or not all(isinstance(r, str) for r in routes):
            raise ValueError("dialog record: route_set must be a list of strings")
        try:
            SipUri.parse(fields["remote_target"])
            for route in routes:
                NameAddr.parse(route)
        except SipParseError as exc:
            raise ValueError(f"dialog record: {exc}") from None
        session = cls(config)
        dialog = Dialog(**{name: fields[name] for name in names})
        dialog.route_set = list(routes)
        dialog.local_seq = seq + HANGUP_CSEQ_GAP
        session._dialog = dialog
        session._call_id = dialog.call_id
        session._local_tag = dialog.local_tag
        session.state = SessionState.ESTABLISHED
        return session

    def start(self, now: float, wallclock: datetime | None = None) -> None:
        """Send the INVITE to the primary SRS. ``wallclock`` is the metadata start time."""
        if self.state is not SessionState.IDLE:
            raise SipStateError("session already started")
        self._start_time = wallclock or datetime.now(UTC)
        self.state = SessionState.INVITING
        self._new_dialog_identity()
        self._send_invite(now)
        self._pump(now)

    def stop(self, now: float, reason: str = "stopped") -> None:
        """End the session: BYE if established, CANCEL if the INVITE is still pending."""
        self._stop_reason = reason
        if self.state is SessionState.IDLE:
            self._finish(ev.Ended(False, reason))
            return
        if self.state is SessionState.INVITING:
            self._stop_requested = True
            self._timers["stop"] = now + self.config.stop_timeout
            if self._invite is not None and self._invite.provisional:
                self._send_cancel(now)
        elif self.state is SessionState.ESTABLISHED:
            self._send_bye(now)
            self._timers["stop"] = now + self.config.stop_timeout
        self._pump(now)

    def pause(self, now: float) -> None:
        """Pause recording with a re-INVITE offering a=inactive."""
        self._queue("pause", now)

    def resume(self, now: float) -> None:
        """Resume recording with a re-INVITE offering a=sendonly."""
        self._queue("resume", now)

    def update_participants(self, now: float, caller: Participant, callee: Participant) -> None:
        """The call's participants changed: send a re-INVITE with ``partial`` metadata."""
        old = (self._roster.caller, self._roster.callee)
        self._roster = dataclasses.replace(self._roster, caller=caller, callee=callee)
        self._removed = [p.aor for p in old if p.aor not in (caller.aor, callee.aor)]
        self._queue("metadata", now)

    def call_event(self, now: float, event: CallEvent) -> bool:
        """Report a call event (hold, transfer, participant added or removed) to the SRS: a
        re-INVITE with its ``partial`` metadata, after every earlier event's (one re-INVITE at
        a time, in order). Raises ``CallEventError`` (nothing changed) when the event does not
        fit the call; returns whether a document was queued (False: nothing changed for the
        SRS, or the session is ending)."""
        self._roster.check(event)
        if self.state in (SessionState.STOPPING, SessionState.ENDED, SessionState.FAILED):
            return False
        before, self._roster = self._roster, self._roster.apply(event)
        doc = partial_metadata(
            event, before, self._roster, labels=self._labels(), seed=self._seed,
            sip_session_ids=[self.config.call_id], when=datetime.now(UTC),
        )
        if doc is None:
            return False
        self._event_docs.append(doc)
        self._ops.append("event")  # never merged: each event is its own re-INVITE
        self._run_ops(now)
        self._pump(now)
        return True

    @property
    def roster(self) -> Roster:
        """The call as this session last described it (participants, held tracks)."""
        return self._roster

    def _labels(self) -> dict[str, tuple[str, ...]]:
        return {
            track: tuple(s.label for s in self.config.streams if s.track == track)
            for track in ("inbound", "outbound")
        }

    def handle_message(
        self, message: Message, now: float, source: tuple[str, int] | None = None
    ) -> None:
        """Process a parsed message from the SRS; ``source`` is where it came from."""
        if self.state in (SessionState.ENDED, SessionState.FAILED) and isinstance(message, Request):
            if message.method != "ACK":
                self._respond_stateless(message, 481, now, source)
            return
        if isinstance(message, Response):
            self._on_response(message, now)
        else:
            self._on_request(message, now, source)
        self._pump(now)

    def handle_timer(self, now: float) -> None:
        """Fire transaction and session timers due at ``now``."""
        for entry in list(self._clients.values()):
            entry.txn.handle_timer(now)
        for txn in list(self._servers.values()):
            txn.handle_timer(now)
        for name, deadline in sorted(self._timers.items(), key=lambda item: item[1]):
            if deadline <= now and self._timers.get(name) == deadline:
                del self._timers[name]
                self._on_session_timer(name, now)
        self._pump(now)

    def handle_transport_error(
        self, now: float, reason: str, destination: Destination | None = None
    ) -> None:
        """The transport could not deliver to ``destination`` (None = every destination)."""
        for entry in list(self._clients.values()):
            if destination is None or entry.destination == destination:
                entry.txn.handle_transport_error(now, reason)
        self._pump(now)

    def get_timer(self) -> float | None:
        """When ``handle_timer`` should next be called (absolute time), or None."""
        deadlines = [d for d in self._timers.values()]
        deadlines += [t for e in self._clients.values() if (t := e.txn.get_timer()) is not None]
        deadlines += [t for s in self._servers.values() if (t := s.get_timer()) is not None]
        return min(deadlines) if deadlines else None

    def messages_to_send(self) -> list[Outgoing]:
        """Messages produced since the last call, each with its destination."""
        out, self._out = self._out, []
        return out

    def next_event(self) -> ev.SessionEvent | None:
        """The next event, or None."""
        return self._events.popleft() if self._events else None

    # --- building requests ------------------------------------------------------------------

    def _transport_for(self, uri: SipUri) -> str:
        if uri.transport in ("udp", "tcp", "tls"):
            return uri.transport
        if uri.scheme == "sips":
            return "tls"
        return self.config.transport or "udp"

    def _new_dialog_identity(self) -> None:
        self._call_id = f"{secrets.token_hex(16)}@{self.config.local_address}"
        self._local_tag = secrets.token_hex(6)
        self._cseq = secrets.randbelow(10000) + 1
        self._ctype_retried = False
        self._challenges.clear()

    def _sip_port(self, transport: str) -> int:
        """Our listening port for ``transport``: the TLS listener's for TLS, if we have one."""
        if transport == "tls" and self.config.tls_port:
            return self.config.tls_port
        return self.config.local_port

    def _contact(self, transport: str) -> str:
        host = self.config.local_address
        host = f"[{host}]" if ":" in host else host
        if transport == "tls" and not self.config.tls_port:
            transport = "tcp"  # no TLS listener: name one the recorder can reach
        port = self._sip_port(transport)
        if transport == "tls" and SipUri.parse(self.srs_uri).scheme == "sips":
            # A sips: Request-URI needs a sips: Contact (RFC 3261 §8.1.1.8; no transport
            # parameter with sips, RFC 5630 §3.2).
            return f"<sips:{self.config.user}@{host}:{port}>;+sip.src"
        param = "" if transport == "udp" else f";transport={transport}"
        return f"<sip:{self.config.user}@{host}:{port}{param}>;+sip.src"

    def _common_headers(self, req: Request) -> None:
        cfg = self.config
        if cfg.credentials_header and cfg.credentials_value is not None:
            req.headers.set(cfg.credentials_header, cfg.credentials_value)
        req.headers.set("User-Agent", cfg.user_agent)
        for name, value in cfg.extra_headers:
            req.headers.set(name, value)

    def _offer_sdp(self, direction: str | None = None) -> bytes:
        direction = direction or ("inactive" if self._paused else "sendonly")
        address = self.config.media_address or self.config.local_address
        return build_offer(
            self._offer, address, self._sdp_id, self._sdp_version, direction
        ).to_bytes()

    def _metadata(self, datamode: str) -> bytes:
        # The roster: held tracks and added participants are in complete documents too.
        participants = self._roster.meta(self._labels())
        return build_metadata(
            seed=self._seed,
            datamode=datamode,
            sip_session_ids=[self.config.call_id],
            participants=participants,
            streams=[MetaStream(s.label) for s in self.config.streams],
            associate_time=self._start_time or datetime.now(UTC),
            custom=dict(self.config.custom_parameters) if self.config.parameters_in_metadata
            else None,
            group_name=self.config.group_name,
            extensions=self.config.metadata_extensions if datamode == "complete" else (),
            removed_participants=self._removed if datamode == "partial" else None,
        )

    @property
    def _seed(self) -> str:
        # Stable across failover and re-INVITEs: identifiers in partial metadata must match.
        return self.config.metadata_seed or f"{self.config.call_id}/{self._sdp_id}"

    @property
    def metadata_seed(self) -> str:
        """The seed of this session's metadata identifiers (for a mid-call failover)."""
        return self._seed

    @property
    def start_time(self) -> datetime | None:
        """The metadata's start time (``start()``'s wallclock), None before start."""
        return self._start_time

    def _multipart(self, sdp: bytes, metadata: bytes) -> tuple[str, bytes]:
        sdp_headers = Headers([("Content-Type", "application/sdp")])
        meta_headers = Headers(
            [
                ("Content-Type", self._metadata_type),
                ("Content-Disposition", "recording-session"),
            ]
        )
        boundary = "mediafork-" + secrets.token_hex(8)
        return build_multipart(
            [BodyPart(sdp_headers, sdp), BodyPart(meta_headers, metadata)], boundary
        )

    def _timer_headers(self, req: Request) -> None:
        req.headers.set("Supported", "timer")
        if self._session_expires:
            req.headers.set("Session-Expires", str(self._session_expires))
            req.headers.set("Min-SE", str(self.config.min_se))

    def _send_invite(self, now: float) -> None:
        target = SipUri.parse(self.srs_uri)
        transport = self._transport_for(target)
        to_uri = SipUri(target.scheme, target.user, None, target.host, target.port)
        req = Request("INVITE", str(target))
        h = req.headers
        h.add("Max-Forwards", "70")
        h.add("From", f"<sip:{self.config.user}@{self._host()}>;tag={self._local_tag}")
        h.add("To", f"<{to_uri}>")
        h.add("Call-ID", self._call_id)
        h.add("CSeq", f"{self._cseq} INVITE")
        h.add("Contact", self._contact(transport))
        h.add("Require", "siprec")
        h.add("Accept", f"application/sdp, {self._metadata_type}, {REQUEST_CONTENT_TYPE}")
        h.add("Allow", ALLOW)
        for name, value in self.config.invite_headers:
            h.add(name, value)
        self._timer_headers(req)
        ctype, body = self._multipart(self._offer_sdp(), self._metadata("complete"))
        h.add("Content-Type", ctype)
        req.body = body
        self._invite = self._send_request(req, "invite", _uri_destination(target, transport), now)
        self._timers["setup"] = now + self.config.setup_timeout

    def _host(self) -> str:
        host = self.config.local_address
        return f"[{host}]" if ":" in host else host

    def _dialog_destination(self) -> Destination:
        assert self._dialog is not None
        transport = self.transport
        if self._dialog.route_set:
            return _uri_destination(NameAddr.parse(self._dialog.route_set[0]).uri, transport)
        return _uri_destination(SipUri.parse(self._dialog.remote_target), transport)

    def _send_request(
        self, template: Request, purpose: str, destination: Destination, now: float, tries: int = 0
    ) -> _Client:
        req = Request(template.method, template.uri, template.headers.copy(), template.body)
        self._common_headers(req)
        if self._digest is not None:
            for header, challenge in self._challenges.items():
                req.headers.set(header, self._digest.authorization(challenge, req.method, req.uri))
        via = (f"SIP/2.0/{destination.transport.upper()} {self._host()}:"
               f"{self._sip_port(destination.transport)}")
        req.headers.prepend("Via", f"{via};branch={new_branch()};rport")
        reliable = destination.transport != "udp"
        txn: ClientInviteTransaction | ClientNonInviteTransaction
        if req.method == "INVITE":
            txn = ClientInviteTransaction(req, reliable, self.config.timers)
        else:
            txn = ClientNonInviteTransaction(req, reliable, self.config.timers)
        entry = _Client(txn, purpose, destination, template, tries)
        self._clients[txn.branch] = entry
        txn.start(now)
        return entry

    def _in_dialog(
        self,
        method: str,
        purpose: str,
        now: float,
        *,
        body: tuple[str, bytes] | None = None,
        extra: list[tuple[str, str]] | None = None,
    ) -> _Client:
        assert self._dialog is not None
        req = self._dialog.new_request(method)
        if method in ("INVITE", "UPDATE"):
            req.headers.add("Contact", self._contact(self.transport))
            req.headers.add("Allow", ALLOW)
        for name, value in extra or []:
            req.headers.add(name, value)
        if body is not None:
            req.headers.add("Content-Type", body[0])
            req.body = body[1]
        return self._send_request(req, purpose, self._dialog_destination(), now)

    def _send_bye(self, now: float) -> None:
        self.state = SessionState.STOPPING
        self._clear_session_timers()
        self._in_dialog("BYE", "bye", now)

    def _send_cancel(self, now: float, entry: _Client | None = None) -> None:
        """CANCEL the pending INVITE (only once a provisional response arrived, §9.1)."""
        entry = entry or self._invite
        if entry is None or not isinstance(entry.txn, ClientInviteTransaction):
            return
        if entry.txn.state is not State.PROCEEDING or entry.cancelled:
            return
        entry.cancelled = True
        cancel = entry.txn.build_cancel()
        if entry.purpose == "invite":
            entry.purpose = "invite-cancelled"
        self._common_headers(cancel)
        reliable = entry.destination.transport != "udp"
        txn = ClientNonInviteTransaction(cancel, reliable, self.config.timers)
        # CANCEL shares the INVITE's branch; key it apart from the INVITE.
        self._clients[txn.branch + "/CANCEL"] = _Client(txn, "cancel", entry.destination, cancel)
        txn.start(now)

    # --- operations on an established session -----------------------------------------------

    def _queue(self, op: str, now: float) -> None:
        if self.state in (SessionState.STOPPING, SessionState.ENDED, SessionState.FAILED):
            return
        if op not in self._ops:
            self._ops.append(op)
        self._run_ops(now)
        self._pump(now)

    def _run_ops(self, now: float) -> None:
        if self.state is not SessionState.ESTABLISHED or self._reinvite is not None:
            return
        if "retry491" in self._timers:
            return
        while self._ops:
            op = self._ops.popleft()
            if op == "pause" and self._paused:
                continue
            if op == "resume" and not self._paused:
                # The SRS never accepted a pause (it refused ours, say): nothing to
                # renegotiate, but the host may have held its media since it asked for the
                # pause, and waits for Resumed to send again.
                self._events.append(ev.Resumed(False))
                continue
            if op == "event":
                self._event_inflight = self._event_docs.popleft()
                body = self._multipart(self._offer_sdp(), self._event_inflight)
            elif op == "pause":
                self._sdp_version += 1
                body = ("application/sdp", self._offer_sdp("inactive"))
            elif op == "resume":
                self._sdp_version += 1
                body = ("application/sdp", self._offer_sdp("sendonly"))
            else:
                datamode = "partial" if op == "metadata" else "complete"
                body = self._multipart(self._offer_sdp(), self._metadata(datamode))
            self._reinvite = self._in_dialog("INVITE", op, now, body=body)
            return

    def _send_refresh(self, now: float) -> None:
        if self._dialog is None or self.state is not SessionState.ESTABLISHED:
            return
        interval = self._interval or self._session_expires or 1800
        extra = [
            ("Supported", "timer"),
            ("Session-Expires", f"{interval};refresher=uac"),
            ("Min-SE", str(self.config.min_se)),
        ]
        if self._update_allowed:
            self._in_dialog("UPDATE", "refresh", now, extra=extra)
        elif self._reinvite is None:
            body = ("application/sdp", self._offer_sdp())
            self._reinvite = self._in_dialog("INVITE", "refresh", now, body=body, extra=extra)
        else:
            self._timers["refresh"] = now + 1.0  # another re-INVITE is running; try shortly

    # --- responses --------------------------------------------------------------------------

    def _on_response(self, response: Response, now: float) -> None:
        try:
            branch = response.top_via.branch or ""
            _, method = response.cseq
        except SipParseError:
            return
        key = branch + "/CANCEL" if method == "CANCEL" else branch
        entry = self._clients.get(key)
        if entry is not None and entry.txn.request.method == method:
            entry.txn.handle_message(response, now)
            return
        if method == "INVITE" and 200 <= response.status < 300:
            self._stray_2xx(response, now)

    def _stray_2xx(self, response: Response, now: float) -> None:
        """A 2xx retransmission after the transaction ended: ACK it again (§13.2.2.4)."""
        try:
            number = response.cseq[0]
            call_id = response.call_id
        except SipParseError:
            return
        ack = self._acks.get(number)
        if ack is not None and call_id == self._call_id and self._dialog is not None:
            self._out.append(Outgoing(ack, self._dialog_destination()))

    def _pump(self, now: float) -> None:
        """Move transaction outputs to the session's outputs and act on their events."""
        progress = True
        while progress:
            progress = False
            for key, entry in list(self._clients.items()):
                for msg in entry.txn.messages_to_send():
                    self._out.append(Outgoing(msg, entry.destination))
                    progress = True
                while (event := entry.txn.next_event()) is not None:
                    progress = True
                    self._on_client_event(entry, event, now)
                if entry.txn.terminated and self._clients.get(key) is entry:
                    del self._clients[key]
            for key, txn in list(self._servers.items()):
                for msg in txn.messages_to_send():
                    self._out.append(Outgoing(msg, self._server_dest[key]))
                    progress = True
                while (sevent := txn.next_event()) is not None:
                    progress = True
                    if isinstance(sevent, TransactionTimedOut) and isinstance(
                        txn, ServerInviteTransaction
                    ):
                        # RFC 3261 §13.3.1.4: no ACK for our 2xx: the dialog is dead.
                        if (
                            self.state is SessionState.ESTABLISHED
                            and txn.last_response
                            and txn.last_response.status < 300
                        ):
                            self._fail(now, 408, "no ACK from SRS", None, None, "established")
                    elif hasattr(sevent, "ack"):
                        self._on_ack(sevent.ack, now)  # type: ignore[union-attr]
                if txn.terminated:
                    self._servers.pop(key, None)
                    self._server_dest.pop(key, None)

    def _on_client_event(self, entry: _Client, event: object, now: float) -> None:
        ended = self.state in (SessionState.ENDED, SessionState.FAILED)
        if ended or entry.purpose in ("abandoned", "stray"):
            if (
                isinstance(event, ResponseReceived)
                and event.response.status < 200
                and entry.txn.request.method == "INVITE"
            ):
                self._send_cancel(now, entry)  # gave up before it rang: cancel it now
            # Only one thing still matters: a 2xx to an INVITE we gave up on creates a dialog
            # at the SRS, which we must ACK and BYE (RFC 3261 §15).
            if (
                isinstance(event, ResponseReceived)
                and entry.txn.request.method == "INVITE"
                and 200 <= event.response.status < 300
                and (ended or entry.purpose == "abandoned")
                and (self._dialog is None or entry is not self._invite)
            ):
                self._hangup_stray(entry, event.response, now)
            return
        if isinstance(event, ResponseReceived):
            self._on_client_response(entry, event.response, now)
        elif isinstance(event, TransactionTimedOut):
            self._on_client_failure(
                entry, 408, "Request Timeout (no answer from SRS)", None, None, now
            )
        elif isinstance(event, TransportFailed):
            self._on_client_failure(entry, 503, f"transport error: {event.reason}", None, None, now)

    def _on_client_response(self, entry: _Client, response: Response, now: float) -> None:
        status = response.status
        if status < 200:
            if entry.purpose in ("invite", "invite-cancelled") and not entry.provisional:
                entry.provisional = True
                if self._stop_requested:
                    self._send_cancel(now)
            return
        if status in (401, 407) and self._retry_auth(entry, response, now):
            return
        if status < 300:
            self._on_success(entry, response, now)
        else:
            reason_header = response.headers.get("Reason")
            warning = response.headers.get("Warning")
            self._on_client_failure(
                entry, status, response.reason, reason_header, warning, now, response
            )

    def _retry_auth(self, entry: _Client, response: Response, now: float) -> bool:
        if self._digest is None:
            return False
        header = "WWW-Authenticate" if response.status == 401 else "Proxy-Authenticate"
        challenge = None
        for value in response.headers.get_all(header):
            try:
                challenge = Challenge.parse(value)
                break
            except SipParseError:
                continue
        if challenge is None:
            return False
        allowed = 2 if challenge.stale else 1
        if entry.auth_tries >= allowed:
            return False
        self._challenges["Authorization" if response.status == 401 else "Proxy-Authorization"] = (
            challenge
        )
        self._resend(entry, now, entry.auth_tries + 1)
        return True

    def _resend(self, entry: _Client, now: float, tries: int = 0) -> None:
        """Send ``entry``'s request again as a new transaction with the next CSeq."""
        template = Request(
            entry.template.method,
            entry.template.uri,
            entry.template.headers.copy(),
            entry.template.body,
        )
        if self._dialog is not None and entry.purpose not in ("invite", "invite-cancelled"):
            self._dialog.local_seq += 1
            number = self._dialog.local_seq
        else:
            self._cseq += 1
            number = self._cseq
        template.headers.set("CSeq", f"{number} {template.method}")
        new = self._send_request(template, entry.purpose, entry.destination, now, tries)
        if entry is self._invite:
            self._invite = new
        if entry is self._reinvite:
            self._reinvite = new

    def _on_success(self, entry: _Client, response: Response, now: float) -> None:
        purpose = entry.purpose
        if purpose in ("invite", "invite-cancelled"):
            if self._dialog is not None:
                # Retransmitted 2xx (RFC 6026 Accepted state): ACK again.
                ack = self._acks.get(response.cseq[0])
                if ack is not None:
                    self._out.append(Outgoing(ack, self._dialog_destination()))
                return
            self._on_invite_2xx(entry, response, now)
        elif entry.txn.request.method == "INVITE":
            if entry is not self._reinvite:
                ack = self._acks.get(response.cseq[0])
                if ack is not None:
                    self._out.append(Outgoing(ack, self._dialog_destination()))
                return
            self._reinvite = None
            self._send_ack(response, now)
            self._on_reinvite_2xx(purpose, response, now)
            self._run_ops(now)
        elif purpose == "bye":
            self._finish(ev.Ended(False, self._stop_reason))
        elif purpose == "refresh":
            self._apply_session_timer(response, now)
        elif purpose == "keepalive":
            self._timers["keepalive"] = now + self.config.keepalive_interval

    def _hangup_stray(self, entry: _Client, response: Response, now: float) -> None:
        try:
            dialog = Dialog.from_invite_response(entry.txn.request, response)
        except SipParseError:
            return
        number = response.cseq[0]
        if number in self._acks:
            self._out.append(Outgoing(self._acks[number], entry.destination))
            return
        ack = dialog.ack(number)
        self._common_headers(ack)
        via = (
            f"SIP/2.0/{entry.destination.transport.upper()} {self._host()}:"
            f"{self._sip_port(entry.destination.transport)}"
        )
        ack.headers.prepend("Via", f"{via};branch={new_branch()};rport")
        self._acks[number] = ack
        self._out.append(Outgoing(ack, entry.destination))
        bye = dialog.new_request("BYE")
        self._send_request(bye, "stray", entry.destination, now)

    def _send_ack(self, response: Response, now: float) -> None:
        assert self._dialog is not None
        number = response.cseq[0]
        ack = self._dialog.ack(number)
        self._common_headers(ack)
        via = f"SIP/2.0/{self.transport.upper()} {self._host()}:{self._sip_port(self.transport)}"
        ack.headers.prepend("Via", f"{via};branch={new_branch()};rport")
        self._acks[number] = ack
        self._out.append(Outgoing(ack, self._dialog_destination()))

    def _on_invite_2xx(self, entry: _Client, response: Response, now: float) -> None:
        try:
            self._dialog = Dialog.from_invite_response(entry.txn.request, response)
        except SipParseError as exc:
            self._setup_failed(now, 200, f"unusable 2xx: {exc}", None, None)
            return
        self._timers.pop("setup", None)
        self._send_ack(response, now)
        if self._stop_requested:
            # Our CANCEL lost the race: the SRS accepted. Hang up at once.
            self._send_bye(now)
            return
        try:
            answer = self._find_sdp(response)
            if answer is None:
                raise SipParseError("2xx carries no SDP answer")
            self._answered = read_answer(answer, self._offer)
            if all(a.port is None for a in self._answered):
                # A 200 that refuses every stream (port 0) records nothing: reporting it as
                # started would lose the whole call silently.
                raise SipParseError("the SRS refused every stream (port 0)")
        except SipParseError as exc:
            self._send_bye(now)
            self._stop_reason = "unusable answer"
            self._fail(now, 488, f"unusable SDP answer: {exc}", None, None, "setup", keep_bye=True)
            return
        self.state = SessionState.ESTABLISHED
        allow = ",".join(response.headers.get_all("Allow")).upper()
        self._update_allowed = "UPDATE" in allow
        self._apply_session_timer(response, now)
        self._events.append(ev.Established(self.srs_uri, self._call_id, self._destinations()))
        self._run_ops(now)

    def _on_reinvite_2xx(self, purpose: str, response: Response, now: float) -> None:
        try:
            answer = self._find_sdp(response)
            answered = read_answer(answer, self._offer) if answer is not None else self._answered
        except SipParseError:
            answered = self._answered
        changed = self._set_answered(answered)
        if purpose == "pause":
            self._paused = True
            self._events.append(ev.Paused(False))
        elif purpose == "resume":
            self._paused = False
            self._events.append(ev.Resumed(False))
        if changed:
            # Also with Paused/Resumed: the answer may move the streams (new ports), and
            # those events carry no destinations.
            self._events.append(ev.MediaUpdated(self._destinations()))
        if purpose == "refresh":
            self._apply_session_timer(response, now)

    def _set_answered(self, answered: list[AnsweredStream]) -> bool:
        before = [(a.address, a.port, a.rtcp, a.suite) for a in self._answered]
        after = [(a.address, a.port, a.rtcp, a.suite) for a in answered]
        self._answered = answered
        return before != after

    def _destinations(self) -> tuple[ev.StreamDestination, ...]:
        return tuple(
            ev.StreamDestination(a.label, a.address, a.port, a.rtcp, a.suite, a.tag, a.direction)
            for a in self._answered
        )

    def _on_client_failure(
        self,
        entry: _Client,
        status: int,
        reason: str,
        reason_header: str | None,
        warning: str | None,
        now: float,
        response: Response | None = None,
    ) -> None:
        purpose = entry.purpose
        if purpose == "invite-cancelled":
            self._finish(ev.Ended(False, self._stop_reason))
        elif purpose == "invite":
            self._on_invite_failure(entry, status, reason, reason_header, warning, now, response)
        elif purpose == "cancel":
            pass  # the INVITE's own fate (487, 2xx or Timer B) decides
        elif purpose == "bye":
            self._finish(ev.Ended(False, self._stop_reason))
        elif purpose in ("pause", "resume", "metadata", "snapshot", "refresh", "event"):
            if entry is self._reinvite:
                self._reinvite = None
            phase = "refresh" if purpose == "refresh" else "established"
            if response is None or status in (408, 481):
                # Timeout, transport failure, 408 or 481: the dialog is gone (§12.2.1.2).
                self._fail(now, status, reason, reason_header, warning, phase)
            elif status == 491:
                if purpose == "refresh":
                    self._timers["refresh"] = now + RETRY_491_DELAY
                else:
                    if purpose == "event" and self._event_inflight is not None:
                        self._event_docs.appendleft(self._event_inflight)  # same one again
                    self._ops.appendleft(purpose)
                    self._timers["retry491"] = now + RETRY_491_DELAY
            elif purpose == "refresh":
                if status == 422:
                    self._raise_interval(response)
                    self._send_refresh(now)
                elif not self._refresh_fallback(entry, status, now):
                    # RFC 4028 §10: the session is not refreshed and will expire.
                    left = (self._interval or 90) / 2
                    self._timers["expiry"] = now + max(left - min(32, left / 3), 1.0)
            else:
                self._events.append(ev.UpdateRejected(purpose, status, reason))
                self._run_ops(now)
        elif purpose == "keepalive":
            if response is None or status in (408, 481):
                self._fail(now, status, reason, reason_header, warning, "keepalive")
            else:
                # Any other answer (405, 501...) still proves the SRS is alive.
                self._timers["keepalive"] = now + self.config.keepalive_interval

    def _refresh_fallback(self, entry: _Client, status: int, now: float) -> bool:
        """UPDATE not supported after all: refresh with re-INVITE instead."""
        if entry.txn.request.method == "UPDATE" and status in (405, 501):
            self._update_allowed = False
            self._send_refresh(now)
            return True
        return False

    def _raise_interval(self, response: Response) -> None:
        min_se = response.headers.get("Min-SE")
        if min_se:
            try:
                value = int(min_se.split(";")[0].strip())
            except ValueError:
                return
            self._session_expires = max(value, self._session_expires or 0)
            self._interval = self._session_expires

    def _on_invite_failure(
        self,
        entry: _Client,
        status: int,
        reason: str,
        reason_header: str | None,
        warning: str | None,
        now: float,
        response: Response | None,
    ) -> None:
        if self._stop_requested:
            self._finish(ev.Ended(False, self._stop_reason))
            return
        if response is not None:
            if status in (415, 488) and not self._ctype_retried:
                self._ctype_retried = True
                self._metadata_type = (
                    LEGACY_CONTENT_TYPE if self._metadata_type == CONTENT_TYPE else CONTENT_TYPE
                )
                self._retry_invite(now)
                return
            if status == 422 and response.headers.get("Min-SE"):
                before = self._session_expires
                self._raise_interval(response)
                if self._session_expires != before:
                    self._retry_invite(now)
                    return
            if 300 <= status < 400 and not self._redirected:
                contacts = [c for c in response.contacts if c.uri.is_sip]
                if contacts:
                    self._redirected = True
                    self._targets[self._target_index] = str(contacts[0].uri)
                    self._new_dialog_identity()
                    self._send_invite(now)
                    return
        self._setup_failed(now, status, reason, reason_header, warning)

    def _retry_invite(self, now: float) -> None:
        self._cseq += 1
        self._send_invite(now)

    def _setup_failed(
        self,
        now: float,
        status: int | None,
        reason: str,
        reason_header: str | None,
        warning: str | None,
    ) -> None:
        self._invite = None
        self._timers.pop("setup", None)
        skip = status is not None and status in self.config.skip_failover_codes
        if self._target_index + 1 < len(self._targets) and not skip:
            failed = self.srs_uri
            self._target_index += 1
            self._events.append(ev.FailingOver(failed, self.srs_uri, status, reason))
            self._metadata_type = self.config.metadata_content_type
            self._session_expires = self.config.session_expires
            self._new_dialog_identity()
            self._send_invite(now)
            return
        self._fail(now, status, reason, reason_header, warning, "setup")

    # --- session timers (RFC 4028) and keepalives -------------------------------------------

    def _apply_session_timer(self, message: Message, now: float) -> None:
        value = message.headers.get("Session-Expires")
        self._timers.pop("refresh", None)
        self._timers.pop("expiry", None)
        self._timers.pop("keepalive", None)
        if value is None:
            self._interval = None
            self._timers["keepalive"] = now + self.config.keepalive_interval
            return
        number, _, params = value.partition(";")
        try:
            interval = max(int(number.strip()), 1)
        except ValueError:
            self._timers["keepalive"] = now + self.config.keepalive_interval
            return
        refresher = "uac"
        for param in params.split(";"):
            name, _, pvalue = param.partition("=")
            if name.strip().lower() == "refresher":
                refresher = pvalue.strip().lower()
        # In a response, "uac" is whoever sent the request; in a request from the SRS it is them.
        we_sent = isinstance(message, Response)
        self._refresher_is_us = (refresher == "uac") == we_sent
        self._interval = interval
        if self._refresher_is_us:
            self._timers["refresh"] = now + interval / 2
        else:
            self._timers["expiry"] = now + interval - min(32, interval / 3)

    def _clear_session_timers(self) -> None:
        for name in ("refresh", "expiry", "keepalive", "retry491", "setup"):
            self._timers.pop(name, None)

    def _on_session_timer(self, name: str, now: float) -> None:
        if name == "stop":
            self._finish(ev.Ended(False, f"{self._stop_reason} (no answer from SRS)"))
        elif name == "setup" and self.state is SessionState.INVITING:
            entry = self._invite
            if entry is not None:
                self._send_cancel(now)
                entry.purpose = "abandoned"  # its 487 no longer matters; a late 2xx is hung up
            self._setup_failed(now, 408, "Request Timeout (no final answer from SRS)", None, None)
        elif name == "refresh":
            self._send_refresh(now)
        elif name == "expiry" and self.state is SessionState.ESTABLISHED:
            self._fail(now, 408, "session timer expired without refresh", None, None, "refresh")
        elif name == "keepalive" and self.state is SessionState.ESTABLISHED:
            self._in_dialog("OPTIONS", "keepalive", now)
        elif name == "retry491":
            self._run_ops(now)

    # --- requests from the SRS ------------------------------------------------------------

    def _respond_stateless(
        self, request: Request, status: int, now: float, source: tuple[str, int] | None
    ) -> None:
        self._out.append(
            Outgoing(
                build_response(request, status, to_tag=self._local_tag or secrets.token_hex(4)),
                self._reply_destination(request, source),
            )
        )

    def _reply_destination(self, request: Request, source: tuple[str, int] | None) -> Destination:
        transport = self.transport
        if source is not None:
            return Destination(source[0], source[1], transport)
        via = request.top_via
        host = via.params.get("received") or via.host
        rport = via.params.get("rport")
        port = (
            int(rport)
            if rport and rport.isdigit()
            else via.port or (5061 if transport == "tls" else 5060)
        )
        return Destination(host, port, transport)

    def _on_request(self, request: Request, now: float, source: tuple[str, int] | None) -> None:
        try:
            branch = request.top_via.branch or ""
        except SipParseError:
            return
        method = request.method
        if method == "ACK":
            txn = self._servers.get((branch, "INVITE"))
            if txn is None:
                # ACK for a 2xx has its own branch: find the INVITE transaction by CSeq.
                for (_, m), candidate in self._servers.items():
                    if m == "INVITE" and candidate.request.cseq[0] == request.cseq[0]:
                        txn = candidate
                        break
            if txn is not None:
                txn.handle_message(request, now)
            return
        if method == "CANCEL":
            target = self._servers.get((branch, "INVITE"))
            status = 200 if target is not None else 481
            self._out.append(
                Outgoing(build_response(request, status), self._reply_destination(request, source))
            )
            return
        key = (branch, method)
        existing = self._servers.get(key)
        if existing is not None:
            existing.handle_message(request, now)  # retransmission
            return
        if self._dialog is None or not self._dialog.matches(request):
            self._respond_stateless(request, 481, now, source)
            return
        reliable = self.transport != "udp"
        txn: ServerInviteTransaction | ServerNonInviteTransaction
        if method == "INVITE":
            txn = ServerInviteTransaction(request, reliable, self.config.timers)
        else:
            txn = ServerNonInviteTransaction(request, reliable, self.config.timers)
        self._servers[key] = txn
        self._server_dest[key] = self._reply_destination(request, source)
        if not self._dialog.accept_remote_cseq(request):
            txn.send_response(self._dialog.response(request, 500, "CSeq Out of Order"), now)
            return
        if method == "BYE":
            txn.send_response(self._dialog.response(request, 200), now)
            reason = request.headers.get("Reason") or "BYE from SRS"
            self._finish(ev.Ended(True, reason))
        elif method == "OPTIONS":
            txn.send_response(
                self._dialog.response(request, 200, headers=self._capabilities()), now
            )
        elif method in ("INVITE", "UPDATE"):
            if self.state is not SessionState.ESTABLISHED:
                txn.send_response(
                    self._dialog.response(
                        request, 491 if self.state is SessionState.INVITING else 481
                    ),
                    now,
                )
            elif method == "INVITE" and self._reinvite is not None:
                txn.send_response(self._dialog.response(request, 491), now)  # glare (§14.2)
            else:
                self._answer_offer(txn, request, now)
        else:
            txn.send_response(self._dialog.response(request, 405, headers=[("Allow", ALLOW)]), now)

    def _capabilities(self) -> list[tuple[str, str]]:
        return [
            ("Allow", ALLOW),
            ("Accept", f"application/sdp, {self._metadata_type}, {REQUEST_CONTENT_TYPE}"),
            ("Supported", "timer"),
        ]

    def _answer_offer(
        self,
        txn: ServerInviteTransaction | ServerNonInviteTransaction,
        request: Request,
        now: float,
    ) -> None:
        assert self._dialog is not None
        self._dialog.update_target(request)
        try:
            offer, snapshot = self._read_request_body(request)
        except SipParseError:
            txn.send_response(self._dialog.response(request, 400, "Bad Request Body"), now)
            return
        headers = [("Contact", self._contact(self.transport)), *self._capabilities()]
        headers = [h for h in headers if h[0] != "Supported"] + [("Supported", "timer")]
        if "Session-Expires" in request.headers:
            self._apply_session_timer(request, now)
            if self._interval:
                refresher = "uas" if self._refresher_is_us else "uac"
                headers.append(("Session-Expires", f"{self._interval};refresher={refresher}"))
                headers.append(("Require", "timer"))
        elif self._interval and not self._refresher_is_us:
            self._timers["expiry"] = now + self._interval - min(32, self._interval / 3)
        body = b""
        if offer is not None:
            address = self.config.media_address or self.config.local_address
            self._sdp_version += 1
            try:
                answer, answered = build_answer(
                    offer, self._offer, address, self._sdp_id, self._sdp_version, self._paused
                )
            except (SipParseError, ValueError):
                txn.send_response(self._dialog.response(request, 488), now)
                return
            body = answer.to_bytes()
            headers.append(("Content-Type", "application/sdp"))
            was_paused = self._remote_paused
            self._remote_paused = (
                bool(answered)
                and all(a.port is None or a.direction == "inactive" for a in answered)
                and not self._paused
            )
            changed = self._set_answered(answered)
            txn.send_response(self._dialog.response(request, 200, headers=headers, body=body), now)
            if self._remote_paused and not was_paused:
                self._events.append(ev.Paused(True))
            elif was_paused and not self._remote_paused:
                self._events.append(ev.Resumed(True))
            if changed:
                # Also with Paused/Resumed: the offer may move the streams, and those
                # events carry no destinations.
                self._events.append(ev.MediaUpdated(self._destinations()))
        elif request.method == "INVITE":
            # Offer-less re-INVITE: we offer in the 2xx and read the answer from the ACK.
            headers.append(("Content-Type", "application/sdp"))
            txn.send_response(
                self._dialog.response(request, 200, headers=headers, body=self._offer_sdp()), now
            )
        else:
            txn.send_response(self._dialog.response(request, 200, headers=headers), now)
        if snapshot:
            self._queue_snapshot(now)

    def _queue_snapshot(self, now: float) -> None:
        if "snapshot" not in self._ops:
            self._ops.append("snapshot")
        self._run_ops(now)

    def _on_ack(self, ack: Request, now: float) -> None:
        if not ack.body:
            return
        try:
            answer = self._find_sdp(ack)
            if answer is not None and self._set_answered(read_answer(answer, self._offer)):
                self._events.append(ev.MediaUpdated(self._destinations()))
        except SipParseError:
            return

    def _read_request_body(self, request: Request) -> tuple[SessionDescription | None, bool]:
        """(SDP offer or None, whether a metadata snapshot is requested)."""
        if not request.body:
            return None, False
        ctype = request.content_type
        if ctype is None:
            raise SipParseError("body without Content-Type")
        if ctype.mime == "application/sdp":
            return SessionDescription.parse(request.body), False
        if ctype.mime == REQUEST_CONTENT_TYPE:
            return None, True
        if ctype.type == "multipart":
            offer, snapshot = None, False
            for part in parse_multipart(request.body, ctype):
                if part.content_type == "application/sdp":
                    offer = SessionDescription.parse(part.body)
                elif part.content_type == REQUEST_CONTENT_TYPE:
                    snapshot = True
            return offer, snapshot
        raise SipParseError("unsupported body type")

    def _find_sdp(self, message: Message) -> SessionDescription | None:
        ctype = message.content_type
        if not message.body or ctype is None:
            return None
        if ctype.mime == "application/sdp":
            return SessionDescription.parse(message.body)
        if ctype.type == "multipart":
            for part in parse_multipart(message.body, ctype):
                if part.content_type == "application/sdp":
                    return SessionDescription.parse(part.body)
        return None

    # --- endings ----------------------------------------------------------------------------

    def _fail(
        self,
        now: float,
        status: int | None,
        reason: str,
        reason_header: str | None,
        warning: str | None,
        phase: str,
        keep_bye: bool = False,
    ) -> None:
        if self.state in (SessionState.ENDED, SessionState.FAILED):
            return
        if (
            not keep_bye
            and self.state is SessionState.ESTABLISHED
            and self._dialog is not None
            and status not in (481,)
        ):
            # Tell the SRS we are gone (best effort; its answer is not waited for).
            self._in_dialog("BYE", "bye-after-failure", now)
        self._events.append(ev.Failed(status, reason, reason_header, warning, phase))
        self.state = SessionState.FAILED
        self._wind_down()

    def _finish(self, event: ev.Ended) -> None:
        if self.state in (SessionState.ENDED, SessionState.FAILED):
            return
        self._events.append(event)
        self.state = SessionState.ENDED
        self._wind_down()

    def _wind_down(self) -> None:
        # Transactions are kept until they terminate on their own timers, so retransmitted
        # final responses are still ACKed; their events are ignored (see _on_client_event).
        self._timers.clear()
        self._ops.clear()
        self._reinvite = None
