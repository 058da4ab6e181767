"""Events a :class:`~mediafork.sip.session.RecordingSession` reports to the control plane.

Small frozen dataclasses in the style of aioquic/h11 events. None of them carries a secret:
SRTP keys stay in the configuration, and the selected crypto is named by suite and tag only.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StreamDestination:
    """Where one forked stream is to be sent, as the SRS answered."""

    label: str
    """The stream's SDP label (matches the config and the metadata)."""
    address: str | None
    """RTP destination address (c= line)."""
    port: int | None
    """RTP destination port; None when the SRS answered port 0 (do not send this stream)."""
    rtcp: tuple[str, int] | None
    """RTCP destination (address, port); equals the RTP one under rtcp-mux."""
    suite: str | None
    """SRTP suite selected by the answer's a=crypto tag; None for plain RTP."""
    tag: int | None
    """The a=crypto tag the answer selected (1 = _80, 2 = _32 in our offers)."""
    direction: str
    """Direction the SRS answered (recvonly normally; inactive when paused)."""


@dataclass(frozen=True)
class Established:
    """The SRS accepted the recording session (2xx received and ACKed): start sending media."""

    srs_uri: str
    """The SRS that answered (primary, a standby, or a redirect target)."""
    call_id: str
    """Call-ID of the recording session's dialog."""
    streams: tuple[StreamDestination, ...]
    """One destination per forked stream, in configuration order."""


@dataclass(frozen=True)
class MediaUpdated:
    """An offer/answer exchange changed where (or whether) streams are sent."""

    streams: tuple[StreamDestination, ...]
    """The new destinations of every forked stream."""


@dataclass(frozen=True)
class Paused:
    """Recording is paused (all streams inactive): stop sending media."""

    by_remote: bool
    """True if the SRS asked for it (a=inactive in its offer), False for our pause()."""


@dataclass(frozen=True)
class Resumed:
    """Recording resumed after a pause: send media again."""

    by_remote: bool
    """True if the SRS asked for it, False for our resume()."""


@dataclass(frozen=True)
class UpdateRejected:
    """An in-dialog re-INVITE of ours was refused; the session itself continues."""

    purpose: str
    """What the request was for: "pause", "resume", "metadata", "snapshot" or "event"
    (a call event's partial metadata)."""
    status: int | None
    """SIP status of the rejection (None on timeout)."""
    reason: str
    """Reason phrase or a short description."""


@dataclass(frozen=True)
class FailingOver:
    """Setting up with one SRS failed; the next standby SRS is tried."""

    failed_uri: str
    """The SRS that failed."""
    next_uri: str
    """The SRS tried next."""
    status: int | None
    """SIP status of the failure (408 for a timeout, 503 for a transport error)."""
    reason: str
    """Reason phrase or description of the failure."""


@dataclass(frozen=True)
class Failed:
    """The recording session failed; nothing more will be sent for it."""

    status: int | None
    """SIP status (the SRS's final response; 408 for a timeout, 503 for a transport error)."""
    reason: str
    """Reason phrase or a short description of what went wrong."""
    reason_header: str | None
    """The Reason header of the failing response, if any (RFC 3326)."""
    warning: str | None
    """The Warning header of the failing response, if any."""
    phase: str
    """When it failed: "setup", "refresh", "keepalive" or "established"."""


@dataclass(frozen=True)
class Ended:
    """The recording session ended normally (BYE exchanged, or stop while setting up)."""

    by_remote: bool
    """True if the SRS sent BYE."""
    reason: str
    """Short description (the SRS's Reason header if it gave one)."""


SessionEvent = (
    Established | MediaUpdated | Paused | Resumed | UpdateRejected | FailingOver | Failed | Ended
)
