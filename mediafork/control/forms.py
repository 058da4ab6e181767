"""Validation of the Siprec and Recording request forms, and the forked-stream budget.

Pure functions: a form goes in, a frozen dataclass comes out, or :class:`ApiError` (400) is
raised with a message naming the broken rule. Nothing here knows about calls, connectors or
the store; rules that need state (unique names, the four-stream budget across live Siprecs,
whether the connector exists) are checked by the caller, with :func:`check_stream_budget`
as the pure part of the budget rule.

Conventions, chosen to match the platform's behaviour where it is visible:

* Unknown fields are ignored (the platform's clients send e.g. ``PlayBeep`` to Recordings).
* An optional field sent empty (``StatusCallback=``) counts as absent: form encoders send
  empty strings for "no value", and the platform treats them so.
* A field repeated in one form is refused, except ``RecordingStatusCallbackEvent`` which the
  official client sends as one repeated key per event.
* Enumerations are case-sensitive, as in the reference OpenAPI; only HTTP methods are
  accepted in any case (``get`` → ``GET``), since they are case-insensitive tokens in HTTP.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol, cast
from urllib.parse import urlsplit

from .egress import EgressPolicy
from .errors import (
    INVALID_CONNECTOR_NAME,
    INVALID_CUSTOM_PARAMETER,
    INVALID_METHOD,
    INVALID_NAME,
    INVALID_PARAMETER,
    INVALID_STATUS,
    INVALID_STATUS_CALLBACK,
    INVALID_STATUS_CALLBACK_EVENT,
    INVALID_TRACK,
    MISSING_PARAMETER,
    REPEATED_PARAMETER,
    TOO_MANY_STREAMS,
    ApiError,
)
from .sids import SIPREC, is_sid

Track = Literal["inbound_track", "outbound_track", "both_tracks"]
Method = Literal["GET", "POST"]
RecordingChannels = Literal["mono", "dual"]
RecordingTrack = Literal["inbound", "outbound", "both"]
Trim = Literal["trim-silence", "do-not-trim"]
RecordingEvent = Literal["in-progress", "completed", "absent"]
RecordingUpdateStatus = Literal["paused", "in-progress", "stopped"]
PauseBehavior = Literal["skip", "silence"]

TRACKS: tuple[Track, ...] = ("inbound_track", "outbound_track", "both_tracks")
# The seeds disagree on the default; their README settles it on the prose: both tracks.
DEFAULT_TRACK: Track = "both_tracks"
METHODS: tuple[Method, ...] = ("GET", "POST")
DEFAULT_METHOD: Method = "POST"
# A missing ConnectorName means the account's connector with this unique name (issue 4).
DEFAULT_CONNECTOR = "Default"

MAX_FORKED_STREAMS = 4
MAX_CUSTOM_PARAMETERS = 99
MAX_NAME_LENGTH = 256
MAX_CONNECTOR_NAME_LENGTH = 256
MAX_PARAMETER_NAME_LENGTH = 128
MAX_PARAMETER_VALUE_LENGTH = 1024
# The platform's limit for callback URLs (error 21609 mentions 4000 characters).
MAX_URL_LENGTH = 4000

# Custom parameter names and values are free text chosen by users and partners ("Agent
# Name", "Kundennummer"): the platform's docs put no rule on them. They travel in the
# RFC 7865 metadata as an XML attribute and its text, which the serializer escapes. Neither
# may hold control characters (CR/LF would let a client inject SIP headers wherever text is
# ever put in one) nor lone surrogates (JSON's "\ud800" decodes to one; it cannot be encoded
# as UTF-8, so SQLite, SIP and the JSON answer would each fail on it after the request was
# accepted).
_CONTROL = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
# ``Parameter<N>.Name`` / ``Parameter<N>.Value`` with N written without leading zeros, so
# that Parameter1 and Parameter01 cannot both name slot 1.
_PARAMETER_FIELD = re.compile(r"Parameter([1-9][0-9]*)\.(Name|Value)")
_PARAMETER_LIKE = re.compile(r"Parameter[0-9]+\.(?:Name|Value)")
_BUILT_IN_EGRESS = EgressPolicy()


class _MultiMapping(Protocol):
    """What aiohttp's ``MultiDictProxy`` (``await request.post()``) offers."""

    def getall(self, key: str) -> list[str]: ...

    def __iter__(self) -> Iterator[str]: ...


