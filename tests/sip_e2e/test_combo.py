"""Issue 11's features together, against real sockets on 127.0.0.1: a mid-call failover on a
connector with a SIP profile (AEAD suites, static and parameter headers), call events before
and after a failover, and OPTIONS health probes to a recorder that demands the profile's
header on every request."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable

import pytest
from pylibsrtp import Error as SrtpError
from pylibsrtp import Policy, Session

from mediafork.engine import Engine, Track
from mediafork.recorder_api import SiprecStart
from mediafork.sip.call_events import Hold, ParticipantAdded, ParticipantReplaced
from mediafork.sip.metadata import parse_metadata
from mediafork.sip.profile import parse_profile
from mediafork.sip.recorder_health import HealthConfig
from mediafork.sip.sdp import SUITE_80, SUITE_GCM_256

from .harness import (
    CALL_SID,
    SIPREC_SID,
    EventLog,
    Recorder,
    Wiretap,
    eventually,
    metadata_of,
    open_links,
    pump_media,
    run,
    sdp_of,
    start_request,
)
from .minisrs import MiniSrs, mini_srs_on
from .test_call_events_sipp import CALLEE, CALLER, CAROL, SCHEMA, SUPERVISOR
from .test_failover import KEEPALIVE, _payload, _pump_until, _up

SUITES = [SUITE_GCM_256, SUITE_80]
POLICIES = {SUITE_80: Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
            SUITE_GCM_256: Policy.SRTP_PROFILE_AEAD_AES_256_GCM}
TENANT = "tenant-token-77ab"


def _profiled(srs: str, standby: str, secure: bool = True) -> SiprecStart:
    base = start_request(srs, standby=(standby,), credentials=None)
    table: dict[str, object] = {"headers": {"X-Tenant": TENANT}, "parameters_as": "both"}
    if secure:
        table["srtp_suites"] = SUITES
    profile = parse_profile(table, "connectors[0].sip", secure=secure)
    return dataclasses.replace(base, connector=dataclasses.replace(base.connector,
                                                                   profile=profile),
                               parameters=(("queue", "sales"),))


def _key(invite_media: object, suite: str) -> bytes:
    (key,) = [bytes(c.key) for c in invite_media.cryptos  # type: ignore[attr-defined]
              if c.suite == suite]
    return key


def _unprotect(key: bytes, suite: str, packets: list[bytes]) -> list[bytes]:
    rx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND,
                        srtp_profile=POLICIES[suite]))
    return [rx.unprotect(p) for p in packets]


def test_failover_with_an_aead_profile_rekeys_every_suite_and_keeps_the_headers(
    engine: Engine, recorders: Callable[..., Recorder]
) -> None:
    rec1, rec2, rec3, rec4 = (recorders() for _ in range(4))

    async def main() -> None:
        # The primary takes the first suite (GCM), the standby the second: the fork must
        # switch suite, not only key, when the standby answers.
        primary = await MiniSrs(media=[("127.0.0.1", rec1.port), ("127.0.0.1", rec2.port)],
                                crypto_index=0).start()
        standby = await MiniSrs(media=[("127.0.0.1", rec3.port), ("127.0.0.1", rec4.port)],
                                crypto_index=1).start()
        events, tap = EventLog(), Wiretap()
        links = await open_links(events, tap, **KEEPALIVE)
        call = engine.add_call("CA" + secrets.token_hex(16), ingress=False)
        await links.start(call, _profiled(f"{primary.uri};secure=true;transport=udp",
                                          f"{standby.uri};transport=udp"))
        await events.wait_for("started")
        first = primary.requests("INVITE")[0][1]
        got = await _pump_until(call, engine, links, rec1, 1)
        assert len(got) == 5
        _unprotect(_key(sdp_of(first).media[0], SUITE_GCM_256), SUITE_GCM_256, got)

        await primary.close()  # the next keepalive gets ICMP
        await events.wait_for("failover", timeout=5.0)
        assert events.kinds() == ["started", "failover"]
        invite = standby.requests("INVITE")[0][1]
        old, new = sdp_of(first), sdp_of(invite)
        for before, after in zip(old.media, new.media, strict=True):
            # Every suite of the profile offered again, in the profile's order, each with a
            # key never offered to the lost recorder.
            assert [(c.tag, c.suite) for c in after.cryptos] == [(1, SUITES[0]), (2, SUITES[1])]
            assert after.proto == "RTP/SAVP"
            for suite in SUITES:
                assert _key(after, suite) != _key(before, suite)
        # The profile's static header and the parameter header reach the standby too.
        assert invite.headers.get_all("X-Tenant") == [TENANT]
        assert invite.headers.get("X-queue") == "sales"
        assert parse_metadata(metadata_of(invite)).custom == {"queue": "sales"}

        got = await _pump_until(call, engine, links, rec3, 100)
        assert len(got) == 5
        sent = {_payload(seq) for seq in range(100, 200)}
        for packet in _unprotect(_key(new.media[0], SUITE_80), SUITE_80, got):
            assert packet[12:] in sent
        with pytest.raises(SrtpError):  # not the old key of the suite the standby took
            _unprotect(_key(old.media[0], SUITE_80), SUITE_80, got[:1])
        with pytest.raises(SrtpError):  # nor the suite the lost recorder took
            _unprotect(_key(new.media[0], SUITE_GCM_256), SUITE_GCM_256, got[:1])

        await links.stop(SIPREC_SID)
        await eventually(lambda: bool(standby.requests("BYE")))
        for method in ("ACK", "BYE"):  # static headers on every request to the standby
            (request,) = [r for _, r in standby.requests(method)][:1]
            assert request.headers.get("X-Tenant") == TENANT, method
        await links.close(1.0)
        await standby.close()
        call.close()

    run(main())


def test_call_events_before_a_failover_are_in_the_standbys_metadata_and_later_ones_follow(
    engine: Engine, recorders: Callable[..., Recorder]
) -> None:
    rec1, rec2, rec3, rec4 = (recorders() for _ in range(4))

    async def main() -> None:
        primary = await mini_srs_on(rec1, rec2)
        standby = await mini_srs_on(rec3, rec4)
        events, tap = EventLog(), Wiretap()
        links = await open_links(events, tap, **KEEPALIVE)
        call = engine.add_call("CA" + secrets.token_hex(16), ingress=False)
        request = start_request(primary.uri, standby=(standby.uri,))
        await links.start(call, request)
        await events.wait_for("started")
        assert await links.call_event(CALL_SID, Hold("inbound")) == [SIPREC_SID]
        assert await links.call_event(CALL_SID, ParticipantReplaced("outbound", CAROL)) == [
            SIPREC_SID]
        await eventually(lambda: len({m.cseq[0] for _, m in primary.requests("INVITE")}) == 3)
        await eventually(lambda: len(tap.sent("ACK")) == 3)
        seed = parse_metadata(metadata_of(primary.requests("INVITE")[0][1]))

        await primary.close()
        await events.wait_for("failover", timeout=5.0)
        to_primary = len([r for r in tap.sent("INVITE") if r.uri == primary.uri])
        (invite,) = [m for _, m in standby.requests("INVITE")][:1]
        doc = metadata_of(invite)
        SCHEMA.validate(doc.decode())
        complete = parse_metadata(doc)
        assert complete.datamode == "complete"
        assert complete.session_ids == seed.session_ids  # the same recording session
        by_aor = {aor: p for p in complete.participants.values() for aor in p.aors}
        # The call as it is now: Carol replaced the callee, the inbound track is on hold.
        assert set(by_aor) == {CALLER, CAROL.aor}, by_aor
        assert CALLEE not in by_aor
        label = complete.streams
        caller, carol = by_aor[CALLER], by_aor[CAROL.aor]
        assert ([label[s] for s in caller.send], [label[s] for s in caller.recv]) == ([], ["2"])
        assert ([label[s] for s in carol.send], [label[s] for s in carol.recv]) == (["2"], [])

        # Events after the failover: to the standby only, one re-INVITE each, in order.
        assert await links.call_event(CALL_SID, ParticipantAdded("inbound", SUPERVISOR)) == [
            SIPREC_SID]
        assert await links.call_event(CALL_SID, Hold("inbound", held=False)) == [SIPREC_SID]
        await eventually(lambda: len({m.cseq[0] for _, m in standby.requests("INVITE")}) == 3)
        assert len([r for r in tap.sent("INVITE") if r.uri == primary.uri]) == to_primary
        invites = list({m.cseq[0]: m for _, m in standby.requests("INVITE")}.values())
        assert [i.cseq[0] for i in invites] == sorted(i.cseq[0] for i in invites)
        assert len({i.call_id for i in invites}) == 1
        added, unheld = (parse_metadata(metadata_of(i)) for i in invites[1:])
        assert {added.datamode, unheld.datamode} == {"partial"}
        [sup] = [p for p in added.participants.values() if p.aors]
        assert sup.aors == [SUPERVISOR.aor] and sup.send == []  # still held
        assert added.session_ids == unheld.session_ids == seed.session_ids
        sends = {pid: [label[s] for s in p.send] for pid, p in unheld.participants.items()
                 if p.has_streams}
        assert sends.get(caller.participant_id) == ["1"], sends  # off hold: sends again
        await links.close(1.0)
        await standby.close()
        call.close()

    run(main())


def test_health_probes_carry_the_profile_headers_a_recorder_demands(
    engine: Engine, recorders: Callable[..., Recorder]
) -> None:
    async def main() -> None:
        strict = await MiniSrs(demand_header=("X-Tenant", TENANT)).start()
        plain = await MiniSrs().start()
        events, tap = EventLog(), Wiretap()
        links = await open_links(events, tap, health=HealthConfig(0.1, 0.2, 2))
        request = _profiled(strict.uri, plain.uri, secure=False)
        bare = start_request(plain.uri, credentials=None, siprec_sid="SR" + "e" * 32)
        bare = dataclasses.replace(bare, connector=dataclasses.replace(
            bare.connector, unique_name="Bare"))
        links.watch_recorders([request.connector])
        # down_after = 2: two probes without the header (no answer) would mark it down.
        await eventually(lambda: len(strict.requests("OPTIONS")) >= 2, timeout=4.0)
        await eventually(lambda: not links._health_probes, timeout=1.0)
        assert _up(links, f"127.0.0.1:{strict.port}") == 1.0
        assert all(m.headers.get("X-Tenant") == TENANT for _, m in strict.requests("OPTIONS"))
        # The control: the header comes from the profile (a connector without one sends none).
        links.watch_recorders([bare.connector])
        await eventually(lambda: any(m.uri == plain.uri and m.headers.get("X-Tenant") is None
                                     for m in tap.sent("OPTIONS")), timeout=3.0)
        await links.close(1.0)
        await strict.close()
        await plain.close()

    run(main())


def test_new_participants_after_a_call_event_reach_the_standby(
    engine: Engine, recorders: Callable[..., Recorder]
) -> None:
    """update_participants after a call event: the failover's complete metadata has the new
    parties and the hold, not the parties of the call event's time."""
    rec1, rec2, rec3, rec4 = (recorders() for _ in range(4))
    dave = "sip:dave@pbx.example"

    async def main() -> None:
        primary = await mini_srs_on(rec1, rec2)
        standby = await mini_srs_on(rec3, rec4)
        events, tap = EventLog(), Wiretap()
        links = await open_links(events, tap, **KEEPALIVE)
        call = engine.add_call("CA" + secrets.token_hex(16), ingress=False)
        await links.start(call, start_request(primary.uri, standby=(standby.uri,)))
        await events.wait_for("started")
        assert await links.call_event(CALL_SID, Hold("outbound")) == [SIPREC_SID]
        await links.update_participants(CALL_SID, CALLER, dave)
        await eventually(lambda: len({m.cseq[0] for _, m in primary.requests("INVITE")}) == 3)
        await eventually(lambda: len(tap.sent("ACK")) == 3)

        await primary.close()
        await events.wait_for("failover", timeout=5.0)
        complete = parse_metadata(metadata_of(standby.requests("INVITE")[0][1]))
        by_aor = {aor: p for p in complete.participants.values() for aor in p.aors}
        assert set(by_aor) == {CALLER, dave}, by_aor
        assert by_aor[dave].send == []  # the outbound track is still on hold
        await links.close(1.0)
        await standby.close()
        call.close()

    run(main())


