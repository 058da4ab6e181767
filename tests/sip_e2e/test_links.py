"""SipRecorderLinks: TLS, edges, dead media, shutdown and secrets, against real sockets on
127.0.0.x (a Python SRS where sipp cannot help: TLS, source addresses, per-source delays)."""

from __future__ import annotations

import asyncio
import base64
import errno
import json
import logging
import secrets
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest

from mediafork.engine import Engine, EngineEvent, Track
from mediafork.recorder_api import Edge, LinkError
from mediafork.sip.message import Response
from mediafork.sip.recorder_links import (
    ERR_MEDIA_UNREACHABLE,
    ERR_SETUP_FAILED,
    ERR_UNKNOWN_EDGE,
    ERR_UNUSABLE_EDGE,
)
from mediafork.sip.session import SessionState
from mediafork.sip.transport import client_tls_context

from .harness import (
    CALL_SID,
    SIPREC_SID,
    EventLog,
    Recorder,
    Sipp,
    Wiretap,
    eventually,
    open_links,
    pump_media,
    run,
    sdp_of,
    start_request,
)
from .minisrs import MiniSrs, mini_srs_on, self_signed
from .test_sipp import answer_keys, offered_key, unprotect_all

E2, E3 = "127.0.0.2", "127.0.0.3"
EDGES = (Edge("ashburn", E2), Edge("dublin", E3))


def _new_call(engine: Engine):  # type: ignore[no-untyped-def]
    return engine.add_call("CA" + secrets.token_hex(16), ingress=False)


# --- TLS --------------------------------------------------------------------------------------