FormInput = Mapping[str, str] | Iterable[tuple[str, str]] | _MultiMapping


def normalize_form(form: FormInput) -> dict[str, list[str]]:
    """Every key with all its values, in order. Accepts a dict, pairs, or a multidict."""
    result: dict[str, list[str]] = {}
    if hasattr(form, "getall"):
        multi = cast(_MultiMapping, form)
        for key in multi:
            if key not in result:
                result[key] = [str(v) for v in multi.getall(key)]
        return result
    pairs: Iterable[tuple[str, str]]
    pairs = form.items() if isinstance(form, Mapping) else form  # type: ignore[assignment]
    for key, value in pairs:
        result.setdefault(str(key), []).append(str(value))
    return result


def _single(form: dict[str, list[str]], key: str) -> str | None:
    """The one value of *key*, None if absent or empty; refuses repeated keys."""
    values = form.get(key)
    if not values:
        return None
    if len(values) > 1:
        raise ApiError(REPEATED_PARAMETER, f"{key} must be given at most once")
    return values[0] or None


# -- field validators, shared with the TwiML parser (which passes its attribute names) ----


def check_text(value: object, field: str, max_length: int) -> str:
    """A string of at most *max_length* characters with no control characters and no lone
    surrogates (text that can be stored, put in SIP and answered), else 400 naming *field*."""
    if not isinstance(value, str) or len(value) > max_length or _CONTROL.search(value):
        raise ApiError(INVALID_PARAMETER,
                       f"{field} must be a string of at most {max_length} printable characters")
    return value


def validate_track(value: str | None, field: str = "Track") -> Track:
    if value is None:
        return DEFAULT_TRACK
    if value not in TRACKS:
        raise ApiError(INVALID_TRACK, f"{field} must be one of {', '.join(TRACKS)}")
    return cast(Track, value)


def validate_method(value: str | None, field: str) -> Method:
    if value is None:
        return DEFAULT_METHOD
    upper = value.upper()
    if upper not in METHODS:
        raise ApiError(INVALID_METHOD, f"{field} must be GET or POST")
    return cast(Method, upper)


def validate_callback_url(
    value: str | None, field: str, egress: EgressPolicy | None = None
) -> str | None:
    """An absolute http(s) URL with a host that *egress* allows, or None.

    *egress* None means the built-in rules only (no ``[callbacks] allow``/``deny``, no
    listeners): the daemon passes its configured policy. Credentials in the URL
    (``https://user:pass@host/``) are refused (the platform would send them as Basic auth;
    mediafork never sends them, and storing them would keep a password in clear). Neither
    they nor the path or query are echoed in messages or logs.
    """
    if value is None:
        return None
    rule = f"{field} must be an absolute http or https URL"
    if len(value) > MAX_URL_LENGTH:
        raise ApiError(INVALID_STATUS_CALLBACK, f"{rule} of at most {MAX_URL_LENGTH} characters")
    if _CONTROL.search(value) or " " in value:
        raise ApiError(INVALID_STATUS_CALLBACK, f"{rule} without spaces or control characters")
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError on a bad port
    except ValueError:
        raise ApiError(INVALID_STATUS_CALLBACK, rule) from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ApiError(INVALID_STATUS_CALLBACK, rule)
    if port == 0:
        raise ApiError(INVALID_STATUS_CALLBACK, rule)
    decision = (egress or _BUILT_IN_EGRESS).check_url(value)
    if not decision.allowed:
        raise ApiError(INVALID_STATUS_CALLBACK, f"{field} is not allowed: {decision.reason}")
    return value


