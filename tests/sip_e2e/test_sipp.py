"""SipRecorderLinks against sipp as the SRS: setup outcomes, media, in-dialog requests."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from pathlib import Path

import xmlschema
from pylibsrtp import Policy, Session

from mediafork.engine import Engine, Track
from mediafork.sip.recorder_links import ERR_SETUP_FAILED
from mediafork.sip.sdp import SUITE_32, SUITE_80
from mediafork.sip.transaction import TimerConfig

from .harness import (
    SIPREC_SID,
    EventLog,
    Recorder,
    Sipp,
    Wiretap,
    crypto_line,
    eventually,
    free_port,
    metadata_of,
    open_links,
    pump_media,
    run,
    sdp_of,
    start_request,
)

SCHEMA = xmlschema.XMLSchema(str(Path(__file__).parent.parent / "sip" / "data" / "rfc7865.xsd"))
SRS_KEY = bytes(range(30))
"""The key the SRS "chooses" for its own direction (only used for its SRTCP)."""


def answer_keys(
    rec1: Recorder, rec2: Recorder, tag: int = 1, secure: bool = True
) -> dict[str, str]:
    suite = SUITE_80 if tag == 1 else SUITE_32
    return {
        "rec_ip": "127.0.0.1",
        "rec_port1": str(rec1.port),
        "rec_port2": str(rec2.port),
        "rec_proto": "RTP/SAVP" if secure else "RTP/AVP",
        "crypto1": crypto_line(tag, suite, SRS_KEY) if secure else "a=ptime:20",
        "crypto2": crypto_line(tag, suite, SRS_KEY) if secure else "a=ptime:20",
    }


def offered_key(invite_sdp_media: object, tag: int) -> bytes:
    for crypto in invite_sdp_media.cryptos:  # type: ignore[attr-defined]
        if crypto.tag == tag:
            return bytes(crypto.key)
    raise AssertionError(f"no a=crypto tag {tag} offered")


def unprotect_all(key: bytes, suite: str, packets: list[bytes]) -> list[bytes]:
    profile = (
        Policy.SRTP_PROFILE_AES128_CM_SHA1_80
        if suite == SUITE_80
        else Policy.SRTP_PROFILE_AES128_CM_SHA1_32
    )
    rx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=profile))
    return [rx.unprotect(p) for p in packets]


def _media_flows(
    engine: Engine,
    recorders: Callable[..., Recorder],
    sipp: Callable[..., Sipp],
    tag: int,
) -> None:
    rec1, rec2 = recorders(), recorders()
    srs = sipp("srs_answer", keys=answer_keys(rec1, rec2, tag))

    async def main() -> None:
        events, tap = EventLog(), Wiretap()
        links = await open_links(events, tap)
        call = engine.add_call("CA" + secrets.token_hex(16), ingress=False)
        await links.start(call, start_request(f"{srs.uri};secure=true;transport=udp"))
        await events.wait_for("started")
        (invite,) = tap.sent_once("INVITE")
        offer = sdp_of(invite)
        # Both tracks, sendonly, labelled, SAVP with _80 then _32, no telephone-event.
        assert [m.label for m in offer.media] == ["1", "2"]
        assert all(m.proto == "RTP/SAVP" and m.direction == "sendonly" for m in offer.media)
        assert all([c.suite for c in m.cryptos] == [SUITE_80, SUITE_32] for m in offer.media)
        assert b"telephone-event" not in invite.body
        assert invite.headers.get("X-Auth-Token") == "tok-e2e-secret"
        SCHEMA.validate(metadata_of(invite).decode())

        sent_in = await pump_media(call, Track.INBOUND, 10)
        sent_out = await pump_media(call, Track.OUTBOUND, 10, start_seq=500)
        got1 = await rec1.receive(10)
        got2 = await rec2.receive(10)
        suite = SUITE_80 if tag == 1 else SUITE_32
        clear1 = unprotect_all(offered_key(offer.media[0], tag), suite, [p for p, _ in got1])
        clear2 = unprotect_all(offered_key(offer.media[1], tag), suite, [p for p, _ in got2])
        assert [p[12:] for p in clear1] == [p[12:] for p in sent_in]
        assert [p[12:] for p in clear2] == [p[12:] for p in sent_out]
        # The media leaves from the edge address and the ports offered in the SDP.
        assert {peer for _, peer in got1} == {("127.0.0.1", offer.media[0].port)}
        assert {peer for _, peer in got2} == {("127.0.0.1", offer.media[1].port)}

        await links.stop(SIPREC_SID)
        assert events.kinds() == ["started", "stopped"]
        assert await srs.wait() == 0, srs.messages()
        await links.close(1.0)
        call.close()

    run(main())


def test_200_media_flows_srtp_80(
    engine: Engine, recorders: Callable[..., Recorder], sipp: Callable[..., Sipp]
) -> None:
    _media_flows(engine, recorders, sipp, tag=1)


def test_200_answer_selecting_the_32_suite_rekeys_the_forks(
    engine: Engine, recorders: Callable[..., Recorder], sipp: Callable[..., Sipp]
) -> None:
    _media_flows(engine, recorders, sipp, tag=2)


def _rejected(engine: Engine, sipp: Callable[..., Sipp], status: int, reason: str) -> None:
    srs = sipp("srs_reject", fill={"STATUS": str(status)}, keys={"reason": reason})

    async def main() -> None:
        events = EventLog()
        links = await open_links(events)
        call = engine.add_call("CA" + secrets.token_hex(16), ingress=False)
        await links.start(call, start_request(srs.uri))
        error = await events.wait_for("error")
        assert error.error_code == ERR_SETUP_FAILED and error.sip_status == status
        assert f"SIP {status} {reason}" in (error.error_message or "")
        assert "setup" in (error.error_message or "")
        assert "no recording capacity" in (error.error_message or "")  # the Warning
        assert events.kinds() == ["error"]
        assert call.forks == []  # the forks went with the session
        assert await srs.wait() == 0, srs.messages()  # our ACK for the rejection arrived
        await links.close(1.0)

    run(main())


def test_486_is_an_error_with_the_status(engine: Engine, sipp: Callable[..., Sipp]) -> None:
    _rejected(engine, sipp, 486, "Busy Here")


def test_503_is_an_error_with_the_status(engine: Engine, sipp: Callable[..., Sipp]) -> None:
    _rejected(engine, sipp, 503, "Service Unavailable")


def test_no_answer_times_out_with_timer_b(engine: Engine, sipp: Callable[..., Sipp]) -> None:
    srs = sipp("srs_silent")

    async def main() -> None:
        events, tap = EventLog(), Wiretap()
        links = await open_links(events, tap)  # T1 = 20 ms: Timer B after 1.28 s
        call = engine.add_call("CA" + secrets.token_hex(16), ingress=False)
        loop = asyncio.get_running_loop()
        began = loop.time()
        await links.start(call, start_request(srs.uri))
        error = await events.wait_for("error", timeout=5.0)
        elapsed = loop.time() - began
        assert 1.2 <= elapsed < 4.0, elapsed
        assert error.error_code == ERR_SETUP_FAILED and error.sip_status == 408
        assert "SIP 408" in (error.error_message or "")
        assert len(tap.sent("INVITE")) > 3  # retransmitted over UDP until Timer B
        await links.close(1.0)

    run(main())


def test_401_digest_challenge_is_answered(
    engine: Engine, recorders: Callable[..., Recorder], sipp: Callable[..., Sipp]
) -> None:
    rec1, rec2 = recorders(), recorders()
    srs = sipp("srs_digest", keys={**answer_keys(rec1, rec2, secure=False), "password": "pw-e2e"})

    async def main() -> None:
        events, tap = EventLog(), Wiretap()
        links = await open_links(events, tap)
        call = engine.add_call("CA" + secrets.token_hex(16), ingress=False)
        request = start_request(srs.uri, digest=("recorder", "pw-e2e"))
        await links.start(call, request)
        await events.wait_for("started")
        first, second = tap.sent("INVITE")
        assert first.headers.get("Authorization") is None
        authorization = second.headers.get("Authorization") or ""
        assert 'username="recorder"' in authorization and "qop=auth" in authorization
        assert "pw-e2e" not in authorization
        await links.stop(SIPREC_SID)
        assert events.kinds() == ["started", "stopped"]
        # sipp's verifyauth accepted the credentials (else it answers 403 and fails).
        assert await srs.wait() == 0, srs.messages()
        await links.close(1.0)

    run(main())


def test_wrong_digest_password_fails_setup(
    engine: Engine, recorders: Callable[..., Recorder], sipp: Callable[..., Sipp]
) -> None:
    rec1, rec2 = recorders(), recorders()
    srs = sipp("srs_digest", keys={**answer_keys(rec1, rec2, secure=False), "password": "right"})

    async def main() -> None:
        events = EventLog()
        links = await open_links(events)
        call = engine.add_call("CA" + secrets.token_hex(16), ingress=False)
        await links.start(call, start_request(srs.uri, digest=("recorder", "wrong")))
        error = await events.wait_for("error")
        assert error.sip_status == 403 and error.error_code == ERR_SETUP_FAILED
        await srs.wait()
        await links.close(1.0)

    run(main())


def test_srs_bye_mid_session_is_stopped_by_remote(
    engine: Engine, recorders: Callable[..., Recorder], sipp: Callable[..., Sipp]
) -> None:
    rec1, rec2 = recorders(), recorders()
    srs = sipp("srs_bye", fill={"HOLD_MS": "300"}, keys=answer_keys(rec1, rec2))

    async def main() -> None:
        events = EventLog()
        links = await open_links(events)
        call = engine.add_call("CA" + secrets.token_hex(16), ingress=False)
        await links.start(call, start_request(f"{srs.uri};secure=true;transport=udp"))
        await events.wait_for("started")
        stopped = await events.wait_for("stopped", timeout=5.0)
        assert stopped.by_remote and stopped.error_code is None
        assert events.kinds() == ["started", "stopped"]
        assert call.forks == []
        assert await srs.wait() == 0, srs.messages()  # it got our 200 to its BYE
        await links.stop(SIPREC_SID)  # idempotent: nothing more is reported
        assert events.kinds() == ["started", "stopped"]
        await links.close(1.0)

    run(main())


def test_srs_reinvite_with_new_ports_moves_the_media(
    engine: Engine, recorders: Callable[..., Recorder], sipp: Callable[..., Sipp]
) -> None:
    rec1, rec2, rec3, rec4 = recorders(), recorders(), recorders(), recorders()
    new_srs_key = bytes(reversed(range(30)))
    keys = {
        **answer_keys(rec1, rec2),
        "rec_port3": str(rec3.port),
        "rec_port4": str(rec4.port),
        "crypto3": crypto_line(1, SUITE_80, new_srs_key),
    }
    srs = sipp("srs_reinvite", fill={"HOLD_MS": "300"}, keys=keys)

    async def main() -> None:
        events, tap = EventLog(), Wiretap()
        links = await open_links(events, tap)
        call = engine.add_call("CA" + secrets.token_hex(16), ingress=False)
        await links.start(call, start_request(f"{srs.uri};secure=true;transport=udp"))
        await events.wait_for("started")
        offer = sdp_of(tap.sent("INVITE")[0])
        await pump_media(call, Track.INBOUND, 3)
        assert len(await rec1.receive(3)) == 3
        # Wait for the SRS's re-INVITE to be answered, then media goes to the new ports.
        await eventually(
            lambda: any(
                d == "out" and getattr(m, "status", 0) == 200 and m.cseq[1] == "INVITE"
                for d, *_, m in tap.records
            )
        )
        await asyncio.sleep(0.1)  # its ACK
        rec1.drain()
        sent = await pump_media(call, Track.INBOUND, 5, start_seq=100)
        await pump_media(call, Track.OUTBOUND, 5, start_seq=100)
        moved = await rec3.receive(5)
        assert len(moved) == 5 and len(await rec4.receive(5)) == 5
        assert await rec1.receive(1, timeout=0.2) == []
        clear = unprotect_all(offered_key(offer.media[0], 1), SUITE_80, [p for p, _ in moved])
        assert [p[12:] for p in clear] == [p[12:] for p in sent]
        await links.stop(SIPREC_SID)
        assert events.kinds() == ["started", "stopped"]
        assert await srs.wait() == 0, srs.messages()
        await links.close(1.0)

    run(main())


def test_failover_to_standby_after_503(
    engine: Engine, recorders: Callable[..., Recorder], sipp: Callable[..., Sipp]
) -> None:
    rec1, rec2 = recorders(), recorders()
    primary = sipp("srs_reject", fill={"STATUS": "503"}, keys={"reason": "Service Unavailable"})
    standby = sipp("srs_answer", keys=answer_keys(rec1, rec2, secure=False))

    async def main() -> None:
        events, tap = EventLog(), Wiretap()
        links = await open_links(events, tap)
        call = engine.add_call("CA" + secrets.token_hex(16), ingress=False)
        await links.start(call, start_request(primary.uri, standby=(standby.uri,)))
        await events.wait_for("started")
        await pump_media(call, Track.INBOUND, 3)
        assert len(await rec1.receive(3)) == 3
        invites = tap.sent("INVITE")
        assert [i.uri for i in invites] == [primary.uri, standby.uri]
        await links.stop(SIPREC_SID)
        assert events.kinds() == ["started", "stopped"]
        assert await primary.wait() == 0 and await standby.wait() == 0, standby.messages()
        await links.close(1.0)

    run(main())


def test_failover_when_primary_is_not_running(
    engine: Engine, recorders: Callable[..., Recorder], sipp: Callable[..., Sipp]
) -> None:
    rec1, rec2 = recorders(), recorders()
    standby = sipp("srs_answer", keys=answer_keys(rec1, rec2, secure=False))
    dead = f"sip:srs@127.0.0.1:{free_port()}"

    async def main() -> None:
        events = EventLog()
        links = await open_links(events, timers=TimerConfig(t1=0.5))  # Timer B would be 32 s
        call = engine.add_call("CA" + secrets.token_hex(16), ingress=False)
        loop = asyncio.get_running_loop()
        began = loop.time()
        await links.start(call, start_request(dead, standby=(standby.uri,)))
        await events.wait_for("started", timeout=5.0)
        # ICMP port unreachable fails the primary at once: no Timer B wait.
        assert loop.time() - began < 2.0
        await links.stop(SIPREC_SID)
        assert await standby.wait() == 0, standby.messages()
        await links.close(1.0)

    run(main())
