"""Call events (hold, transfer, participant added/removed) as RFC 7865 partial metadata: the
sans-I/O builder, the roster's checks, and the session's one-re-INVITE-at-a-time order."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import xmlschema

from mediafork.sip import events as ev
from mediafork.sip.call_events import (
    CallEventError,
    Hold,
    ParticipantAdded,
    ParticipantRemoved,
    ParticipantReplaced,
    Roster,
    partial_metadata,
)
from mediafork.sip.message import parse_message
from mediafork.sip.metadata import make_id, parse_metadata
from mediafork.sip.session import Participant, SessionState

from .fakesrs import FakeSrs, metadata_of
from .test_session import config, established, started

SCHEMA = xmlschema.XMLSchema(str(Path(__file__).parent / "data" / "rfc7865.xsd"))
WHEN = datetime(2026, 12, 7, 19, 30, 0, tzinfo=UTC)
ALICE = Participant("sip:+15551230000@pbx.example", "Alice")
BOB = Participant("sip:+15559870000@pbx.example")
CAROL = Participant("sip:carol@example.com", "Carol <supervisor> & co")
LABELS = {"inbound": ("1",), "outbound": ("2",)}
SEED = "CA1/42"


def doc_for(event: object, roster: Roster) -> bytes | None:
    roster.check(event)  # type: ignore[arg-type]
    after = roster.apply(event)  # type: ignore[arg-type]
    return partial_metadata(
        event, roster, after, labels=LABELS, seed=SEED, sip_session_ids=["CA1"], when=WHEN  # type: ignore[arg-type]
    )


def pid(aor: str, seed: str = SEED) -> str:
    return make_id(seed, "participant", aor)


def sid(label: str, seed: str = SEED) -> str:
    return make_id(seed, "stream", label)


def test_hold_rewrites_every_participants_stream_association() -> None:
    doc = doc_for(Hold("inbound"), Roster(ALICE, BOB))
    assert doc is not None
    SCHEMA.validate(doc.decode())
    meta = parse_metadata(doc)
    assert meta.datamode == "partial" and meta.sip_session_ids == ["CA1"]
    alice, bob = meta.participants[pid(ALICE.aor)], meta.participants[pid(BOB.aor)]
    # The inbound track (Alice's voice) carries nobody: Alice sends nothing, Bob hears nothing.
    assert (alice.send, alice.recv) == ([], [sid("2")])
    assert (bob.send, bob.recv) == ([sid("2")], [])
    assert alice.aors == [] and meta.disassociated == []  # no nameID, no session change


def test_unhold_restores_the_associations_and_a_repeat_sends_nothing() -> None:
    held = Roster(ALICE, BOB).apply(Hold("outbound"))
    assert doc_for(Hold("outbound"), held) is None  # already held: nothing to tell
    doc = doc_for(Hold("outbound", held=False), held)
    assert doc is not None
    SCHEMA.validate(doc.decode())
    alice = parse_metadata(doc).participants[pid(ALICE.aor)]
    assert (alice.send, alice.recv) == ([sid("1")], [sid("2")])
    assert doc_for(Hold("inbound", held=False), Roster(ALICE, BOB)) is None


def test_transfer_disassociates_the_old_party_and_associates_the_new_one() -> None:
    doc = doc_for(ParticipantReplaced("outbound", CAROL), Roster(ALICE, BOB))
    assert doc is not None
    SCHEMA.validate(doc.decode())
    meta = parse_metadata(doc)
    carol = meta.participants[pid(CAROL.aor)]
    assert carol.aors == [CAROL.aor] and carol.names == [CAROL.name]
    assert (carol.send, carol.recv) == ([sid("2")], [sid("1")])
    assert meta.disassociated == [pid(BOB.aor)]
    assert b"<supervisor>" not in doc  # escaped by the serializer
    text = doc.decode()
    # Order inside the document: the old party leaves before the new one joins.
    assert text.index("disassociate-time") < text.index("<associate-time")


def test_new_display_name_for_the_same_party_is_a_nameid_only() -> None:
    doc = doc_for(ParticipantReplaced("inbound", Participant(ALICE.aor, "Alice B")),
                  Roster(ALICE, BOB))
    assert doc is not None
    SCHEMA.validate(doc.decode())
    meta = parse_metadata(doc)
    assert meta.participants[pid(ALICE.aor)].names == ["Alice B"]
    assert b"participantsessionassoc" not in doc
    assert doc_for(ParticipantReplaced("inbound", ALICE), Roster(ALICE, BOB)) is None


def test_added_participant_is_associated_and_hears_the_other_track() -> None:
    roster = Roster(ALICE, BOB).apply(Hold("outbound"))
    doc = doc_for(ParticipantAdded("inbound", CAROL), roster)
    assert doc is not None
    SCHEMA.validate(doc.decode())
    meta = parse_metadata(doc)
    carol = meta.participants[pid(CAROL.aor)]
    assert (carol.send, carol.recv) == ([sid("1")], [])  # outbound is on hold
    assert b"<associate-time>" in doc and meta.disassociated == []
    after = roster.apply(ParticipantAdded("inbound", CAROL))
    removed = doc_for(ParticipantRemoved(CAROL.aor), after)
    assert removed is not None
    SCHEMA.validate(removed.decode())
    assert parse_metadata(removed).disassociated == [pid(CAROL.aor)]


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (ParticipantAdded("inbound", BOB), "already in the call"),
        (ParticipantReplaced("inbound", BOB), "already in the call"),
        (ParticipantRemoved(ALICE.aor), "is a side of the call"),
        (ParticipantRemoved("sip:nobody@example.com"), "not an added participant"),
    ],
)
def test_events_that_do_not_fit_the_call_are_refused(event: object, message: str) -> None:
    roster = Roster(ALICE, BOB)
    with pytest.raises(CallEventError, match=message):
        roster.check(event)  # type: ignore[arg-type]


# --- the session: one re-INVITE at a time, in order ----------------------------------------


def event_docs(srs: object, skip: int) -> list[bytes]:
    docs = []
    for invite in srs.requests("INVITE")[skip:]:  # type: ignore[attr-defined]
        ctype, doc = metadata_of(invite)
        SCHEMA.validate(doc.decode())
        docs.append(doc)
    return docs


def test_session_sends_events_one_reinvite_at_a_time_in_order() -> None:
    wire, srs = established(reinvite_script=[None])  # the first re-INVITE stays unanswered
    s = wire.session
    assert s.call_event(wire.now, Hold("inbound")) is True
    assert s.call_event(wire.now, ParticipantReplaced("outbound", CAROL)) is True
    assert s.call_event(wire.now, Hold("inbound", held=False)) is True
    wire.flush()
    assert len(srs.requests("INVITE")) == 2  # initial + the pending hold; the rest wait
    pending = srs.pending_invite
    assert pending is not None
    for reply in srs._answer(pending, 200):
        wire.session.handle_message(parse_message(reply.to_bytes()), wire.now)
    wire.flush()
    docs = event_docs(srs, 1)
    assert len(docs) == 3
    metas = [parse_metadata(d) for d in docs]
    seed = s._seed
    assert metas[0].participants[pid(BOB.aor, seed)].recv == []  # hold
    assert metas[1].disassociated == [pid(BOB.aor, seed)]  # transfer
    # Unhold: Carol, not Bob, hears the inbound track now.
    carol = metas[2].participants[pid(CAROL.aor, seed)]
    assert carol.recv == [sid("1", seed)] and pid(BOB.aor, seed) not in metas[2].participants
    assert s.state is SessionState.ESTABLISHED


def test_session_retries_an_event_after_491_and_keeps_the_order() -> None:
    wire, srs = established(reinvite_script=[491])
    s = wire.session
    s.call_event(wire.now, Hold("outbound"))
    s.call_event(wire.now, ParticipantAdded("inbound", CAROL))
    wire.flush()
    assert len(srs.requests("INVITE")) == 2  # the 491'd hold; the add waits for the retry
    wire.advance(wire.now + 5.0)
    docs = event_docs(srs, 1)
    assert len(docs) == 3
    assert docs[0] == docs[1]  # the same document again after the back-off
    assert parse_metadata(docs[2]).participants[pid(CAROL.aor, s._seed)].names == [CAROL.name]
    assert wire.of(ev.UpdateRejected) == []


def test_rejected_event_is_reported_and_the_next_one_still_goes() -> None:
    wire, srs = established(reinvite_script=[488])
    s = wire.session
    s.call_event(wire.now, Hold("outbound"))
    s.call_event(wire.now, Hold("outbound", held=False))
    wire.flush()
    assert len(event_docs(srs, 1)) == 2
    assert [e.purpose for e in wire.of(ev.UpdateRejected)] == ["event"]
    assert s.state is SessionState.ESTABLISHED


def test_invalid_event_changes_nothing_and_sends_nothing() -> None:
    wire, srs = established()
    with pytest.raises(CallEventError):
        wire.session.call_event(wire.now, ParticipantRemoved("sip:ghost@example.com"))
    wire.flush()
    assert len(srs.requests("INVITE")) == 1


def test_complete_metadata_after_events_reflects_the_roster() -> None:
    wire, srs = established()
    s = wire.session
    s.call_event(wire.now, ParticipantAdded("outbound", CAROL))
    s.call_event(wire.now, Hold("inbound"))
    wire.flush()
    doc = s._metadata("complete")
    SCHEMA.validate(doc.decode())
    meta = parse_metadata(doc)
    carol = meta.participants[make_id(s._seed, "participant", CAROL.aor)]
    assert carol.aors == [CAROL.aor] and carol.recv == []  # inbound held


def test_event_reported_while_inviting_is_sent_once_established() -> None:
    srs = FakeSrs("198.51.100.7", invite_script=[None])  # no answer yet
    wire = started(config(), a=srs)
    assert wire.session.state is SessionState.INVITING
    assert wire.session.call_event(wire.now, Hold("outbound")) is True
    wire.flush()
    assert len(srs.requests("INVITE")) == 1
    pending = srs.pending_invite
    assert pending is not None
    for reply in srs._answer(pending, 200):
        wire.session.handle_message(parse_message(reply.to_bytes()), wire.now)
    wire.flush()
    assert wire.session.state is SessionState.ESTABLISHED
    (doc,) = event_docs(srs, 1)
    meta = parse_metadata(doc)
    seed = wire.session._seed
    assert meta.datamode == "partial"
    assert meta.participants[pid(ALICE.aor, seed)].recv == []  # outbound held