def validate_siprec_name(value: str | None, field: str = "Name") -> str | None:
    """A Siprec name: optional, printable, bounded, and not shaped like a Siprec SID.

    The update endpoint accepts "the SID or the name" in the same path segment, so a name
    that looks like an SR SID would be ambiguous; it is refused.
    """
    if value is None:
        return None
    if len(value) > MAX_NAME_LENGTH:
        raise ApiError(INVALID_NAME, f"{field} must be at most {MAX_NAME_LENGTH} characters")
    if _CONTROL.search(value) or "/" in value:
        raise ApiError(INVALID_NAME, f"{field} must not contain control characters or '/'")
    if value != value.strip():
        raise ApiError(INVALID_NAME, f"{field} must not start or end with whitespace")
    if is_sid(value, SIPREC):
        raise ApiError(INVALID_NAME, f"{field} must not have the form of a Siprec SID")
    return value


def validate_connector_name(value: str | None, field: str = "ConnectorName") -> str | None:
    """Syntax only; whether the connector exists is the caller's check (also 31940)."""
    if value is None:
        return None
    if len(value) > MAX_CONNECTOR_NAME_LENGTH or _CONTROL.search(value):
        raise ApiError(
            INVALID_CONNECTOR_NAME,
            f"{field} must be at most {MAX_CONNECTOR_NAME_LENGTH} printable characters",
        )
    return value


def validate_custom_parameters(
    pairs: Iterable[tuple[str, str]], what: str = "Parameter"
) -> tuple[tuple[str, str], ...]:
    """Check name/value pairs (already in order); returns them as an immutable tuple.

    Names are compared case-insensitively for duplicates: "CampaignId" and "campaignid"
    are one name to most readers of the metadata.
    """
    result: list[tuple[str, str]] = []
    seen: set[str] = set()
    for index, (name, value) in enumerate(pairs, start=1):
        if index > MAX_CUSTOM_PARAMETERS:
            raise ApiError(
                INVALID_CUSTOM_PARAMETER, f"at most {MAX_CUSTOM_PARAMETERS} {what}s are allowed"
            )
        if not name:
            raise ApiError(INVALID_CUSTOM_PARAMETER, f"{what} names must not be empty")
        if len(name) > MAX_PARAMETER_NAME_LENGTH or _CONTROL.search(name):
            raise ApiError(
                INVALID_CUSTOM_PARAMETER,
                f"{what} names must be 1 to {MAX_PARAMETER_NAME_LENGTH} printable characters",
            )
        if len(value) > MAX_PARAMETER_VALUE_LENGTH:
            raise ApiError(
                INVALID_CUSTOM_PARAMETER,
                f"{what} {name!r}: value must be at most {MAX_PARAMETER_VALUE_LENGTH} characters",
            )
        if _CONTROL.search(value):
            raise ApiError(
                INVALID_CUSTOM_PARAMETER,
                f"{what} {name!r}: value must not contain control characters",
            )
        folded = name.lower()
        if folded in seen:
            raise ApiError(INVALID_CUSTOM_PARAMETER, f"{what} name {name!r} is given twice")
        seen.add(folded)
        result.append((name, value))
    return tuple(result)


