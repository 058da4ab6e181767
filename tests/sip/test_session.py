"""RecordingSession against in-memory fake SRSes (tests/sip/fakesrs.py), with a fake clock."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import xmlschema

from mediafork.sip import events as ev
from mediafork.sip.digest import DigestVerifier
from mediafork.sip.message import Request, Response
from mediafork.sip.metadata import CONTENT_TYPE, LEGACY_CONTENT_TYPE, parse_metadata
from mediafork.sip.sdp import SUITE_32, SUITE_80, Codec
from mediafork.sip.session import (
    ForkedStream,
    Participant,
    RecordingSession,
    SessionConfig,
    SessionState,
)
from mediafork.sip.transaction import TimerConfig

from .fakesrs import FakeSrs, Wire, metadata_of, offer_of

SCHEMA = xmlschema.XMLSchema(str(Path(__file__).parent / "data" / "rfc7865.xsd"))
PCMU = Codec("PCMU", 0, 8000)
KEY_80 = b"K" * 30
KEY_32 = b"k" * 30
TOKEN = "tok-3f9a-secret"
PASSWORD = "digest-pw-secret"


def config(**overrides: object) -> SessionConfig:
    base: dict[str, object] = {
        "srs_uri": "sip:rec@198.51.100.7:5060",
        "local_address": "192.0.2.10",
        "local_port": 5080,
        "streams": (
            ForkedStream("1", "inbound", 30000, PCMU, KEY_80, KEY_32),
            ForkedStream("2", "outbound", 30002, PCMU, KEY_80, KEY_32),
        ),
        "call_id": "CA0123456789abcdef",
        "caller": Participant("sip:+15551230000@pbx.example", "Alice"),
        "callee": Participant("sip:+15559870000@pbx.example"),
        "standby_uris": (),
        "credentials_header": "X-Auth-Token",
        "credentials_value": TOKEN,
        "custom_parameters": (("agent", "Bob & <Co>"),),
        "timers": TimerConfig(t1=0.5, t2=4.0, t4=5.0),
        "session_expires": None,
    }
    base.update(overrides)
    return SessionConfig(**base)  # type: ignore[arg-type]


def started(cfg: SessionConfig | None = None, **srses: FakeSrs) -> Wire:
    srs_map = {srs.host: srs for srs in srses.values()} or {"198.51.100.7": FakeSrs("198.51.100.7")}
    wire = Wire(RecordingSession(cfg or config()), srs_map)
    wire.session.start(0.0)
    wire.flush()
    return wire


def established(**kwargs: object) -> tuple[Wire, FakeSrs]:
    srs = FakeSrs("198.51.100.7", **kwargs)  # type: ignore[arg-type]
    wire = started(config(), a=srs)
    assert wire.session.state is SessionState.ESTABLISHED
    return wire, srs


def test_200_path_invite_contents_ack_and_established_event() -> None:
    wire, srs = established()
    (invite,) = srs.requests("INVITE")
    h = invite.headers
    assert h.get("Require") == "siprec"
    assert invite.contacts[0].params == {"+sip.src": None}
    assert (
        h.get("Accept")
        == "application/sdp, application/rs-metadata+xml, application/rs-metadata-request"
    )
    assert h.get("X-Auth-Token") == TOKEN
    assert invite.content_type is not None and invite.content_type.mime == "multipart/mixed"
    sdp = offer_of(invite)
    assert [(m.label, m.port, m.proto, m.direction) for m in sdp.media] == [
        ("1", 30000, "RTP/SAVP", "sendonly"),
        ("2", 30002, "RTP/SAVP", "sendonly"),
    ]
    assert [c.suite for c in sdp.media[0].cryptos] == [SUITE_80, SUITE_32]
    ctype, doc = metadata_of(invite)
    assert ctype == CONTENT_TYPE
    SCHEMA.validate(doc.decode())
    meta = parse_metadata(doc)
    assert meta.datamode == "complete" and meta.sip_session_ids == ["CA0123456789abcdef"]
    assert sorted(a for p in meta.participants.values() for a in p.aors) == [
        "sip:+15551230000@pbx.example",
        "sip:+15559870000@pbx.example",
    ]
    assert meta.custom == {"agent": "Bob & <Co>"}
    (ack,) = srs.requests("ACK")
    assert ack.cseq == (invite.cseq[0], "ACK") and ack.headers.get("X-Auth-Token") == TOKEN
    (est,) = wire.of(ev.Established)
    assert est.srs_uri == "sip:rec@198.51.100.7:5060" and est.call_id == invite.call_id
    assert [(s.label, s.address, s.port, s.rtcp, s.suite, s.tag) for s in est.streams] == [
        ("1", "198.51.100.7", 40000, ("198.51.100.7", 40001), SUITE_80, 1),
        ("2", "198.51.100.7", 40002, ("198.51.100.7", 40003), SUITE_80, 1),
    ]
    wire.session.stop(wire.now)
    wire.flush()
    (bye,) = srs.requests("BYE")
    assert bye.headers.get("X-Auth-Token") == TOKEN
    assert wire.of(ev.Ended) == [ev.Ended(False, "stopped")]
    assert wire.session.state is SessionState.ENDED


def test_answer_tag_2_selects_the_32_suite() -> None:
    wire, _ = established(crypto_tag=2)
    (est,) = wire.of(ev.Established)
    assert {s.suite for s in est.streams} == {SUITE_32}


@pytest.mark.parametrize("status", [486, 503])
def test_failure_without_standby_keeps_status_reason_and_warning(status: int) -> None:
    srs = FakeSrs(
        "198.51.100.7",
        invite_script=[
            (status, {"Reason": 'SIP;cause=486;text="busy"', "Warning": '399 srs "full"'})
        ],
    )
    wire = started(config(), a=srs)
    (failed,) = wire.of(ev.Failed)
    assert failed.status == status and failed.phase == "setup"
    assert failed.reason_header == 'SIP;cause=486;text="busy"'
    assert failed.warning == '399 srs "full"'
    assert [a.cseq[1] for a in srs.requests("ACK")] == ["ACK"]  # the non-2xx was ACKed
    assert wire.session.state is SessionState.FAILED
    assert wire.session.get_timer() is not None  # Timer D still absorbs retransmissions
    wire.advance(100.0)
    assert len(srs.requests("INVITE")) == 1


def test_failure_then_standby() -> None:
    primary = FakeSrs("198.51.100.7", invite_script=[503])
    standby = FakeSrs("198.51.100.8")
    wire = started(config(standby_uris=("sip:rec@198.51.100.8",)), a=primary, b=standby)
    (over,) = wire.of(ev.FailingOver)
    assert (over.failed_uri, over.next_uri, over.status) == (
        "sip:rec@198.51.100.7:5060",
        "sip:rec@198.51.100.8",
        503,
    )
    (est,) = wire.of(ev.Established)
    assert est.srs_uri == "sip:rec@198.51.100.8"
    assert primary.requests("INVITE")[0].call_id != standby.requests("INVITE")[0].call_id


@pytest.mark.parametrize("codes", [frozenset({403}), frozenset()])
def test_skip_failover_codes_end_setup_without_the_standby(codes: frozenset[int]) -> None:
    primary = FakeSrs("198.51.100.7", invite_script=[403])
    standby = FakeSrs("198.51.100.8")
    cfg = config(standby_uris=("sip:rec@198.51.100.8",), skip_failover_codes=codes)
    wire = started(cfg, a=primary, b=standby)
    if codes:
        (failed,) = wire.of(ev.Failed)
        assert failed.status == 403 and failed.phase == "setup"
        assert standby.requests("INVITE") == [] and wire.of(ev.FailingOver) == []
    else:
        assert len(wire.of(ev.Established)) == 1 and len(standby.requests("INVITE")) == 1


def test_metadata_seed_keeps_the_identifiers_of_another_session() -> None:
    srs1, srs2, srs3 = (FakeSrs("198.51.100.7") for _ in range(3))
    first = started(config(), a=srs1)
    started(config(metadata_seed=first.session.metadata_seed), a=srs2)
    started(config(), a=srs3)  # the control: another session, other identifiers
    one, two, other = (parse_metadata(metadata_of(s.requests("INVITE")[0])[1])
                       for s in (srs1, srs2, srs3))
    assert one.session_ids and one.session_ids == two.session_ids
    assert other.session_ids != one.session_ids


def test_timeout_tries_each_standby_then_fails_with_408() -> None:
    silent = [FakeSrs(f"198.51.100.{i}", invite_script=[None]) for i in (7, 8, 9)]
    cfg = config(standby_uris=("sip:rec@198.51.100.8", "sip:rec@198.51.100.9"))
    wire = started(cfg, **{s.host: s for s in silent})
    wire.advance(31.0)
    assert wire.of(ev.FailingOver) == []
    wire.advance(33.0)  # Timer B = 64*T1 = 32 s
    assert [e.next_uri for e in wire.of(ev.FailingOver)] == ["sip:rec@198.51.100.8"]
    wire.advance(200.0)
    assert [e.status for e in wire.of(ev.FailingOver)] == [408, 408]
    (failed,) = wire.of(ev.Failed)
    assert failed.status == 408 and failed.phase == "setup"
    # UDP: the INVITE was retransmitted (Timer A) to every SRS.
    assert all(len(s.requests("INVITE")) == 7 for s in silent)


def test_timeout_then_standby_answers() -> None:
    dead = FakeSrs("198.51.100.7", invite_script=[None])
    alive = FakeSrs("198.51.100.8")
    wire = started(config(standby_uris=("sip:rec@198.51.100.8",)), a=dead, b=alive)
    wire.advance(40.0)
    assert wire.of(ev.Established)[0].srs_uri == "sip:rec@198.51.100.8"


def test_transport_error_fails_over_with_503() -> None:
    dead = FakeSrs("198.51.100.7", invite_script=[None])
    alive = FakeSrs("198.51.100.8")
    wire = started(config(standby_uris=("sip:rec@198.51.100.8",), transport="tcp"), a=dead, b=alive)
    wire.session.handle_transport_error(1.0, "connection refused")
    wire.flush()
    assert wire.of(ev.FailingOver)[0].status == 503
    assert wire.of(ev.Established)


def test_401_digest_retry() -> None:
    srs = FakeSrs("198.51.100.7", verifier=DigestVerifier("srs.example", {"src": PASSWORD}))
    wire = started(config(digest_username="src", digest_password=PASSWORD), a=srs)
    first, second = srs.requests("INVITE")
    assert first.headers.get("Authorization") is None
    assert second.headers.get("Authorization", "").startswith('Digest username="src"')
    assert second.call_id == first.call_id and second.cseq[0] == first.cseq[0] + 1
    assert wire.of(ev.Established)
    wire.session.stop(wire.now)
    wire.flush()
    assert srs.requests("BYE")[0].headers.get("Authorization") is not None


def test_401_with_wrong_password_is_retried_once_then_fails() -> None:
    srs = FakeSrs("198.51.100.7", verifier=DigestVerifier("srs.example", {"src": "other"}))
    wire = started(config(digest_username="src", digest_password=PASSWORD), a=srs)
    assert len(srs.requests("INVITE")) == 2
    assert wire.of(ev.Failed)[0].status == 401


def test_401_without_credentials_fails() -> None:
    srs = FakeSrs("198.51.100.7", verifier=DigestVerifier("srs.example", {"src": PASSWORD}))
    wire = started(config(), a=srs)
    assert len(srs.requests("INVITE")) == 1 and wire.of(ev.Failed)[0].status == 401


@pytest.mark.parametrize("status", [415, 488])
def test_unsupported_metadata_type_retries_once_with_the_other(status: int) -> None:
    srs = FakeSrs("198.51.100.7", invite_script=[status, 200])
    wire = started(config(), a=srs)
    first, second = srs.requests("INVITE")
    assert metadata_of(first)[0] == CONTENT_TYPE and metadata_of(second)[0] == LEGACY_CONTENT_TYPE
    assert LEGACY_CONTENT_TYPE in (second.headers.get("Accept") or "")
    assert wire.session.metadata_content_type == LEGACY_CONTENT_TYPE
    assert wire.of(ev.Established)


def test_unsupported_metadata_type_twice_fails() -> None:
    srs = FakeSrs("198.51.100.7", invite_script=[415, 415])
    wire = started(config(metadata_content_type=LEGACY_CONTENT_TYPE), a=srs)
    assert len(srs.requests("INVITE")) == 2 and wire.of(ev.Failed)[0].status == 415


def test_3xx_followed_once() -> None:
    first = FakeSrs(
        "198.51.100.7", invite_script=[(302, {"Contact": "<sip:rec@198.51.100.20:5070>"})]
    )
    target = FakeSrs("198.51.100.20", port=5070)
    wire = started(config(), a=first, b=target)
    assert wire.of(ev.Established)[0].srs_uri == "sip:rec@198.51.100.20:5070"
    loop_a = FakeSrs(
        "198.51.100.7", invite_script=[(302, {"Contact": "<sip:rec@198.51.100.20:5070>"})]
    )
    loop_b = FakeSrs(
        "198.51.100.20", port=5070, invite_script=[(301, {"Contact": "<sip:rec@198.51.100.7>"})]
    )
    wire2 = started(config(), a=loop_a, b=loop_b)
    assert wire2.of(ev.Failed)[0].status == 301


def test_srs_bye_ends_the_session() -> None:
    wire, srs = established()
    wire.inject(srs.request("BYE", extra=[("Reason", 'SIP;cause=200;text="recorder shutdown"')]))
    responses = [m for m in wire.sent if isinstance(m, Response)]
    assert responses[-1].status == 200 and responses[-1].cseq[1] == "BYE"
    assert wire.of(ev.Ended) == [ev.Ended(True, 'SIP;cause=200;text="recorder shutdown"')]
    assert wire.session.state is SessionState.ENDED


def _srs_offer(srs: FakeSrs, ports: tuple[int, int], direction: str = "recvonly") -> bytes:
    sdp = srs.answer_sdp(offer_of(srs.requests("INVITE")[0])).decode()
    sdp = sdp.replace("m=audio 40000", f"m=audio {ports[0]}").replace(
        "m=audio 40002", f"m=audio {ports[1]}"
    )
    return sdp.replace("a=recvonly", f"a={direction}").encode()


def test_srs_reinvite_with_new_ports_updates_media() -> None:
    wire, srs = established()
    wire.inject(srs.request("INVITE", _srs_offer(srs, (50000, 50002)), "application/sdp"))
    ok = [m for m in wire.sent if isinstance(m, Response)][-1]
    assert (
        ok.status == 200
        and ok.content_type is not None
        and ok.content_type.mime == "application/sdp"
    )
    answer = offer_of(ok)
    assert [m.direction for m in answer.media] == ["sendonly", "sendonly"]
    assert answer.media[0].cryptos[0].key == KEY_80
    (update,) = wire.of(ev.MediaUpdated)
    assert [s.port for s in update.streams] == [50000, 50002]
    wire.inject(srs.request("ACK"))
    # a=inactive from the SRS pauses; sendonly again resumes.
    wire.inject(
        srs.request("INVITE", _srs_offer(srs, (50000, 50002), "inactive"), "application/sdp")
    )
    assert wire.of(ev.Paused) == [ev.Paused(True)] and wire.session.paused
    wire.inject(srs.request("INVITE", _srs_offer(srs, (50000, 50002)), "application/sdp"))
    assert wire.of(ev.Resumed) == [ev.Resumed(True)]


def test_out_of_dialog_request_gets_481() -> None:
    wire, srs = established()
    stranger = srs.request("BYE")
    stranger.headers.set("Call-ID", "other@x")
    wire.inject(stranger)
    assert [m for m in wire.sent if isinstance(m, Response)][-1].status == 481
    assert wire.session.state is SessionState.ESTABLISHED


def test_session_timer_refresh_by_update_as_refresher() -> None:
    srs = FakeSrs("198.51.100.7", session_expires="90;refresher=uac")
    wire = started(config(session_expires=90), a=srs)
    assert srs.requests("INVITE")[0].headers.get("Session-Expires") == "90"
    wire.advance(44.0)
    assert srs.requests("UPDATE") == []
    wire.advance(46.0)
    (update,) = srs.requests("UPDATE")
    assert update.headers.get("Session-Expires") == "90;refresher=uac"
    wire.advance(91.0)
    assert len(srs.requests("UPDATE")) == 2
    assert wire.session.state is SessionState.ESTABLISHED and srs.requests("OPTIONS") == []


def test_session_timer_refresh_by_reinvite_when_update_not_allowed() -> None:
    srs = FakeSrs("198.51.100.7", session_expires="90;refresher=uac", allow="INVITE, ACK, BYE")
    wire = started(config(session_expires=90), a=srs)
    wire.advance(46.0)
    assert len(srs.requests("INVITE")) == 2 and len(srs.requests("ACK")) == 2


def test_unanswered_refresh_fails_the_session() -> None:
    srs = FakeSrs("198.51.100.7", session_expires="90;refresher=uac")
    wire = started(config(session_expires=90), a=srs)
    srs.silent_methods.add("UPDATE")
    wire.advance(45.0 + 33.0)
    (failed,) = wire.of(ev.Failed)
    assert (failed.status, failed.phase) == (408, "refresh")


def test_srs_refresher_that_never_refreshes_expires_the_session() -> None:
    srs = FakeSrs("198.51.100.7", session_expires="90;refresher=uas")
    wire = started(config(session_expires=90), a=srs)
    wire.advance(59.0)
    assert wire.session.state is SessionState.ESTABLISHED
    wire.inject(srs.request("UPDATE", extra=[("Session-Expires", "90;refresher=uac")]))
    wire.advance(110.0)
    assert wire.session.state is SessionState.ESTABLISHED
    wire.advance(121.0)
    assert wire.of(ev.Failed)[0].phase == "refresh"
    assert srs.requests("BYE")  # told the SRS


def test_options_keepalive_and_dead_srs() -> None:
    wire, srs = established()
    wire.advance(30.5)
    assert len(srs.requests("OPTIONS")) == 1
    wire.advance(61.0)
    assert len(srs.requests("OPTIONS")) == 2
    srs.silent_methods.add("OPTIONS")
    wire.advance(200.0)
    (failed,) = wire.of(ev.Failed)
    assert (failed.status, failed.phase) == (408, "keepalive")


def test_stop_while_invite_pending_sends_cancel() -> None:
    srs = FakeSrs("198.51.100.7", invite_script=[180])
    wire = started(config(), a=srs)
    wire.session.stop(wire.now)
    wire.flush()
    (cancel,) = srs.requests("CANCEL")
    invite = srs.requests("INVITE")[0]
    assert cancel.cseq == (invite.cseq[0], "CANCEL")
    assert cancel.top_via.branch == invite.top_via.branch
    assert cancel.headers.get("X-Auth-Token") == TOKEN
    assert [a.cseq for a in srs.requests("ACK")] == [(invite.cseq[0], "ACK")]  # ACK for the 487
    assert wire.of(ev.Ended) == [ev.Ended(False, "stopped")]


def test_stop_before_any_provisional_cancels_once_it_rings() -> None:
    srs = FakeSrs("198.51.100.7", invite_script=[None])
    wire = started(config(), a=srs)
    wire.session.stop(wire.now)
    wire.flush()
    assert srs.requests("CANCEL") == []  # §9.1: not before a provisional response
    invite = srs.requests("INVITE")[0]
    wire.session.handle_message(Response(180, "Ringing", _response_headers(invite)), wire.now)
    wire.flush()
    assert len(srs.requests("CANCEL")) == 1
    assert wire.of(ev.Ended)


def _response_headers(invite: Request):  # type: ignore[no-untyped-def]
    from mediafork.sip.dialog import build_response

    return build_response(invite, 180, to_tag="srs-tag").headers


def test_late_2xx_after_cancel_is_acked_and_byed() -> None:
    srs = FakeSrs("198.51.100.7", invite_script=[None])
    wire = started(config(), a=srs)
    invite = srs.requests("INVITE")[0]
    from mediafork.sip.dialog import build_response

    wire.session.handle_message(build_response(invite, 180, to_tag="srs-tag"), 0.1)
    wire.session.stop(0.2)
    wire.drop = lambda msg: isinstance(msg, Request) and msg.method == "CANCEL"
    wire.flush()
    ok = build_response(
        invite,
        200,
        to_tag="srs-tag",
        headers=[("Contact", "<sip:srs@198.51.100.7>"), ("Content-Type", "application/sdp")],
        body=srs.answer_sdp(offer_of(invite)),
    )
    wire.drop = lambda msg: False
    wire.session.handle_message(ok, 0.3)
    wire.flush()
    assert len(srs.requests("ACK")) == 1 and len(srs.requests("BYE")) == 1
    assert wire.of(ev.Ended) == [ev.Ended(False, "stopped")]
    assert wire.of(ev.Established) == []


def test_stop_is_bounded_when_the_srs_does_not_answer_bye() -> None:
    wire, srs = established()
    srs.silent_methods.add("BYE")
    wire.session.stop(wire.now)
    wire.flush()
    wire.advance(4.9)
    assert wire.of(ev.Ended) == []
    wire.advance(5.1)
    assert wire.of(ev.Ended)[0].by_remote is False


def test_rejected_pause_keeps_the_session_then_pause_and_resume() -> None:
    wire, srs = established(reinvite_script=[488, 200, 200])
    wire.session.pause(wire.now)
    wire.flush()
    assert wire.of(ev.UpdateRejected) == [ev.UpdateRejected("pause", 488, "Not Acceptable Here")]
    assert wire.session.state is SessionState.ESTABLISHED and not wire.session.paused
    wire.session.pause(wire.now)
    wire.flush()
    reinvite = srs.requests("INVITE")[-1]
    assert reinvite.content_type is not None and reinvite.content_type.mime == "application/sdp"
    assert [m.direction for m in offer_of(reinvite).media] == ["inactive", "inactive"]
    assert wire.of(ev.Paused) == [ev.Paused(False)]
    wire.session.resume(wire.now)
    wire.flush()
    assert [m.direction for m in offer_of(srs.requests("INVITE")[-1]).media] == ["sendonly"] * 2
    assert wire.of(ev.Resumed) == [ev.Resumed(False)]
    assert len(srs.requests("ACK")) == 4  # initial, 488 (in transaction), pause, resume


def test_participant_change_sends_partial_metadata() -> None:
    wire, srs = established()
    wire.session.update_participants(
        wire.now,
        Participant("sip:+15551230000@pbx.example", "Alice"),
        Participant("sip:+15557770000@pbx.example", "Transfer <target>"),
    )
    wire.flush()
    reinvite = srs.requests("INVITE")[-1]
    ctype, doc = metadata_of(reinvite)
    SCHEMA.validate(doc.decode())
    meta = parse_metadata(doc)
    assert meta.datamode == "partial" and len(meta.disassociated) == 1
    assert "Transfer <target>" in [n for p in meta.participants.values() for n in p.names]


def test_snapshot_request_is_answered_with_complete_metadata() -> None:
    wire, srs = established()
    wire.inject(srs.request("UPDATE", b"", None))
    wire.inject(srs.request("INVITE", b"", None))  # offer-less re-INVITE: we offer in the 200
    ok = [m for m in wire.sent if isinstance(m, Response)][-1]
    assert ok.status == 200 and offer_of(ok).media[0].direction == "sendonly"
    wire.inject(srs.request("ACK"))
    request = srs.request("INFO")
    wire.inject(request)
    assert [m for m in wire.sent if isinstance(m, Response)][-1].status == 405
    snap = srs.request("UPDATE", b"", None)
    snap.headers.set("Content-Type", "application/rs-metadata-request")
    snap.body = b""
    wire.inject(snap)
    wire.flush()
    ctype, doc = metadata_of(srs.requests("INVITE")[-1])
    assert parse_metadata(doc).datamode == "complete"
    SCHEMA.validate(doc.decode())


def test_secrets_never_appear_in_reprs_or_events() -> None:
    srs = FakeSrs("198.51.100.7", invite_script=[403])
    cfg = config(digest_username="src", digest_password=PASSWORD)
    wire = started(cfg, a=srs)
    texts = [repr(cfg), repr(wire.session), *map(repr, wire.events), *map(str, wire.events)]
    texts += [repr(s) for s in cfg.streams]
    for text in texts:
        for secret in (TOKEN, PASSWORD, repr(KEY_80), repr(KEY_32), "KKKK", "kkkk"):
            assert secret not in text
    with pytest.raises(ValueError) as info:
        dataclasses.replace(cfg, metadata_content_type="text/plain")
    assert TOKEN not in str(info.value)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="unique"):
        config(
            streams=(ForkedStream("1", "inbound", 1, PCMU), ForkedStream("1", "outbound", 2, PCMU))
        )
    with pytest.raises(ValueError, match="sip"):
        config(srs_uri="tel:+1555")


def test_a_tls_contact_and_via_name_the_tls_listener() -> None:
    session = RecordingSession(config(srs_uri="sips:rec@srs.example.com", tls_port=5091))
    session.start(0.0)
    (out,) = session.messages_to_send()
    assert (out.message.top_via.transport, out.message.top_via.port) == ("TLS", 5091)
    # A sips: target gets a sips: Contact (RFC 3261 §8.1.1.8), a sip: one transport=tls.
    assert (out.message.headers.get("Contact") or "").startswith("<sips:mediafork@192.0.2.10:5091>")
    tls = RecordingSession(config(srs_uri="sip:rec@srs.example.com;transport=tls", tls_port=5091))
    tls.start(0.0)
    (out,) = tls.messages_to_send()
    assert ":5091;transport=tls>" in (out.message.headers.get("Contact") or "")
    udp = RecordingSession(config(srs_uri="sip:rec@srs.example.com", tls_port=5091))
    udp.start(0.0)
    (out,) = udp.messages_to_send()
    assert out.message.top_via.port != 5091
    assert ":5091" not in (out.message.headers.get("Contact") or "")


def test_transport_from_uri() -> None:
    assert RecordingSession(config(srs_uri="sips:rec@srs.example.com")).transport == "tls"
    assert RecordingSession(config(srs_uri="sip:rec@h;transport=tcp")).transport == "tcp"
    assert RecordingSession(config(transport="tls")).transport == "tls"
    session = RecordingSession(config(srs_uri="sips:rec@srs.example.com"))
    session.start(0.0)
    (out,) = session.messages_to_send()
    assert (out.destination.host, out.destination.port, out.destination.transport) == (
        "srs.example.com",
        5061,
        "tls",
    )
    assert out.message.top_via.transport == "TLS"
    # No TLS listener configured: Via and Contact name the TCP listener's port, truthfully.
    assert ";transport=tcp" in (out.message.headers.get("Contact") or "")
    session.handle_timer(10.0)
    assert session.messages_to_send() == []  # reliable: no retransmission
