"""RFC 7865 recording metadata: build (SRC side) and parse (reference SRS and tests).

Documents are built with ``xml.etree`` so every value from a call (display names, AoRs, custom
parameters) is escaped by the serializer, never by string concatenation. Parsing uses
``defusedxml`` because the input comes from the network.
"""

from __future__ import annotations

import base64
import hashlib
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from .errors import SipParseError

NS = "urn:ietf:params:xml:ns:recording:1"
"""RFC 7865 namespace."""
EXT_NS = "urn:mediafork:params:xml:ns:siprec-parameters"
"""Namespace of mediafork's extension data (custom Siprec parameters)."""
CONTENT_TYPE = "application/rs-metadata+xml"
LEGACY_CONTENT_TYPE = "application/rs-metadata"
REQUEST_CONTENT_TYPE = "application/rs-metadata-request"
MAX_METADATA_SIZE = 32768

ET.register_namespace("", NS)
ET.register_namespace("mf", EXT_NS)


def make_id(seed: str, *parts: str) -> str:
    """A stable base64 identifier (16 octets, like RFC 7865's UUID examples) derived from parts.

    Stable identifiers let a ``partial`` document refer to what an earlier ``complete`` one
    introduced without the session keeping a table of random IDs.
    """
    digest = hashlib.sha256("\x00".join((seed, *parts)).encode("utf-8")).digest()[:16]
    return base64.b64encode(digest).decode("ascii")


@dataclass(frozen=True)
class MetaParticipant:
    """A participant of the recorded call."""

    aor: str
    name: str | None = None
    send: tuple[str, ...] = ()
    """Labels of the streams this participant sends."""
    recv: tuple[str, ...] = ()
    """Labels of the streams this participant receives."""


@dataclass(frozen=True)
class MetaStream:
    """A recorded stream: its SDP label."""

    label: str


_XML_BAD = dict.fromkeys(c for c in range(0x20) if c not in (0x09, 0x0A, 0x0D))