def _form_custom_parameters(form: dict[str, list[str]]) -> tuple[tuple[str, str], ...]:
    """Collect ``ParameterN.Name/Value`` for N in 1..99, ordered by N; gaps are allowed.

    Gaps are allowed because the official clients let a user set, say, only parameter2;
    refusing would break working applications for no safety gain.
    """
    slots: dict[int, dict[str, str]] = {}
    for key in form:
        if not key.startswith("Parameter"):
            continue
        match = _PARAMETER_FIELD.fullmatch(key)
        if match is None:
            if _PARAMETER_LIKE.fullmatch(key):
                raise ApiError(
                    INVALID_CUSTOM_PARAMETER,
                    f"{key}: N in ParameterN must be 1 to {MAX_CUSTOM_PARAMETERS} "
                    "without leading zeros",
                )
            continue  # e.g. "ParameterFoo": not ours, ignored like any unknown field
        number = int(match.group(1))
        if number > MAX_CUSTOM_PARAMETERS:
            raise ApiError(
                INVALID_CUSTOM_PARAMETER,
                f"{key}: N in ParameterN must be 1 to {MAX_CUSTOM_PARAMETERS}",
            )
        values = form[key]
        if len(values) > 1:
            raise ApiError(REPEATED_PARAMETER, f"{key} must be given at most once")
        slots.setdefault(number, {})[match.group(2)] = values[0]
    pairs: list[tuple[str, str]] = []
    for number in sorted(slots):
        slot = slots[number]
        if "Name" not in slot:
            raise ApiError(
                INVALID_CUSTOM_PARAMETER, f"Parameter{number}.Value needs Parameter{number}.Name"
            )
        if "Value" not in slot:
            raise ApiError(
                INVALID_CUSTOM_PARAMETER, f"Parameter{number}.Name needs Parameter{number}.Value"
            )
        pairs.append((slot["Name"], slot["Value"]))
    return validate_custom_parameters(pairs)


# -- Siprec --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SiprecRequest:
    """A validated request to start a Siprec (from the REST form or from TwiML)."""

    name: str | None = None
    """Unique per call when given; lets the client stop the Siprec by name."""
    connector_name: str | None = None
    """None means the account's ``Default`` connector (:data:`DEFAULT_CONNECTOR`)."""
    track: Track = DEFAULT_TRACK
    status_callback: str | None = None
    status_callback_method: Method = DEFAULT_METHOD
    parameters: tuple[tuple[str, str], ...] = ()
    """Custom parameters, in order, passed to the recorder."""

    @property
    def forked_streams(self) -> int:
        return forked_streams(self.track)

    def __repr__(self) -> str:
        # The callback URL may carry credentials (user:pass@); keep it out of reprs.
        return (
            f"SiprecRequest(name={self.name!r}, connector_name={self.connector_name!r}, "
            f"track={self.track!r}, status_callback={'set' if self.status_callback else None}, "
            f"status_callback_method={self.status_callback_method!r}, "
            f"parameters={len(self.parameters)})"
        )


def build_siprec_request(
    *,
    name: str | None,
    connector_name: str | None,
    track: str | None,
    status_callback: str | None,
    status_callback_method: str | None,
    parameters: Iterable[tuple[str, str]] = (),
    labels: Mapping[str, str] | None = None,
    egress: EgressPolicy | None = None,
) -> SiprecRequest:
    """Validate already-extracted values. *labels* renames fields in error messages
    (TwiML passes its attribute names: ``track``, ``statusCallback``…); *egress* is the
    policy the status callback must pass (:func:`validate_callback_url`)."""
    label = {
        "name": "Name",
        "connector_name": "ConnectorName",
        "track": "Track",
        "status_callback": "StatusCallback",
        "status_callback_method": "StatusCallbackMethod",
        "parameter": "Parameter",
        **(labels or {}),
    }
    return SiprecRequest(
        name=validate_siprec_name(name or None, label["name"]),
        connector_name=validate_connector_name(connector_name or None, label["connector_name"]),
        track=validate_track(track or None, label["track"]),
        status_callback=validate_callback_url(status_callback or None, label["status_callback"],
                                              egress),
        status_callback_method=validate_method(
            status_callback_method or None, label["status_callback_method"]
        ),
        parameters=validate_custom_parameters(parameters, label["parameter"]),
    )


