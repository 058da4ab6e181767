"""TwiML for a live call: ``<Start><Siprec>`` and ``<Stop><Siprec>``, parsed all-or-nothing.

:func:`parse_twiml` turns a document into an ordered :class:`TwimlProgram` or raises
:class:`ApiError`; it never returns half a program, so the caller can validate the whole
document before applying anything. :func:`check_program` then replays the program against
the call's live Siprecs (names, stop targets, the four-stream budget) without side effects,
so that "nothing partially applied" holds for rules that need state too.

Parsing uses defusedxml, which refuses DTDs, entity declarations and external references:
the document comes from API clients and the classic XML bombs must fail cleanly.

Other verbs at ``<Response>`` level (``<Pause>``, ``<Say>``, ``<Dial>``…). The platform's
docs tell users to follow ``<Start><Siprec>`` with another instruction so that the call is not
hung up, so real applications send e.g. ``<Start>…</Start><Pause length="3600"/>``. The call
itself belongs to the host (mediafork only forks its media), so these verbs are accepted,
not executed, and reported in :attr:`TwimlProgram.ignored` for the caller to log or return.
Unknown element names are refused: a misspelt ``<start>`` silently ignored would mean a
call that is silently not recorded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from .egress import EgressPolicy
from .errors import (
    DOCUMENT_PARSE_FAILURE,
    DUPLICATE_NAME,
    NOT_FOUND,
    ROOT_NOT_RESPONSE,
    TWIML_SCHEMA,
    TWIML_TOO_LARGE,
    ApiError,
)
from .forms import (
    MAX_FORKED_STREAMS,
    SiprecRequest,
    Track,
    build_siprec_request,
    check_stream_budget,
    validate_siprec_name,
)

MAX_TWIML_LENGTH = 4000  # characters, as on the platform (error 32018)

# Voice verbs of the platform that mediafork accepts and does not execute.
IGNORED_VERBS = frozenset(
    {
        "Connect",
        "Dial",
        "Echo",
        "Enqueue",
        "Gather",
        "Hangup",
        "Leave",
        "Pause",
        "Pay",
        "Play",
        "Prompt",
        "Queue",
        "Record",
        "Redirect",
        "Refer",
        "Reject",
        "Say",
        "Sms",
    }
)

_START_SIPREC_ATTRIBUTES = {
    "name": "name",
    "connectorName": "connector_name",
    "track": "track",
    "statusCallback": "status_callback",
    "statusCallbackMethod": "status_callback_method",
}
_LABELS = {python: xml for xml, python in _START_SIPREC_ATTRIBUTES.items()}
_LABELS["parameter"] = "<Parameter>"


@dataclass(frozen=True)
class StartSiprec:
    """``<Start><Siprec …/></Start>``: start a Siprec with this validated request."""

    request: SiprecRequest


@dataclass(frozen=True)
class StopSiprec:
    """``<Stop><Siprec name="…"/></Stop>``: stop the call's Siprec with this name."""

    name: str


TwimlAction = StartSiprec | StopSiprec


@dataclass(frozen=True)
class TwimlProgram:
    actions: tuple[TwimlAction, ...]
    """Siprec actions in document order."""
    ignored: tuple[str, ...] = field(default=())
    """Names of Response-level verbs accepted but not executed, in document order."""


def _schema(message: str) -> ApiError:
    return ApiError(TWIML_SCHEMA, message)


def _no_text(element: Element, where: str) -> None:
    """Only whitespace may appear as text inside the elements we interpret."""
    if element.text and element.text.strip():
        raise _schema(f"{where} must not contain text")
    for child in element:
        if child.tail and child.tail.strip():
            raise _schema(f"{where} must not contain text")


def _check_attributes(element: Element, allowed: Iterable[str], where: str) -> None:
    allowed_set = set(allowed)
    for attribute in element.attrib:
        if attribute not in allowed_set:
            raise _schema(
                f"{where} has unknown attribute {attribute!r}; allowed: "
                + ", ".join(sorted(allowed_set))
            )


def _parse_parameters(siprec: Element) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for child in siprec:
        if child.tag != "Parameter":
            raise _schema(f"<Siprec> may only contain <Parameter>, not <{child.tag}>")
        _check_attributes(child, ("name", "value"), "<Parameter>")
        if len(child):
            raise _schema("<Parameter> must be empty")
        _no_text(child, "<Parameter>")
        if "name" not in child.attrib:
            raise _schema("<Parameter> needs a name attribute")
        if "value" not in child.attrib:
            raise _schema("<Parameter> needs a value attribute")
        pairs.append((child.attrib["name"], child.attrib["value"]))
    return pairs


def _parse_start(start: Element, egress: EgressPolicy | None) -> list[TwimlAction]:
    _check_attributes(start, (), "<Start>")
    _no_text(start, "<Start>")
    actions: list[TwimlAction] = []
    for child in start:
        if child.tag != "Siprec":
            raise _schema(f"<Start> may only contain <Siprec> in mediafork, not <{child.tag}>")
        _check_attributes(child, _START_SIPREC_ATTRIBUTES, "<Siprec>")
        _no_text(child, "<Siprec>")
        values: dict[str, Any] = {
            python: child.attrib.get(xml) for xml, python in _START_SIPREC_ATTRIBUTES.items()
        }
        request = build_siprec_request(
            **values, parameters=_parse_parameters(child), labels=_LABELS, egress=egress
        )
        actions.append(StartSiprec(request))
    return actions