def _clean(text: str) -> str:
    """Drop characters XML 1.0 cannot carry (control characters from untrusted call data)."""
    return text.translate(_XML_BAD).replace("\ufffe", "").replace("\uffff", "")


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def build_metadata(
    *,
    seed: str,
    datamode: str,
    sip_session_ids: list[str],
    participants: list[MetaParticipant],
    streams: list[MetaStream],
    associate_time: datetime,
    custom: dict[str, str] | None = None,
    removed_participants: list[str] | None = None,
    group_name: str | None = None,
    extensions: tuple[str, ...] = (),
) -> bytes:
    """Build a metadata document.

    ``seed`` makes all identifiers stable for one recording session. In a ``partial`` document
    only the given participants are (re)described, and ``removed_participants`` (AoRs) get a
    ``disassociate-time``. ``group_name`` goes into ``<group>`` as ``<mf:group-name>``;
    ``extensions`` (well-formed elements outside RFC 7865's namespace, checked when the
    connector profile was loaded: mediafork.sip.profile) are appended to ``<recording>``,
    where the schema admits ``##other`` elements after the associations.
    """
    if datamode not in ("complete", "partial"):
        raise ValueError("datamode must be 'complete' or 'partial'")
    stamp = _iso(associate_time)
    q = f"{{{NS}}}"
    root = ET.Element(q + "recording")
    ET.SubElement(root, q + "datamode").text = datamode
    group_id = make_id(seed, "group")
    session_id = make_id(seed, "session")
    group = ET.SubElement(root, q + "group", {"group_id": group_id})
    ET.SubElement(group, q + "associate-time").text = stamp
    if group_name:
        ET.SubElement(group, f"{{{EXT_NS}}}group-name").text = _clean(group_name)
    session = ET.SubElement(root, q + "session", {"session_id": session_id})
    for sid in sip_session_ids:
        ET.SubElement(session, q + "sipSessionID").text = _clean(sid)
    # The session's group is a <group-ref> child after the sipSessionIDs (RFC 7865 §6.2
    # and its examples), not an attribute: a schema-validating SRS refuses a stray one.
    ET.SubElement(session, q + "group-ref").text = group_id
    if datamode == "complete":
        ET.SubElement(session, q + "start-time").text = stamp
    if custom:
        params = ET.SubElement(session, f"{{{EXT_NS}}}parameters")
        for key, value in custom.items():
            ET.SubElement(params, f"{{{EXT_NS}}}parameter", {"name": _clean(key)}).text = _clean(
                value
            )
    for p in participants:
        elem = ET.SubElement(
            root, q + "participant", {"participant_id": make_id(seed, "participant", p.aor)}
        )
        name_id = ET.SubElement(elem, q + "nameID", {"aor": _clean(p.aor)})
        if p.name:
            ET.SubElement(name_id, q + "name").text = _clean(p.name)
    if datamode == "complete":
        for s in streams:
            elem = ET.SubElement(
                root,
                q + "stream",
                {"stream_id": make_id(seed, "stream", s.label), "session_id": session_id},
            )
            ET.SubElement(elem, q + "label").text = _clean(s.label)
        assoc = ET.SubElement(root, q + "sessionrecordingassoc", {"session_id": session_id})
        ET.SubElement(assoc, q + "associate-time").text = stamp
    for p in participants:
        pid = make_id(seed, "participant", p.aor)
        assoc = ET.SubElement(
            root, q + "participantsessionassoc", {"participant_id": pid, "session_id": session_id}
        )
        ET.SubElement(assoc, q + "associate-time").text = stamp
    for aor in removed_participants or []:
        pid = make_id(seed, "participant", aor)
        assoc = ET.SubElement(
            root, q + "participantsessionassoc", {"participant_id": pid, "session_id": session_id}
        )
        ET.SubElement(assoc, q + "disassociate-time").text = stamp
    for p in participants:
        elem = ET.SubElement(
            root,
            q + "participantstreamassoc",
            {"participant_id": make_id(seed, "participant", p.aor)},
        )
        for label in p.send:
            ET.SubElement(elem, q + "send").text = make_id(seed, "stream", label)
        for label in p.recv:
            ET.SubElement(elem, q + "recv").text = make_id(seed, "stream", label)
    for text in extensions:
        root.append(SafeET.fromstring(text))
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def build_partial_update(
    *,
    seed: str,
    sip_session_ids: list[str],
    when: datetime,
    described: Sequence[MetaParticipant] = (),
    associated: Sequence[str] = (),
    disassociated: Sequence[str] = (),
    stream_assocs: Sequence[MetaParticipant] = (),
) -> bytes:
    """A ``partial`` document for one call event (RFC 7865 §6: only what changed).

    ``described`` participants get a ``<participant>`` with their ``<nameID>`` (new ones, or a
    new name for a known AoR); ``associated`` / ``disassociated`` AoRs get a
    ``participantsessionassoc`` with an ``associate-time`` / ``disassociate-time``;
    ``stream_assocs`` participants get a ``participantstreamassoc`` listing every stream they
    now send and receive (an empty one: they send and receive nothing, e.g. both tracks held).
    Identifiers come from ``seed`` exactly as in :func:`build_metadata`, so they match the
    session's complete document. The group and session elements are repeated (no
    associate-time, no start-time) so that an SRS can tie the update to its session.
    """
    stamp = _iso(when)
    q = f"{{{NS}}}"
    root = ET.Element(q + "recording")
    ET.SubElement(root, q + "datamode").text = "partial"
    group_id = make_id(seed, "group")
    session_id = make_id(seed, "session")
    ET.SubElement(root, q + "group", {"group_id": group_id})
    session = ET.SubElement(root, q + "session", {"session_id": session_id})
    for sid in sip_session_ids:
        ET.SubElement(session, q + "sipSessionID").text = _clean(sid)
    ET.SubElement(session, q + "group-ref").text = group_id
    for p in described:
        elem = ET.SubElement(
            root, q + "participant", {"participant_id": make_id(seed, "participant", p.aor)}
        )
        name_id = ET.SubElement(elem, q + "nameID", {"aor": _clean(p.aor)})
        if p.name:
            ET.SubElement(name_id, q + "name").text = _clean(p.name)
    # Disassociations first: a transfer reads "the old party left, then the new one joined".
    for tag, aors in (("disassociate-time", disassociated), ("associate-time", associated)):
        for aor in aors:
            assoc = ET.SubElement(
                root,
                q + "participantsessionassoc",
                {"participant_id": make_id(seed, "participant", aor), "session_id": session_id},
            )
            ET.SubElement(assoc, q + tag).text = stamp
    for p in stream_assocs:
        elem = ET.SubElement(
            root, q + "participantstreamassoc",
            {"participant_id": make_id(seed, "participant", p.aor)},
        )
        for label in p.send:
            ET.SubElement(elem, q + "send").text = make_id(seed, "stream", label)
        for label in p.recv:
            ET.SubElement(elem, q + "recv").text = make_id(seed, "stream", label)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


