"""RFC 7865 metadata: generated documents validate against the RFC's XML schema."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import xmlschema

from mediafork.sip.errors import SipParseError
from mediafork.sip.metadata import (
    EXT_NS,
    MetaParticipant,
    MetaStream,
    build_metadata,
    make_id,
    parse_metadata,
)

SCHEMA = xmlschema.XMLSchema(str(Path(__file__).parent / "data" / "rfc7865.xsd"))
WHEN = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def complete(**overrides: object) -> bytes:
    args: dict[str, object] = {
        "seed": "CA123",
        "datamode": "complete",
        "sip_session_ids": ["CA123"],
        "participants": [
            MetaParticipant("sip:+1555@pbx.example", 'Alice <& "Co">', ("1",), ("2",)),
            MetaParticipant("sip:+1666@pbx.example", None, ("2",), ("1",)),
        ],
        "streams": [MetaStream("1"), MetaStream("2")],
        "associate_time": WHEN,
        "custom": {"agent": "<b>&amp;", "queue": "sales\x00"},
    }
    args.update(overrides)
    return build_metadata(**args)  # type: ignore[arg-type]


def test_complete_document_validates_and_round_trips() -> None:
    doc = complete()
    SCHEMA.validate(doc.decode())
    parsed = parse_metadata(doc)
    assert parsed.datamode == "complete"
    assert parsed.sip_session_ids == ["CA123"]
    assert sorted(parsed.streams.values()) == ["1", "2"]
    alice = parsed.participants[make_id("CA123", "participant", "sip:+1555@pbx.example")]
    assert alice.aors == ["sip:+1555@pbx.example"] and alice.names == ['Alice <& "Co">']
    assert [parsed.label_of(s) for s in alice.send] == ["1"]
    assert [parsed.label_of(s) for s in alice.recv] == ["2"]
    assert parsed.custom == {"agent": "<b>&amp;", "queue": "sales"}
    assert "2026-01-02T03:04:05.678Z" in parsed.associate_times
    assert f'xmlns:mf="{EXT_NS}"'.encode() in doc
    assert b"<b>" not in doc  # escaped, never concatenated


def test_partial_document_validates_and_keeps_identifiers() -> None:
    doc = complete(
        datamode="partial",
        participants=[MetaParticipant("sip:+1777@pbx.example", "Carol", ("2",), ("1",))],
        removed_participants=["sip:+1666@pbx.example"],
    )
    SCHEMA.validate(doc.decode())
    parsed = parse_metadata(doc)
    assert parsed.datamode == "partial"
    assert parsed.disassociated == [make_id("CA123", "participant", "sip:+1666@pbx.example")]
    carol = parsed.participants[make_id("CA123", "participant", "sip:+1777@pbx.example")]
    assert carol.send == [make_id("CA123", "stream", "2")]
    assert parsed.session_ids == parse_metadata(complete()).session_ids


def test_the_session_names_its_group_with_a_group_ref_element() -> None:
    """RFC 7865's own example: <group-ref> is a child of <session> after <sipSessionID>.
    A group_ref attribute (what this code once sent) is not in the schema."""
    doc = complete()
    parsed = SCHEMA.to_dict(doc.decode())
    group_id = make_id("CA123", "group")
    assert parsed["session"][0]["group-ref"] == [group_id]
    assert b"group_ref" not in doc
    stray = doc.replace(b'<session session_id="', f'<session group_ref="{group_id}" session_id="'.encode())
    with pytest.raises(xmlschema.XMLSchemaValidationError):
        SCHEMA.validate(stray.decode())


def test_schema_rejects_a_broken_document() -> None:
    # The test would be worthless if the schema accepted anything.
    bad = complete().replace(b"<datamode>complete</datamode>", b"<datamode>sometimes</datamode>")
    with pytest.raises(xmlschema.XMLSchemaValidationError):
        SCHEMA.validate(bad.decode())


@pytest.mark.parametrize(
    "data",
    [
        b"<recording",
        b"<other xmlns='urn:ietf:params:xml:ns:recording:1'/>",
        b"<!DOCTYPE r [<!ENTITY a 'aaaa'><!ENTITY b '&a;&a;'>]><recording xmlns='urn:ietf:params:xml:ns:recording:1'>&b;</recording>",
        b"<recording xmlns='urn:ietf:params:xml:ns:recording:1'><stream/></recording>",
        # an unknown encoding makes expat raise LookupError, not ParseError
        b"<?xml version='1.0' encoding='utfn8'?><recording/>",
    ],
)
def test_untrusted_metadata_raises_parse_error(data: bytes) -> None:
    with pytest.raises(SipParseError):
        parse_metadata(data)
