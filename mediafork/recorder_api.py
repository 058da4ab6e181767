"""The seam between the control plane and recording sessions.

The control service (REST, TwiML, store, callbacks) decides *what* to record;
a ``RecorderLinks`` implementation (mediafork.sip.recorder_links) opens and keeps the
SIPREC sessions that carry it, creating the call's forks in the engine. This
module holds only the types both sides share: connectors and edges from the
operator's config, the start request, and the events coming back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from .engine import Call
from .sip.call_events import CallEvent, Roster
from .sip.profile import SipProfile

SiprecTrack = Literal["inbound_track", "outbound_track", "both_tracks"]


@dataclass(frozen=True)
class Edge:
    """A named local address that SIP and media to a recorder leave from."""

    name: str
    address: str
    default: bool = False


@dataclass(frozen=True)
class Connector:
    """An operator-configured way to reach a Session Recording Server.

    ``srs`` keeps the seeds' spelling (``sip:rec@host;secure=true&edge=NAME``);
    ``secure`` and ``edge`` are mediafork's knobs, stripped before the URI is
    used. The credential is a secret: it never appears in repr(), logs,
    metrics or API responses.
    """

    account_sid: str
    unique_name: str
    srs: str
    standby_srs: tuple[str, ...] = ()
    credentials_header: str | None = None
    credentials: str | None = field(default=None, repr=False)
    digest_username: str | None = None
    digest_password: str | None = field(default=None, repr=False)
    metadata_content_type: str = "application/rs-metadata+xml"
    profile: SipProfile = SipProfile()
    """The connector's ``[connectors.sip]`` table: headers, parameters as headers, metadata
    extensions, timers, SRTP suites (mediafork.sip.profile)."""
    skip_failover_codes: tuple[int, ...] = ()
    """Set-up answers (SIP statuses) that end the attempt without trying the standbys."""


@dataclass(frozen=True)
class CallCodec:
    """The call's audio codec as the host registered it, forwarded unchanged to recorders
    (``mediafork.control.codecs`` validates the host API's ``codec``)."""

    name: str = "PCMU"
    payload_type: int = 0
    clock_rate: int = 8000
    """The RTP clock rate: 8000 for G.722 (RFC 3551 §4.5.2), 48000 for Opus."""
    channels: int = 1
    """Channels in the SDP rtpmap: always 2 for Opus (RFC 7587 §7), else 1."""
    fmtp: str | None = None
    """Format parameters passed through to the offer's ``a=fmtp`` (e.g. Opus's
    ``minptime=10;useinbandfec=1``); None: no a=fmtp line."""


@dataclass(frozen=True)
class SiprecStart:
    """Everything needed to open one recording session for one Siprec."""

    siprec_sid: str
    account_sid: str
    call_sid: str
    name: str | None
    connector: Connector
    track: SiprecTrack
    parameters: tuple[tuple[str, str], ...]
    caller: str
    """The call's From (a SIP AOR or E.164 number)."""
    callee: str
    """The call's To."""
    codec: CallCodec = CallCodec()
    roster: Roster | None = None
    """The call's participants and held tracks after the host's call events (None: none yet);
    the session's complete metadata starts from it."""


@dataclass(frozen=True)
class LinkEvent:
    """A recording session's state change, for status callbacks and the store."""

    siprec_sid: str
    kind: Literal["started", "stopped", "error", "paused", "resumed", "failover"]
    """``started`` on the recorder's 2xx, ``stopped`` when it ended normally
    (our BYE, the recorder's BYE, call end), ``error`` when it failed. ``paused`` /
    ``resumed``: the control service's own pause and resume, put on the Siprec's event
    chain so that their callbacks keep their order with the others. ``failover`` when
    a session lost mid-call was replaced by one with another recorder of the connector
    (``recorder`` the new one, ``previous_recorder`` the lost one; ``error_message``,
    ``sip_status`` and ``phase`` say why it was lost; ``dialog`` is the new session's)."""
    error_code: int | None = None
    """mediafork/Twilio error code for ``error`` (see docs/api-errors.md)."""
    error_message: str | None = None
    """Human text naming the SIP status and phase; never a secret."""
    sip_status: int | None = None
    """For ``error``: the recorder's final SIP status (408 for a timeout), when there was one."""
    reason_header: str | None = None
    """For ``error``: the Reason header of the failing response (RFC 3326), if it had one."""
    phase: str | None = None
    """For ``error``: ``set-up``, ``established``, ``refresh`` or ``teardown``."""
    recorder: str | None = None
    """For ``error``: the recorder's SIP URI, without credentials."""
    previous_recorder: str | None = None
    """For ``failover``: the recorder whose session was lost, without credentials."""
    failover_count: int | None = None
    """For ``failover``: how many mid-call failovers this Siprec has had, this one included."""
    by_remote: bool = False
    """For ``stopped``: the recorder hung up."""
    dialog: Mapping[str, Any] | None = None
    """For ``started``: what a later process needs to BYE the session if this one dies
    (``RecordingSession.dialog_record()``; JSON-ready, no secrets). The service keeps it
    until the Siprec stops and hands it back to ``hang_up`` after a crash."""


LinkEventSink = Callable[[LinkEvent], None]


class RecorderLinks(Protocol):
    """Opens, keeps and closes recording sessions; reports via the event sink."""

    async def start(self, call: Call, request: SiprecStart) -> None:
        """Create the forks and send the INVITE; returns without waiting for the
        answer. Problems found before anything is sent (unknown edge, no free
        ports) raise ``LinkError``; later ones arrive as ``error`` events."""

    async def stop(self, siprec_sid: str, reason: str = "stopped") -> None:
        """BYE (or CANCEL while inviting), bounded wait; emits ``stopped``. Idempotent."""

    async def pause(self, siprec_sid: str) -> None:
        """Stop sending at once (returns once no packet can leave), then re-INVITE the
        recorder with ``a=inactive``. No-op for a Siprec that is not running."""

    async def resume(self, siprec_sid: str) -> None:
        """Re-INVITE with ``a=sendonly``; media flows again once the recorder accepts."""

    async def update_participants(self, call_sid: str, caller: str, callee: str) -> None:
        """Send partial metadata to every session of the call."""

    def stream_counters(self, siprec_sid: str) -> list[dict[str, Any]]:
        """A live Siprec's forked streams: label, track, sent, dropped, recorder_lost,
        recorder_jitter_ms (docs/api.md); empty when it is not live."""

    async def call_event(self, call_sid: str, event: CallEvent) -> list[str]:
        """Send a call event's partial metadata to every live session of the call, in order
        per session; returns the Siprec SIDs it was queued for."""

    async def hang_up(self, request: SiprecStart, dialog: Mapping[str, Any]) -> None:
        """BYE a session a crashed process left open (``dialog`` from a ``started`` event).
        Reports no events; returns when it ended or the stop timeout passed."""

    async def close(self, timeout: float = 5.0) -> None:
        """Graceful shutdown: BYE every session, wait up to ``timeout``."""


class LinkError(Exception):
    """A session could not be started; ``code`` is the API error code to report."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code