def parse_siprec_create(form: FormInput, egress: EgressPolicy | None = None) -> SiprecRequest:
    """``POST …/Calls/{CallSid}/Siprec.json``; *egress* as in :func:`validate_callback_url`."""
    fields = normalize_form(form)
    return build_siprec_request(
        name=_single(fields, "Name"),
        connector_name=_single(fields, "ConnectorName"),
        track=_single(fields, "Track"),
        status_callback=_single(fields, "StatusCallback"),
        status_callback_method=_single(fields, "StatusCallbackMethod"),
        parameters=_form_custom_parameters(fields),
        egress=egress,
    )


SiprecUpdateStatus = Literal["stopped", "paused", "in-progress"]
SIPREC_UPDATE_STATUSES: tuple[SiprecUpdateStatus, ...] = ("stopped", "paused", "in-progress")
"""``stopped`` is the platform's only update; ``paused`` and ``in-progress`` (pause and
resume) are mediafork's extension, in the words the Recording resource uses."""


@dataclass(frozen=True)
class SiprecUpdate:
    """``POST …/Siprec/{Sid}.json``: stop, pause or resume."""

    status: SiprecUpdateStatus = "stopped"


def parse_siprec_update(form: FormInput) -> SiprecUpdate:
    fields = normalize_form(form)
    status = _single(fields, "Status")
    words = ", ".join(SIPREC_UPDATE_STATUSES)
    if status is None:
        raise ApiError(MISSING_PARAMETER, f"Status is required: one of {words}")
    if status not in SIPREC_UPDATE_STATUSES:
        raise ApiError(INVALID_STATUS, f"Status must be one of {words}")
    return SiprecUpdate(cast(SiprecUpdateStatus, status))


# -- forked-stream budget -------------------------------------------------------------------


def forked_streams(track: Track) -> int:
    """Forked streams a Siprec uses: both_tracks takes two, a single track one."""
    if track == "both_tracks":
        return 2
    if track in ("inbound_track", "outbound_track"):
        return 1
    raise ValueError(f"unknown track {track!r}")


def streams_in_use(active_tracks: Iterable[Track]) -> int:
    return sum(forked_streams(track) for track in active_tracks)


def check_stream_budget(active_tracks: Iterable[Track], new_track: Track) -> None:
    """Raise 400 if starting *new_track* would exceed four forked streams on the call.

    *active_tracks* are the tracks of the call's in-progress Siprecs (recordings are local
    sinks and do not count).
    """
    used = streams_in_use(active_tracks)
    wanted = forked_streams(new_track)
    if used + wanted > MAX_FORKED_STREAMS:
        raise ApiError(
            TOO_MANY_STREAMS,
            f"a call allows at most {MAX_FORKED_STREAMS} forked streams: {used} in use, "
            f"{new_track} needs {wanted}",
        )


# -- Recording ------------------------------------------------------------------------------

RECORDING_CHANNELS: tuple[RecordingChannels, ...] = ("mono", "dual")
RECORDING_TRACKS: tuple[RecordingTrack, ...] = ("inbound", "outbound", "both")
TRIMS: tuple[Trim, ...] = ("trim-silence", "do-not-trim")
RECORDING_EVENTS: tuple[RecordingEvent, ...] = ("in-progress", "completed", "absent")
# The platform's own request example sends "failed" (seed 004 and the reference OpenAPI);
# no call-recording status is called that, so it is accepted and never fires.
_TOLERATED_RECORDING_EVENTS = frozenset({"failed"})


@dataclass(frozen=True)
class RecordingRequest:
    """A validated ``POST …/Calls/{CallSid}/Recordings.json``."""

    channels: RecordingChannels = "mono"
    track: RecordingTrack = "both"
    trim: Trim = "do-not-trim"
    status_callback: str | None = None
    status_callback_method: Method = DEFAULT_METHOD
    status_callback_events: frozenset[RecordingEvent] = frozenset({"completed"})

    @property
    def channel_count(self) -> int:
        return 2 if self.channels == "dual" else 1

    def __repr__(self) -> str:
        return (
            f"RecordingRequest(channels={self.channels!r}, track={self.track!r}, "
            f"trim={self.trim!r}, status_callback={'set' if self.status_callback else None}, "
            f"status_callback_method={self.status_callback_method!r}, "
            f"status_callback_events={sorted(self.status_callback_events)!r})"
        )