def test_a_call_event_while_paused_after_a_failover_keeps_the_standby_paused(
    engine: Engine, recorders: Callable[..., Recorder]
) -> None:
    rec1, rec2, rec3, rec4 = (recorders() for _ in range(4))

    async def main() -> None:
        primary = await mini_srs_on(rec1, rec2)
        standby = await mini_srs_on(rec3, rec4)
        events = EventLog()
        links = await open_links(events, **KEEPALIVE)
        call = engine.add_call("CA" + secrets.token_hex(16), ingress=False)
        await links.start(call, start_request(primary.uri, standby=(standby.uri,)))
        await events.wait_for("started")
        await links.pause(SIPREC_SID)
        await eventually(lambda: len({m.cseq[0] for _, m in primary.requests("INVITE")}) == 2)
        await primary.close()
        await events.wait_for("failover", timeout=5.0)

        def invites() -> list[object]:
            return list({m.cseq[0]: m for _, m in standby.requests("INVITE")}.values())

        await eventually(lambda: len(invites()) == 2)  # set-up, then a=inactive
        assert await links.call_event(CALL_SID, ParticipantReplaced("outbound", CAROL)) == [
            SIPREC_SID]
        await eventually(lambda: len(invites()) == 3)
        event = invites()[2]
        assert parse_metadata(metadata_of(event)).datamode == "partial"  # type: ignore[arg-type]
        # The event's re-INVITE does not resume the recording by the way.
        assert [m.direction for m in sdp_of(event).media] == ["inactive", "inactive"]  # type: ignore[arg-type]
        await pump_media(call, Track.INBOUND, 10)
        assert await rec3.receive(1, timeout=0.3) == []  # still paused: no media
        await links.resume(SIPREC_SID)
        await eventually(lambda: len(invites()) == 4)
        assert [m.direction for m in sdp_of(invites()[3]).media] == ["sendonly", "sendonly"]  # type: ignore[arg-type]
        assert len(await _pump_until(call, engine, links, rec3, 50)) == 5
        assert events.kinds() == ["started", "failover"]
        await links.close(1.0)
        await standby.close()
        call.close()

    run(main())


