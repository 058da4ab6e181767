"""SIP for SIPREC: sans-I/O message, transaction, dialog, SDP and metadata cores.

Nothing in this package opens sockets, reads clocks or imports asyncio; the transport layer
feeds bytes/messages and the current time in, and sends what comes out. See docs/sip.md.
"""

from .errors import SipError, SipParseError, SipStateError
from .events import (
    Ended,
    Established,
    Failed,
    FailingOver,
    MediaUpdated,
    Paused,
    Resumed,
    SessionEvent,
    StreamDestination,
    UpdateRejected,
)
from .message import Request, Response, StreamFramer, parse_message
from .sdp import Codec
from .session import (
    Destination,
    ForkedStream,
    Outgoing,
    Participant,
    RecordingSession,
    SessionConfig,
    SessionState,
)
from .transaction import TimerConfig
from .uri import SipUri, split_connector_uri

__all__ = [
    "Codec",
    "Destination",
    "Ended",
    "Established",
    "Failed",
    "FailingOver",
    "ForkedStream",
    "MediaUpdated",
    "Outgoing",
    "Participant",
    "Paused",
    "RecordingSession",
    "Request",
    "Response",
    "Resumed",
    "SessionConfig",
    "SessionEvent",
    "SessionState",
    "SipError",
    "SipParseError",
    "SipStateError",
    "SipUri",
    "StreamDestination",
    "StreamFramer",
    "TimerConfig",
    "UpdateRejected",
    "parse_message",
    "split_connector_uri",
]