def _parse_stop(stop: Element) -> list[TwimlAction]:
    _check_attributes(stop, (), "<Stop>")
    _no_text(stop, "<Stop>")
    actions: list[TwimlAction] = []
    for child in stop:
        if child.tag != "Siprec":
            raise _schema(f"<Stop> may only contain <Siprec> in mediafork, not <{child.tag}>")
        _check_attributes(child, ("name",), "<Stop><Siprec>")
        if len(child):
            raise _schema("<Stop><Siprec> must be empty")
        _no_text(child, "<Stop><Siprec>")
        name = validate_siprec_name(child.attrib.get("name") or None, "name")
        if name is None:
            raise _schema("<Stop><Siprec> needs the name of the Siprec to stop")
        actions.append(StopSiprec(name))
    return actions


def parse_twiml(document: str, egress: EgressPolicy | None = None) -> TwimlProgram:
    """Parse and validate a whole document; raise ApiError (400) on the first problem.
    *egress*: the policy every ``statusCallback`` must pass (None: the built-in rules)."""
    if not isinstance(document, str):
        raise TypeError("parse_twiml takes the document as str")
    if len(document) > MAX_TWIML_LENGTH:
        raise ApiError(
            TWIML_TOO_LARGE,
            f"Twiml must be at most {MAX_TWIML_LENGTH} characters, got {len(document)}",
        )
    try:
        root = SafeET.fromstring(
            document, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
    except DefusedXmlException:
        raise ApiError(
            DOCUMENT_PARSE_FAILURE, "Twiml must not contain a DTD, entities or external references"
        ) from None
    except ParseError as exc:
        # ParseError's message is "reason: line L, column C": position, never content.
        raise ApiError(DOCUMENT_PARSE_FAILURE, f"Twiml is not well-formed XML ({exc})") from None
    except ValueError:
        # e.g. an XML declaration naming an encoding the str contradicts
        raise ApiError(DOCUMENT_PARSE_FAILURE, "Twiml is not well-formed XML") from None
    if root.tag != "Response":
        raise ApiError(ROOT_NOT_RESPONSE, "the root element of Twiml must be <Response>")
    _check_attributes(root, (), "<Response>")
    _no_text(root, "<Response>")

    actions: list[TwimlAction] = []
    ignored: list[str] = []
    for verb in root:
        if verb.tag == "Start":
            actions.extend(_parse_start(verb, egress))
        elif verb.tag == "Stop":
            actions.extend(_parse_stop(verb))
        elif isinstance(verb.tag, str) and verb.tag in IGNORED_VERBS:
            ignored.append(verb.tag)
        else:
            raise _schema(f"unknown verb <{verb.tag}> in <Response>")
    return TwimlProgram(actions=tuple(actions), ignored=tuple(ignored))


@dataclass(frozen=True)
class ActiveSiprec:
    """What :func:`check_program` needs to know about a Siprec already on the call."""

    name: str | None
    track: Track
    in_progress: bool


def check_program(program: TwimlProgram, existing: Iterable[ActiveSiprec]) -> None:
    """Replay *program* against the call's Siprecs and raise on the first broken rule.

    Pure: nothing is started or stopped. Rules, in document order: a started name must not
    be used on the call already (names stay reserved after a Siprec stops, so that stop and
    fetch by name are never ambiguous); a stopped name must exist on the call (stopping an
    already stopped Siprec is fine: idempotent, as in the REST API); the in-progress Siprecs
    never use more than four forked streams, a Stop earlier in the document freeing streams
    for a Start after it.
    """
    names: dict[str, ActiveSiprec] = {}
    unnamed: list[ActiveSiprec] = []
    for siprec in existing:
        if siprec.name is None:
            unnamed.append(siprec)
        else:
            names[siprec.name] = siprec
    for action in program.actions:
        live_tracks = [s.track for s in (*names.values(), *unnamed) if s.in_progress]
        if isinstance(action, StartSiprec):
            request = action.request
            if request.name is not None and request.name in names:
                raise ApiError(
                    DUPLICATE_NAME, f"a Siprec named {request.name!r} already exists on this call"
                )
            check_stream_budget(live_tracks, request.track)
            entry = ActiveSiprec(request.name, request.track, True)
            if request.name is None:
                unnamed.append(entry)
            else:
                names[request.name] = entry
        else:
            target = names.get(action.name)
            if target is None:
                raise ApiError(
                    NOT_FOUND, f"no Siprec named {action.name!r} on this call", status=404
                )
            names[action.name] = ActiveSiprec(target.name, target.track, False)


__all__ = [
    "IGNORED_VERBS",
    "MAX_FORKED_STREAMS",
    "MAX_TWIML_LENGTH",
    "ActiveSiprec",
    "StartSiprec",
    "StopSiprec",
    "TwimlAction",
    "TwimlProgram",
    "check_program",
    "parse_twiml",
]