def test_a_pause_while_the_standby_sets_up_holds_the_media_and_tells_it_once(
    engine: Engine, recorders: Callable[..., Recorder]
) -> None:
    rec1, rec2, rec3, rec4 = (recorders() for _ in range(4))

    async def main() -> None:
        primary = await mini_srs_on(rec1, rec2)
        standby = await MiniSrs(media=[("127.0.0.1", rec3.port), ("127.0.0.1", rec4.port)],
                                invite_delay=0.3).start()
        events = EventLog()
        links = await open_links(events, **KEEPALIVE)
        call = engine.add_call("CA" + secrets.token_hex(16), ingress=False)
        await links.start(call, start_request(primary.uri, standby=(standby.uri,)))
        await events.wait_for("started")
        await primary.close()
        await eventually(lambda: bool(standby.requests("INVITE")), timeout=3.0)
        await links.pause(SIPREC_SID)  # the standby has not answered yet
        await events.wait_for("failover", timeout=3.0)

        def invites() -> list[object]:
            return list({m.cseq[0]: m for _, m in standby.requests("INVITE")}.values())

        await eventually(lambda: len(invites()) >= 2)
        await pump_media(call, Track.INBOUND, 10)
        assert await rec3.receive(1, timeout=0.4) == []  # paused: nothing at the standby
        directions = [[m.direction for m in sdp_of(i).media] for i in invites()]  # type: ignore[arg-type]
        assert directions[1:] == [["inactive", "inactive"]], directions  # told once
        await links.resume(SIPREC_SID)
        await eventually(lambda: len(invites()) == 3, timeout=2.0)
        assert len(await _pump_until(call, engine, links, rec3, 50)) == 5
        assert events.kinds() == ["started", "failover"]
        await links.close(1.0)
        await standby.close()
        call.close()

    run(main())