# --- parsing ----------------------------------------------------------------------------------


@dataclass
class ParsedParticipant:
    """A participant as read from a document."""

    participant_id: str
    aors: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    send: list[str] = field(default_factory=list)
    """stream_ids sent by the participant."""
    recv: list[str] = field(default_factory=list)
    """stream_ids received by the participant."""
    has_streams: bool = False
    """The document has a participantstreamassoc for it (empty lists then mean "none now")."""


@dataclass
class ParsedMetadata:
    """The parts of a metadata document the reference recorder and tests look at."""

    datamode: str | None
    session_ids: list[str] = field(default_factory=list)
    sip_session_ids: list[str] = field(default_factory=list)
    participants: dict[str, ParsedParticipant] = field(default_factory=dict)
    streams: dict[str, str] = field(default_factory=dict)
    """stream_id -> label."""
    stream_sessions: dict[str, str] = field(default_factory=dict)
    """stream_id -> session_id."""
    custom: dict[str, str] = field(default_factory=dict)
    associate_times: list[str] = field(default_factory=list)
    disassociated: list[str] = field(default_factory=list)
    """participant_ids with a disassociate-time."""
    associated: list[str] = field(default_factory=list)
    """participant_ids with an associate-time in a participantsessionassoc."""

    def label_of(self, stream_id: str) -> str | None:
        """The SDP label of a stream_id."""
        return self.streams.get(stream_id)


def parse_metadata(data: bytes) -> ParsedMetadata:
    """Parse an untrusted metadata document; raise SipParseError if it is not one."""
    if len(data) > MAX_METADATA_SIZE:
        raise SipParseError("metadata document too large")
    try:
        root = SafeET.fromstring(data)
    except (ET.ParseError, DefusedXmlException, ValueError, LookupError) as exc:
        raise SipParseError(f"metadata is not well-formed XML: {type(exc).__name__}") from exc
    q = f"{{{NS}}}"
    if root.tag != q + "recording":
        raise SipParseError("metadata root element is not <recording> in the RFC 7865 namespace")
    mode = root.findtext(q + "datamode")
    out = ParsedMetadata(mode.strip() if mode else None)
    for session in root.findall(q + "session"):
        out.session_ids.append(_attr(session, "session_id"))
        out.sip_session_ids += [(e.text or "").strip() for e in session.findall(q + "sipSessionID")]
        for param in session.iter(f"{{{EXT_NS}}}parameter"):
            out.custom[param.get("name", "")] = param.text or ""
    for elem in root.findall(q + "participant"):
        pid = _attr(elem, "participant_id")
        part = out.participants.setdefault(pid, ParsedParticipant(pid))
        for name_id in elem.findall(q + "nameID"):
            part.aors.append(_attr(name_id, "aor"))
            part.names += [n.text or "" for n in name_id.findall(q + "name")]
    for elem in root.findall(q + "stream"):
        sid = _attr(elem, "stream_id")
        out.streams[sid] = (elem.findtext(q + "label") or "").strip()
        out.stream_sessions[sid] = _attr(elem, "session_id")
    for elem in root.findall(q + "participantsessionassoc"):
        pid = _attr(elem, "participant_id")
        if elem.find(q + "disassociate-time") is not None:
            out.disassociated.append(pid)
        elif elem.find(q + "associate-time") is not None:
            out.associated.append(pid)
    for elem in root.iter(q + "associate-time"):
        out.associate_times.append((elem.text or "").strip())
    for elem in root.findall(q + "participantstreamassoc"):
        pid = _attr(elem, "participant_id")
        part = out.participants.setdefault(pid, ParsedParticipant(pid))
        part.has_streams = True
        part.send += [(e.text or "").strip() for e in elem.findall(q + "send")]
        part.recv += [(e.text or "").strip() for e in elem.findall(q + "recv")]
    return out


def _attr(elem: ET.Element, name: str) -> str:
    value = elem.get(name)
    if value is None:
        raise SipParseError(f"<{elem.tag.split('}')[-1]}> lacks the {name} attribute")
    return value