def _enum(value: str | None, allowed: tuple[str, ...], default: str, field: str) -> str:
    if value is None:
        return default
    if value not in allowed:
        raise ApiError(INVALID_PARAMETER, f"{field} must be one of {', '.join(allowed)}")
    return value


def _recording_events(fields: dict[str, list[str]]) -> frozenset[RecordingEvent]:
    values = fields.get("RecordingStatusCallbackEvent") or []
    words = [word for value in values for word in value.split()]
    if not words:
        return frozenset({"completed"})
    events: set[RecordingEvent] = set()
    for word in words:
        if word in RECORDING_EVENTS:
            events.add(cast(RecordingEvent, word))
        elif word not in _TOLERATED_RECORDING_EVENTS:
            raise ApiError(
                INVALID_STATUS_CALLBACK_EVENT,
                "RecordingStatusCallbackEvent must be a space-separated subset of "
                + " ".join(RECORDING_EVENTS),
            )
    return frozenset(events)


def parse_recording_create(form: FormInput, egress: EgressPolicy | None = None
                           ) -> RecordingRequest:
    """*egress*: the daemon's callback policy (None: the built-in rules only)."""
    fields = normalize_form(form)
    return RecordingRequest(
        channels=cast(
            RecordingChannels,
            _enum(_single(fields, "RecordingChannels"), RECORDING_CHANNELS, "mono",
                  "RecordingChannels"),
        ),
        track=cast(
            RecordingTrack,
            _enum(_single(fields, "RecordingTrack"), RECORDING_TRACKS, "both", "RecordingTrack"),
        ),
        trim=cast(Trim, _enum(_single(fields, "Trim"), TRIMS, "do-not-trim", "Trim")),
        status_callback=validate_callback_url(
            _single(fields, "RecordingStatusCallback"), "RecordingStatusCallback", egress
        ),
        status_callback_method=validate_method(
            _single(fields, "RecordingStatusCallbackMethod"), "RecordingStatusCallbackMethod"
        ),
        status_callback_events=_recording_events(fields),
    )


RECORDING_UPDATE_STATUSES: tuple[RecordingUpdateStatus, ...] = ("paused", "in-progress", "stopped")
PAUSE_BEHAVIORS: tuple[PauseBehavior, ...] = ("skip", "silence")


@dataclass(frozen=True)
class RecordingUpdate:
    """A validated ``POST …/Recordings/{Sid}.json``."""

    status: RecordingUpdateStatus
    pause_behavior: PauseBehavior | None = None
    """Only set when pausing; ``silence`` unless the client asked for ``skip``."""


def parse_recording_update(form: FormInput) -> RecordingUpdate:
    fields = normalize_form(form)
    status = _single(fields, "Status")
    if status is None:
        raise ApiError(
            MISSING_PARAMETER, "Status is required: one of " + ", ".join(RECORDING_UPDATE_STATUSES)
        )
    if status not in RECORDING_UPDATE_STATUSES:
        raise ApiError(
            INVALID_STATUS, "Status must be one of " + ", ".join(RECORDING_UPDATE_STATUSES)
        )
    behavior_value = _single(fields, "PauseBehavior")
    behavior = _enum(behavior_value, PAUSE_BEHAVIORS, "silence", "PauseBehavior")
    if status != "paused":
        # The platform documents PauseBehavior as applying only to pausing; elsewhere it is
        # ignored (but a malformed value is still refused above: it is a client bug).
        return RecordingUpdate(status=cast(RecordingUpdateStatus, status))
    return RecordingUpdate(status="paused", pause_behavior=cast(PauseBehavior, behavior))