def _tls_server(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:

    cert, key = self_signed(tmp_path)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    return server, cert


def test_tls_with_a_self_signed_certificate_and_a_host_name(
    engine: Engine, recorders: Callable[..., Recorder], tmp_path: Path
) -> None:
    rec1, rec2 = recorders(), recorders()
    server_ctx, cert = _tls_server(tmp_path)

    async def main() -> None:
        srs = await MiniSrs(
            transport="tls",
            tls=server_ctx,
            media=[("127.0.0.1", rec1.port), ("127.0.0.1", rec2.port)],
        ).start()
        events, tap = EventLog(), Wiretap()
        links = await open_links(events, tap, tls_ca_file=str(cert))
        call = _new_call(engine)
        # secure=true without a transport: TLS; "localhost" is resolved and verified.
        await links.start(call, start_request(f"sip:srs@localhost:{srs.port};secure=true"))
        await events.wait_for("started")
        (invite,) = tap.sent_once("INVITE")
        assert {t for _, t, *_ in tap.records} == {"tls"}
        assert invite.top_via.transport.upper() == "TLS"
        # No TLS listener here (no server context): the Contact names the TCP one.
        assert ";transport=tcp" in (invite.headers.get("Contact") or "")
        offer = sdp_of(invite)
        sent = await pump_media(call, Track.INBOUND, 5)
        got = await rec1.receive(5)
        clear = unprotect_all(
            offered_key(offer.media[0], 1), "AES_CM_128_HMAC_SHA1_80", [p for p, _ in got]
        )
        assert [p[12:] for p in clear] == [p[12:] for p in sent]
        await links.stop(SIPREC_SID)
        assert events.kinds() == ["started", "stopped"]
        assert [m.method for _, m in srs.received if hasattr(m, "method")] == [
            "INVITE",
            "ACK",
            "BYE",
        ]
        await links.close(1.0)
        await srs.close()

    run(main())


def test_tls_certificate_not_trusted_fails_setup(engine: Engine, tmp_path: Path) -> None:
    server_ctx, _ = _tls_server(tmp_path)

    async def main() -> None:
        srs = await MiniSrs(transport="tls", tls=server_ctx).start()
        events = EventLog()
        links = await open_links(events, tls_context=client_tls_context())  # system CAs only
        call = _new_call(engine)
        await links.start(call, start_request(f"sip:srs@127.0.0.1:{srs.port};transport=tls"))
        error = await events.wait_for("error")
        assert error.error_code == ERR_SETUP_FAILED and error.sip_status == 503
        assert "TLS" in (error.error_message or "") and "setup" in (error.error_message or "")
        assert srs.received == []
        await links.close(1.0)
        await srs.close()

    run(main())


def test_tcp_against_sipp(
    engine: Engine, recorders: Callable[..., Recorder], sipp: Callable[..., Sipp]
) -> None:
    rec1, rec2 = recorders(), recorders()
    srs = sipp("srs_answer", transport="t1", keys=answer_keys(rec1, rec2, secure=False))

    async def main() -> None:
        events, tap = EventLog(), Wiretap()
        links = await open_links(events, tap)
        call = _new_call(engine)
        await links.start(call, start_request(f"{srs.uri};transport=tcp"))
        await events.wait_for("started")
        assert {t for _, t, *_ in tap.records} == {"tcp"}
        await links.stop(SIPREC_SID)
        assert events.kinds() == ["started", "stopped"]
        assert await srs.wait() == 0, srs.messages()
        await links.close(1.0)

    run(main())


# --- edges ------------------------------------------------------------------------------------


def _edge_run(
    engine: Engine,
    recorders: Callable[..., Recorder],
    edges: tuple[Edge, ...],
    srs_uri_suffix: str,
    expect: str,
    options_delay: dict[str, float] | None = None,
) -> None:
    rec1, rec2 = recorders(), recorders()

    async def main() -> None:
        srs = await MiniSrs(
            media=[("127.0.0.1", rec1.port), ("127.0.0.1", rec2.port)],
            options_delay=options_delay or {},
        ).start()
        events = EventLog()
        links = await open_links(events, edges=edges, probe_timeout=1.0)
        call = _new_call(engine)
        await links.start(call, start_request(srs.uri + srs_uri_suffix))
        await events.wait_for("started")
        await pump_media(call, Track.INBOUND, 3)
        await pump_media(call, Track.OUTBOUND, 3)
        got = await rec1.receive(3) + await rec2.receive(3)
        # The SRS sees SIP and RTP from the chosen edge's address.
        assert {src[0] for src, _ in srs.requests("INVITE")} == {expect}
        assert {src[0] for src, _ in srs.requests("ACK")} == {expect}
        assert len(got) == 6 and {peer[0] for _, peer in got} == {expect}
        via = srs.requests("INVITE")[0][1].top_via
        assert via.host == expect
        await links.stop(SIPREC_SID)
        assert {src[0] for src, _ in srs.requests("BYE")} == {expect}
        await links.close(1.0)
        await srs.close()

    run(main())


def test_edge_named_in_the_connector_uri(
    engine: Engine, recorders: Callable[..., Recorder]
) -> None:
    edges = (Edge("ashburn", E2, default=True), Edge("dublin", E3))
    _edge_run(engine, recorders, edges, ";secure=true&edge=dublin;transport=udp", E3)


def test_default_edge(engine: Engine, recorders: Callable[..., Recorder]) -> None:
    edges = (Edge("ashburn", E2), Edge("dublin", E3, default=True))
    _edge_run(engine, recorders, edges, "", E3)


@pytest.mark.parametrize(("slow", "fast"), [(E2, E3), (E3, E2)])
def test_lowest_options_round_trip_wins(
    engine: Engine, recorders: Callable[..., Recorder], slow: str, fast: str
) -> None:
    _edge_run(engine, recorders, EDGES, "", fast, options_delay={slow: 0.3})


def test_unknown_and_unusable_edges_are_errors_that_name_them(engine: Engine) -> None:
    async def main() -> None:
        events = EventLog()
        # 192.0.2.1 (TEST-NET-1) is not a local address: it cannot be bound.
        links = await open_links(events, edges=(*EDGES, Edge("mars", "192.0.2.1")))
        call = _new_call(engine)
        with pytest.raises(LinkError) as unknown:
            await links.start(call, start_request("sip:srs@127.0.0.1:5999;edge=venus"))
        assert unknown.value.code == ERR_UNKNOWN_EDGE and "venus" in str(unknown.value)
        with pytest.raises(LinkError) as unusable:
            await links.start(call, start_request("sip:srs@127.0.0.1:5999;secure=true&edge=mars"))
        assert unusable.value.code == ERR_UNUSABLE_EDGE and "mars" in str(unusable.value)
        assert call.forks == [] and events.events == []
        await links.close(1.0)

    run(main())


# --- dead media, shutdown, warnings, secrets ---------------------------------------------------


def test_icmp_unreachable_on_media_fails_the_session(
    engine: Engine, recorders: Callable[..., Recorder], sipp: Callable[..., Sipp]
) -> None:
    rec1, rec2 = recorders(), recorders()
    srs = sipp("srs_answer", keys=answer_keys(rec1, rec2, secure=False))

    async def main() -> None:
        events = EventLog()
        links = await open_links(events)
        call = _new_call(engine)
        await links.start(call, start_request(srs.uri))
        await events.wait_for("started")
        rec1.close()  # the SRS's media port goes away: ICMP port unreachable
        seen: list[EngineEvent] = []

        async def pump() -> None:
            seq = 1
            while not any(e.kind == "send_error" for e in seen):
                await pump_media(call, Track.INBOUND, 1, start_seq=seq)
                seq += 1
                for event in engine.poll_events():
                    seen.append(event)
                    links.handle_engine_event(event)

        await asyncio.wait_for(pump(), 3.0)
        error = await events.wait_for("error")
        assert error.error_code == ERR_MEDIA_UNREACHABLE
        assert "ECONNREFUSED" in (error.error_message or "")
        assert call.forks == []
        assert await srs.wait() == 0, srs.messages()  # it got our BYE
        await links.close(1.0)

    run(main())


def test_send_error_for_other_reasons_or_unknown_forks_is_ignored(engine: Engine) -> None:
    async def main() -> None:
        events = EventLog()
        links = await open_links(events)
        links.handle_engine_event(
            EngineEvent("send_error", None, 12345, Track.INBOUND, errno.ECONNREFUSED, 0)
        )
        links.handle_engine_event(EngineEvent("no_media", None, None, Track.INBOUND, 5000, 0))
        assert events.events == []
        await links.close(1.0)

    run(main())


def test_close_byes_every_session_concurrently_within_the_bound(
    engine: Engine, recorders: Callable[..., Recorder]
) -> None:
    recs = [recorders() for _ in range(4)]

    async def main() -> None:
        answering = await MiniSrs(
            media=[("127.0.0.1", recs[0].port), ("127.0.0.1", recs[1].port)]
        ).start()
        mute = await MiniSrs(
            media=[("127.0.0.1", recs[2].port), ("127.0.0.1", recs[3].port)], answer_bye=False
        ).start()
        events = EventLog()
        links = await open_links(events, stop_timeout=5.0)
        calls = [_new_call(engine), _new_call(engine)]
        await links.start(calls[0], start_request(answering.uri, siprec_sid="SR" + "1" * 32))
        await links.start(calls[1], start_request(mute.uri, siprec_sid="SR" + "2" * 32))
        await eventually(lambda: events.kinds().count("started") == 2)
        loop = asyncio.get_running_loop()
        began = loop.time()
        await links.close(0.5)
        assert loop.time() - began < 0.9  # bounded although one SRS never answers BYE
        assert sorted(e.siprec_sid for e in events.events if e.kind == "stopped") == [
            "SR" + "1" * 32,
            "SR" + "2" * 32,
        ]
        assert len(answering.requests("BYE")) == 1 and len(mute.requests("BYE")) >= 1
        await answering.close()
        await mute.close()

    run(main())


def test_secure_connector_with_explicit_transport_warns_once(
    engine: Engine, recorders: Callable[..., Recorder], caplog: pytest.LogCaptureFixture
) -> None:
    recs = [recorders() for _ in range(2)]

    async def main() -> None:
        srs = await MiniSrs(
            media=[("127.0.0.1", recs[0].port), ("127.0.0.1", recs[1].port)]
        ).start()
        events = EventLog()
        links = await open_links(events)
        for n in (1, 2):
            call = _new_call(engine)
            sid = "SR" + str(n) * 32
            await links.start(
                call, start_request(f"{srs.uri};secure=true;transport=udp", siprec_sid=sid)
            )
            await events.wait_for("started")
            await links.stop(sid)
        await links.close(1.0)
        await srs.close()

    with caplog.at_level(logging.WARNING, logger="mediafork"):
        run(main())
    warnings = [r for r in caplog.records if "in clear" in r.getMessage()]
    assert len(warnings) == 1 and "Recorder_1" in warnings[0].getMessage()


def test_secrets_never_logged(
    engine: Engine, recorders: Callable[..., Recorder], caplog: pytest.LogCaptureFixture
) -> None:
    recs = [recorders() for _ in range(2)]
    keys: list[bytes] = []

    async def main() -> None:
        srs = await MiniSrs(
            media=[("127.0.0.1", recs[0].port), ("127.0.0.1", recs[1].port)]
        ).start()
        events, tap = EventLog(), Wiretap()
        links = await open_links(events, tap)
        call = _new_call(engine)
        request = start_request(
            f"{srs.uri};secure=true;transport=udp", digest=("recorder", "digest-pw-secret")
        )
        await links.start(call, request)
        await events.wait_for("started")
        offer = sdp_of(tap.sent("INVITE")[0])
        keys.extend(c.key for m in offer.media for c in m.cryptos)
        assert links.session_state(SIPREC_SID) is SessionState.ESTABLISHED
        await links.stop(SIPREC_SID)
        await links.close(1.0)
        await srs.close()

    with caplog.at_level(logging.DEBUG):
        run(main())
    text = "\n".join(r.getMessage() for r in caplog.records) + repr(caplog.records)
    assert caplog.records  # something was logged at all
    for secret in [
        "tok-e2e-secret",
        "digest-pw-secret",
        *[base64.b64encode(k).decode() for k in keys],
    ]:
        assert secret not in text


def test_pause_resume_and_participant_update(
    engine: Engine, recorders: Callable[..., Recorder]
) -> None:
    rec1, rec2 = recorders(), recorders()

    async def main() -> None:
        srs = await mini_srs_on(rec1, rec2)
        events = EventLog()
        links = await open_links(events)
        call = _new_call(engine)
        await links.start(call, start_request(srs.uri))
        await events.wait_for("started")
        await pump_media(call, Track.INBOUND, 2)
        assert len(await rec1.receive(2)) == 2
        await links.pause(SIPREC_SID)
        # Media stops at once, not only when the SRS has answered the re-INVITE.
        await pump_media(call, Track.INBOUND, 3, start_seq=10)
        assert await rec1.receive(1, timeout=0.2) == []
        await eventually(lambda: len(srs.requests("INVITE")) == 2)
        assert b"a=inactive" in srs.requests("INVITE")[1][1].body
        await links.resume(SIPREC_SID)
        await eventually(lambda: not any(f.paused for f in links.forks(SIPREC_SID)))
        assert b"a=sendonly" in srs.requests("INVITE")[2][1].body
        await pump_media(call, Track.INBOUND, 2, start_seq=20)
        assert len(await rec1.receive(2)) == 2
        await links.update_participants(CALL_SID, "sip:alice@pbx.example", "sip:carol@pbx.example")
        await eventually(lambda: len(srs.requests("INVITE")) == 4)
        update = srs.requests("INVITE")[3][1]
        assert b"<datamode>partial</datamode>" in update.body and b"carol" in update.body
        assert events.kinds() == ["started"]
        await links.close(1.0)
        assert events.kinds() == ["started", "stopped"]
        await srs.close()

    run(main())


def test_a_new_process_hangs_up_a_session_from_its_dialog_record(
    engine: Engine, recorders: Callable[..., Recorder], tmp_path: Path
) -> None:
    """The started event's dialog record is enough for other links (a restarted process)
    to BYE the session over a new TLS connection, in the same dialog, with the
    connector's credentials; no event is reported for it."""
    server_ctx, cert = _tls_server(tmp_path)

    async def main() -> None:
        rec1, rec2 = recorders(), recorders()
        srs = await MiniSrs(
            transport="tls",
            tls=server_ctx,
            media=[("127.0.0.1", rec1.port), ("127.0.0.1", rec2.port)],
        ).start()
        events, later_events, tap = EventLog(), EventLog(), Wiretap()
        first = await open_links(events, tls_ca_file=str(cert))
        request = start_request(f"sip:srs@localhost:{srs.port};secure=true")
        await first.start(_new_call(engine), request)
        started = await events.wait_for("started")
        assert started.dialog is not None and started.dialog["transport"] == "tls"
        record = json.loads(json.dumps(started.dialog))  # as the store keeps it

        later = await open_links(later_events, tap, tls_ca_file=str(cert))
        await asyncio.wait_for(later.hang_up(request, record), 3.0)
        (bye,) = tap.sent("BYE")
        (invite,) = [m for _, m in srs.requests("INVITE")]
        assert bye.call_id == invite.call_id and bye.from_.tag == invite.from_.tag
        assert bye.cseq[0] > invite.cseq[0]
        assert bye.headers.get("X-Auth-Token") == "tok-e2e-secret"
        assert {t for _, t, *_ in tap.records} == {"tls"}
        answers = [m for d, *_, m in tap.records if d == "in" and isinstance(m, Response)]
        assert [(m.status, m.cseq[1]) for m in answers] == [(200, "BYE")]
        assert later_events.events == []
        assert SIPREC_SID not in later._links  # nothing left behind
        await later.close(1.0)
        await first.close(1.0)
        await srs.close()

    run(main())
