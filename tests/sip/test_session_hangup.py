"""After a crash, the next process BYEs the recorder's session from a dialog record: the
record round-trips through JSON, the BYE is in the same dialog with a higher CSeq, and bad
records are refused with a clear error."""

from __future__ import annotations

import json

import pytest

from mediafork.sip import events as ev
from mediafork.sip.dialog import build_response
from mediafork.sip.message import Request, Response
from mediafork.sip.session import HANGUP_CSEQ_GAP, RecordingSession, SessionState

from .fakesrs import Wire
from .test_session import TOKEN, config, established


def _restored(record: dict, srs) -> Wire:  # type: ignore[no-untyped-def]
    cfg = config(srs_uri=record["srs_uri"])
    return Wire(RecordingSession.for_hangup(cfg, json.loads(json.dumps(record))),
                {srs.host: srs})


def test_a_restored_session_byes_the_recorder_in_the_same_dialog() -> None:
    wire, srs = established()
    wire.session.pause(wire.now)  # an in-dialog request after the record was written
    wire.flush()
    record = wire.session.dialog_record()
    assert record is not None and record["transport"] == "udp"
    last_cseq = max(m.cseq[0] for m in wire.sent if isinstance(m, Request) and m.method != "ACK")

    restored = _restored(record, srs)
    assert restored.session.state is SessionState.ESTABLISHED
    restored.session.stop(0.0, "engine restarted")
    restored.flush()
    (bye,) = srs.requests("BYE")
    invite = srs.requests("INVITE")[0]
    assert bye.call_id == invite.call_id
    assert bye.from_.tag == invite.from_.tag and bye.to.tag == srs.to_tag
    assert bye.uri == f"sip:srs@{srs.host}:{srs.port}"  # the recorder's Contact
    assert bye.cseq[0] > last_cseq and bye.cseq[0] == last_cseq + HANGUP_CSEQ_GAP + 1
    assert bye.headers.get("X-Auth-Token") == TOKEN  # the connector's credentials go along
    assert restored.of(ev.Ended) == [ev.Ended(False, "engine restarted")]
    assert restored.session.state is SessionState.ENDED


def test_a_bye_the_recorder_does_not_know_still_ends_the_session() -> None:
    """The recorder may have dropped the session already (its own timeout): 481 ends it."""
    wire, srs = established()
    record = wire.session.dialog_record()
    assert record is not None
    restored = _restored(record, srs)
    restored.drop = lambda msg: isinstance(msg, Request) and msg.method == "BYE"
    restored.session.stop(0.0, "engine restarted")
    restored.flush()
    (bye,) = [m for m in restored.sent if isinstance(m, Request) and m.method == "BYE"]
    restored.inject(build_response(bye, 481, to_tag=srs.to_tag))
    assert restored.of(ev.Ended) == [ev.Ended(False, "engine restarted")]
    assert restored.session.state is SessionState.ENDED


def test_an_unanswered_bye_is_bounded_by_the_stop_timeout() -> None:
    wire, srs = established()
    record = wire.session.dialog_record()
    assert record is not None
    srs.silent_methods.add("BYE")
    restored = _restored(record, srs)
    restored.session.stop(0.0, "engine restarted")
    restored.flush()
    restored.advance(5.1)
    assert restored.of(ev.Ended) and restored.session.state is SessionState.ENDED
    assert all(isinstance(m, Request) and m.method == "BYE" for m in restored.sent)  # resends
    assert not any(isinstance(m, Response) for m in restored.sent)


def test_only_an_established_session_has_a_record() -> None:
    session = RecordingSession(config())
    assert session.dialog_record() is None
    wire, _ = established()
    wire.session.stop(wire.now)
    wire.flush()
    assert wire.session.dialog_record() is None


@pytest.mark.parametrize(
    "damage",
    [
        lambda r: r.update(version=99),
        lambda r: r["dialog"].pop("call_id"),
        lambda r: r["dialog"].update(extra="x"),
        lambda r: r["dialog"].update(local_seq="7"),
        lambda r: r["dialog"].update(local_seq=2**31),
        lambda r: r["dialog"].update(remote_target="not a uri"),
        lambda r: r["dialog"].update(route_set="<sip:proxy;lr>"),
        lambda r: r["dialog"].update(local_tag=""),
    ],
)
def test_bad_records_are_refused_with_a_clear_error(damage) -> None:  # type: ignore[no-untyped-def]
    wire, _ = established()
    record = json.loads(json.dumps(wire.session.dialog_record()))
    damage(record)
    with pytest.raises(ValueError, match="record"):
        RecordingSession.for_hangup(config(), record)
