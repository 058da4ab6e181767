"""The host's call-event request (``POST /v1/Calls/{CallSid}/Events``, control-socket op
``event``): validated whole into a :mod:`mediafork.sip.call_events` event, or a 400 naming the
field. Nothing here changes state."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..sip.call_events import (
    CallEvent,
    Hold,
    ParticipantAdded,
    ParticipantRemoved,
    ParticipantReplaced,
)
from ..sip.errors import SipParseError
from ..sip.session import Participant
from ..sip.uri import SipUri
from .errors import INVALID_PARAMETER, MISSING_PARAMETER, ApiError
from .forms import check_text

__all__ = ["EVENTS", "parse_call_event", "participant_of"]

EVENTS = ("hold", "unhold", "participant-replaced", "participant-added", "participant-removed")
MAX_AOR = 1024
MAX_NAME = 256
_KEYS = {"event", "track", "participant"}
_PARTICIPANT_KEYS = {"aor", "name"}
_E164 = re.compile(r"^\+?[0-9]{1,32}$")
_TEL = re.compile(r"^tel:\+?[0-9A-Fa-f*#().\-]{1,64}(;[A-Za-z0-9\-_.!~*'()=+%:]*)*$")


def participant_of(text: str, name: str | None = None) -> Participant:
    """A participant from a From/To value: a bare E.164 number becomes a tel: URI (metadata
    wants a URI), as the recorder links do for the call's From and To."""
    return Participant(text if ":" in text else f"tel:{text}", name)


def _aor(value: Any, field: str) -> str:
    text = check_text(value, field, MAX_AOR)
    if _E164.match(text):
        return f"tel:{text}"
    if text[:4].lower() == "tel:":
        if not _TEL.match(text):
            raise ApiError(INVALID_PARAMETER, f"{field} is not a valid tel: URI (RFC 3966)")
        return text
    try:
        uri = SipUri.parse(text)
    except SipParseError:
        uri = None
    if uri is None or not uri.is_sip or not uri.host:
        raise ApiError(INVALID_PARAMETER,
                       f"{field} must be a sip:, sips: or tel: URI or an E.164 number")
    if uri.password is not None:
        raise ApiError(INVALID_PARAMETER, f"{field} must not carry a password")
    return text


def _participant(value: Any) -> Participant:
    if value is None:
        raise ApiError(MISSING_PARAMETER, "participant is required for this event")
    if not isinstance(value, Mapping):
        raise ApiError(INVALID_PARAMETER, 'participant must be an object {"aor": …, "name": …}')
    unknown = sorted(set(value) - _PARTICIPANT_KEYS, key=str)
    if unknown:
        raise ApiError(INVALID_PARAMETER, f"participant has unknown keys: {unknown}")
    if "aor" not in value:
        raise ApiError(MISSING_PARAMETER, "participant.aor is required")
    aor = _aor(value["aor"], "participant.aor")
    name = value.get("name")
    if name is not None:
        name = check_text(name, "participant.name", MAX_NAME)
    return Participant(aor, name or None)


def parse_call_event(body: Mapping[str, Any]) -> CallEvent:
    """The event described by ``body``, or an ApiError (400) naming what is wrong."""
    unknown = sorted(set(body) - _KEYS, key=str)
    if unknown:
        raise ApiError(INVALID_PARAMETER, f"unknown keys: {unknown}")
    kind = body.get("event")
    if kind is None:
        raise ApiError(MISSING_PARAMETER, "event is required")
    if kind not in EVENTS:
        raise ApiError(INVALID_PARAMETER, f"event must be one of {', '.join(EVENTS)}")
    track = body.get("track")
    if kind == "participant-removed":
        if track is not None:
            raise ApiError(INVALID_PARAMETER, "track is not used with participant-removed")
        return ParticipantRemoved(_participant(body.get("participant")).aor)
    if track is None:
        raise ApiError(MISSING_PARAMETER, f"track is required for {kind}")
    if track not in ("inbound", "outbound"):
        raise ApiError(INVALID_PARAMETER, "track must be inbound or outbound")
    if kind in ("hold", "unhold"):
        if "participant" in body:
            raise ApiError(INVALID_PARAMETER, f"participant is not used with {kind}")
        return Hold(track, held=kind == "hold")
    party = _participant(body.get("participant"))
    if kind == "participant-replaced":
        return ParticipantReplaced(track, party)
    return ParticipantAdded(track, party)
