"""Status-callback events: what is sent for a Siprec or a Recording change.

Pure builders that turn resource state into the ordered parameter list of one callback,
wrapped in a :class:`CallbackEvent` that :mod:`.callbacks` delivers. Keeping them apart from
delivery lets the store persist an event before it is sent and replay it after a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from .forms import Method
from .signature import redact_url
from .timefmt import iso8601, rfc2822

API_VERSION = "2010-04-01"

SiprecEventName = Literal["siprec-started", "siprec-stopped", "siprec-error", "siprec-paused",
                          "siprec-resumed", "siprec-failover"]
SIPREC_EVENTS: tuple[SiprecEventName, ...] = ("siprec-started", "siprec-stopped", "siprec-error",
                                              "siprec-paused", "siprec-resumed",
                                              "siprec-failover")
"""``siprec-paused`` / ``siprec-resumed`` / ``siprec-failover`` are mediafork's (pause, resume
and mid-call failover are extensions)."""


@dataclass(frozen=True)
class CallbackEvent:
    """One status-callback request to deliver."""

    resource_sid: str
    """Siprec or Recording SID: events of one resource are delivered in order."""
    account_sid: str
    """Whose auth token signs the request."""
    url: str
    method: Method
    params: tuple[tuple[str, str], ...]
    event_id: int | None = None
    """The store's row id, so delivery outcomes can be written back; None if not stored."""
    created_at: float | None = None
    """When the event happened (Unix time): retries end ``retry_for`` seconds after it,
    also across restarts. None: when it was queued."""

    def param(self, name: str) -> str | None:
        for key, value in self.params:
            if key == name:
                return value
        return None

    def __repr__(self) -> str:
        # The URL may carry credentials or tokens in its query: show only a redacted form.
        return (
            f"CallbackEvent(resource_sid={self.resource_sid!r}, method={self.method!r}, "
            f"url={redact_url(self.url)!r}, event_id={self.event_id!r})"
        )


@dataclass(frozen=True)
class CallInfo:
    """The parts of a registered call that callbacks report."""

    account_sid: str
    call_sid: str
    from_: str
    to: str


@dataclass(frozen=True)
class ErrorDetail:
    """What a ``siprec-error`` callback says beyond SiprecError/SiprecErrorCode, each field
    sent only when known: the recorder's SIP status and Reason header, the phase of the
    session, and the recorder (its URI without credentials). After a failed mid-call
    failover, ``previous_recorder`` is the recorder whose session was lost (``recorder`` the
    last one tried)."""

    sip_status: int | None = None
    reason: str | None = None
    phase: str | None = None
    recorder: str | None = None
    previous_recorder: str | None = None

    def params(self) -> list[tuple[str, str]]:
        out = []
        for name, value in (("SiprecErrorSipStatus", self.sip_status),
                            ("SiprecErrorReason", self.reason),
                            ("SiprecErrorPhase", self.phase), ("SiprecRecorder", self.recorder),
                            ("SiprecPreviousRecorder", self.previous_recorder)):
            if value is not None and value != "":
                out.append((name, str(value)))
        return out


@dataclass(frozen=True)
class FailoverDetail:
    """What a ``siprec-failover`` callback says (docs/api.md): the recorder that took over,
    the one whose session was lost (URIs without credentials), why it was lost (text, SIP
    status when there was one, phase) and how many failovers the Siprec has had."""

    recorder: str
    previous_recorder: str
    reason: str
    count: int
    sip_status: int | None = None
    phase: str | None = None

    def params(self) -> list[tuple[str, str]]:
        out = [("SiprecRecorder", self.recorder),
               ("SiprecPreviousRecorder", self.previous_recorder),
               ("SiprecFailoverReason", self.reason),
               ("SiprecFailoverCount", str(self.count))]
        if self.sip_status is not None:
            out.append(("SiprecFailoverSipStatus", str(self.sip_status)))
        if self.phase:
            out.append(("SiprecFailoverPhase", self.phase))
        return out


def siprec_params(
    *,
    call: CallInfo,
    siprec_sid: str,
    siprec_name: str | None,
    event: SiprecEventName,
    timestamp: datetime,
    error: str | None = None,
    error_code: int | None = None,
    detail: ErrorDetail | None = None,
    failover: FailoverDetail | None = None,
) -> tuple[tuple[str, str], ...]:
    """Parameters of a Siprec status callback (seed 002's table plus From, To, ApiVersion).

    A Siprec without a name sends ``SiprecName`` empty rather than leaving it out, so that
    receivers can read the field unconditionally.
    """
    if event not in SIPREC_EVENTS:
        raise ValueError(f"unknown Siprec event {event!r}")
    params: list[tuple[str, str]] = [
        ("AccountSid", call.account_sid),
        ("CallSid", call.call_sid),
        ("SiprecSid", siprec_sid),
        ("SiprecName", siprec_name or ""),
        ("SiprecEvent", event),
        ("Timestamp", iso8601(timestamp)),
        ("From", call.from_),
        ("To", call.to),
        ("ApiVersion", API_VERSION),
    ]
    if event == "siprec-error":
        params.append(("SiprecError", error or "unknown error"))
        params.append(("SiprecErrorCode", str(error_code if error_code is not None else 0)))
        if detail is not None:
            params += detail.params()
    if event == "siprec-failover" and failover is not None:
        params += failover.params()
    return tuple(params)


def recording_params(
    *,
    account_sid: str,
    call_sid: str,
    recording_sid: str,
    recording_url: str,
    status: str,
    duration_seconds: int | None,
    channels: int,
    start_time: datetime,
    track: str,
    error_code: int | None,
    source: str = "StartCallRecordingAPI",
) -> tuple[tuple[str, str], ...]:
    """Parameters of a Recording status callback (issue 5's list).

    ``RecordingDuration`` is ``0`` while unknown (in-progress); ``ErrorCode`` is ``0`` when
    there is no error, as the platform sends it.
    """
    return (
        ("AccountSid", account_sid),
        ("CallSid", call_sid),
        ("RecordingSid", recording_sid),
        ("RecordingUrl", recording_url),
        ("RecordingStatus", status),
        ("RecordingDuration", str(duration_seconds if duration_seconds is not None else 0)),
        ("RecordingChannels", str(channels)),
        ("RecordingStartTime", rfc2822(start_time)),
        ("RecordingSource", source),
        ("RecordingTrack", track),
        ("ErrorCode", str(error_code if error_code is not None else 0)),
    )


def recording_url(base_url: str, account_sid: str, call_sid: str, recording_sid: str) -> str:
    """RecordingUrl: the Recording's URI without extension, as on the platform.

    The platform points at its account-level Recordings path; mediafork serves recordings
    under the call (``….wav`` appended gives the audio), so the URL uses that path.
    """
    return (
        f"{base_url.rstrip('/')}/{API_VERSION}/Accounts/{account_sid}/Calls/{call_sid}"
        f"/Recordings/{recording_sid}"
    )
