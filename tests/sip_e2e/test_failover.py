"""Recorder resilience against real sockets on 127.0.0.1: mid-call failover to a standby
(process killed → keepalive fails; ICMP on media), both recorders dead, skip_failover_codes,
and OPTIONS health checks that mark a dead primary down (and up again)."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import secrets
import socket
import xml.etree.ElementTree as ET
from collections.abc import Callable

import pytest
from pylibsrtp import Error as SrtpError

from mediafork.daemon.metrics import link_metrics
from mediafork.engine import Engine, EngineEvent, Track
from mediafork.sip.recorder_health import HealthConfig
from mediafork.sip.recorder_links import ERR_SESSION_LOST, ERR_SETUP_FAILED
from mediafork.sip.sdp import SUITE_80

from .harness import (
    SIPREC_SID,
    EventLog,
    Recorder,
    Sipp,
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
from .test_sipp import SCHEMA, answer_keys, offered_key, unprotect_all

NS = "{urn:ietf:params:xml:ns:recording:1}"
KEEPALIVE = {"keepalive_interval": 0.3, "session_expires": None}
"""No session timer with MiniSrs/sipp answers: OPTIONS keepalives find a dead recorder."""


def _new_call(engine: Engine):  # type: ignore[no-untyped-def]
    return engine.add_call("CA" + secrets.token_hex(16), ingress=False)


def _dead_udp_port() -> int:
    """A UDP port on 127.0.0.1 with nothing behind it (ICMP port unreachable)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _payload(seq: int) -> bytes:
    """What pump_media puts in packet ``seq``."""
    return bytes([(seq + j) & 0xFF for j in range(160)])


def _ids(metadata: bytes) -> tuple[str, set[str], str]:
    root = ET.fromstring(metadata)
    (session,) = root.findall(f"{NS}session")
    streams = {s.get("stream_id") or "" for s in root.findall(f"{NS}stream")}
    return session.get("session_id") or "", streams, root.findtext(f"{NS}datamode") or ""


async def _pump_until(call, engine: Engine, links, recorder: Recorder, start: int,  # type: ignore[no-untyped-def]
                      feed: bool = False) -> list[bytes]:
    """Push inbound packets until ``recorder`` got 5 (bounded); returns the packets it got."""
    got: list[bytes] = []
    seq = start
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 3.0
    while len(got) < 5 and loop.time() < deadline:
        await pump_media(call, Track.INBOUND, 1, start_seq=seq)
        seq += 1
        if feed:
            for event in engine.poll_events():
                links.handle_engine_event(event)
        got += [p for p, _ in await recorder.receive(5 - len(got), timeout=0.02)]
    return got


def test_primary_process_killed_mid_call_fails_over_with_full_metadata_and_new_keys(
    engine: Engine, recorders: Callable[..., Recorder], sipp: Callable[..., Sipp]
) -> None:
    rec1, rec2, rec3, rec4 = (recorders() for _ in range(4))
    primary = sipp("srs_answer", keys=answer_keys(rec1, rec2))

    async def main() -> None:
        standby = await mini_srs_on(rec3, rec4)
        events, tap = EventLog(), Wiretap()
        links = await open_links(events, tap, **KEEPALIVE)
        call = _new_call(engine)
        request = start_request(f"{primary.uri};secure=true;transport=udp",
                                standby=(f"{standby.uri};transport=udp",))
        await links.start(call, request)
        await events.wait_for("started")
        first = tap.sent("INVITE")[0]
        old_key = offered_key(sdp_of(first).media[0], 1)
        got = await _pump_until(call, engine, links, rec1, 1)
        assert len(got) == 5
        unprotect_all(old_key, SUITE_80, got)

        primary.kill()  # the recorder's process is gone: the next keepalive gets ICMP
        loop = asyncio.get_running_loop()
        killed = loop.time()
        failover = await events.wait_for("failover", timeout=5.0)
        assert loop.time() - killed < 2.0  # one keepalive interval plus the set-up
        assert events.kinds() == ["started", "failover"]  # no error
        assert failover.previous_recorder == f"{primary.uri};transport=udp"
        assert failover.recorder == f"{standby.uri};transport=udp"
        assert failover.failover_count == 1 and failover.phase == "established"
        assert "tok-e2e-secret" not in repr(failover)

        invite = standby.requests("INVITE")[0][1]
        assert len({m.call_id for _, m in standby.requests("INVITE")}) == 1
        # A new dialog with the complete metadata and the same recording-session identity.
        assert invite.call_id != first.call_id
        SCHEMA.validate(metadata_of(invite).decode())
        assert _ids(metadata_of(invite)) == _ids(metadata_of(first))
        assert _ids(metadata_of(invite))[2] == "complete"
        assert invite.headers.get("X-Auth-Token") == "tok-e2e-secret"
        # Fresh SRTP keys on every stream.
        new_key = offered_key(sdp_of(invite).media[0], 1)
        assert new_key != old_key
        assert offered_key(sdp_of(invite).media[1], 1) != offered_key(sdp_of(first).media[1], 1)

        # Media goes on from the same fork (same local port) to the standby, new key only.
        got = await _pump_until(call, engine, links, rec3, 100)
        assert len(got) == 5
        sent = {_payload(seq) for seq in range(100, 200)}
        for packet in unprotect_all(new_key, SUITE_80, got):
            assert packet[12:] in sent  # bit-exact (the fork numbers packets its own way)
        with pytest.raises(SrtpError):
            unprotect_all(old_key, SUITE_80, got[:1])
        assert len(call.forks) == 2

        await links.stop(SIPREC_SID)
        assert events.kinds() == ["started", "failover", "stopped"]
        await eventually(lambda: bool(standby.requests("BYE")))
        await links.close(1.0)
        await standby.close()

    run(main())


def test_icmp_on_media_fails_over_and_byes_the_old_recorder(
    engine: Engine, recorders: Callable[..., Recorder]
) -> None:
    rec1, rec2, rec3, rec4 = (recorders() for _ in range(4))

    async def main() -> None:
        primary = await mini_srs_on(rec1, rec2)
        standby = await mini_srs_on(rec3, rec4)
        events = EventLog()
        links = await open_links(events)
        call = _new_call(engine)
        await links.start(call, start_request(primary.uri, standby=(standby.uri,)))
        await events.wait_for("started")
        rec1.close()  # the primary's media port is gone: ICMP on the forked stream
        got = await _pump_until(call, engine, links, rec3, 1, feed=True)
        failover = await events.wait_for("failover")
        assert "ECONNREFUSED" in (failover.error_message or "")
        assert len(got) == 5  # plain RTP reached the standby's media port
        assert primary.requests("BYE")  # the lost session was hung up
        assert len({m.call_id for _, m in standby.requests("INVITE")}) == 1
        assert events.kinds() == ["started", "failover"]
        # Late ICMP for packets sent to the lost recorder: no second failover, no error.
        fork = call.forks[0]
        links.handle_engine_event(EngineEvent("send_error", None, fork.id, fork.track,
                                              errno.ECONNREFUSED, 0))
        await asyncio.sleep(0.1)
        assert events.kinds() == ["started", "failover"]
        assert len({m.call_id for _, m in standby.requests("INVITE")}) == 1
        await links.close(1.0)
        await primary.close()
        await standby.close()

    run(main())


def test_every_recorder_dead_gives_one_error_after_the_failover_attempt(
    engine: Engine, recorders: Callable[..., Recorder]
) -> None:
    rec1, rec2 = recorders(), recorders()

    async def main() -> None:
        primary = await mini_srs_on(rec1, rec2)
        dead = f"sip:srs@127.0.0.1:{_dead_udp_port()}"
        events, tap = EventLog(), Wiretap()
        links = await open_links(events, tap, **KEEPALIVE)
        call = _new_call(engine)
        await links.start(call, start_request(primary.uri, standby=(dead,)))
        await events.wait_for("started")
        await primary.close()
        error = await events.wait_for("error", timeout=5.0)
        await asyncio.sleep(0.3)
        assert events.kinds() == ["started", "error"]  # exactly one error, no failover
        assert error.error_code == ERR_SESSION_LOST and error.phase == "established"
        assert error.recorder == dead and error.previous_recorder == primary.uri
        assert "failover failed" in (error.error_message or "")
        # One pass: the primary, then the standby once (UDP retransmissions aside).
        assert list(dict.fromkeys(r.uri for r in tap.sent("INVITE"))) == [primary.uri, dead]
        assert len({r.call_id for r in tap.sent("INVITE")}) == 2
        assert call.forks == []
        await links.close(1.0)

    run(main())


def test_max_failovers_zero_reports_the_loss(
    engine: Engine, recorders: Callable[..., Recorder]
) -> None:
    rec1, rec2 = recorders(), recorders()

    async def main() -> None:
        primary = await mini_srs_on(rec1, rec2)
        standby = await MiniSrs().start()
        events = EventLog()
        links = await open_links(events, max_failovers=0, **KEEPALIVE)
        await links.start(_new_call(engine), start_request(primary.uri, standby=(standby.uri,)))
        await events.wait_for("started")
        await primary.close()
        error = await events.wait_for("error", timeout=5.0)
        assert error.error_code == ERR_SESSION_LOST
        assert standby.requests("INVITE") == []
        await links.close(1.0)
        await standby.close()

    run(main())


@pytest.mark.parametrize("skip", [(403,), ()])
def test_skip_failover_codes_end_setup_without_the_standby(
    engine: Engine, sipp: Callable[..., Sipp], recorders: Callable[..., Recorder],
    skip: tuple[int, ...]
) -> None:
    primary = sipp("srs_reject", fill={"STATUS": "403"}, keys={"reason": "Forbidden"})
    rec1, rec2 = recorders(), recorders()

    async def main() -> None:
        standby = await MiniSrs(media=[("127.0.0.1", rec1.port),
                                       ("127.0.0.1", rec2.port)]).start()
        events = EventLog()
        links = await open_links(events)
        request = start_request(primary.uri, standby=(standby.uri,))
        request = dataclasses.replace(request, connector=dataclasses.replace(
            request.connector, skip_failover_codes=skip))
        await links.start(_new_call(engine), request)
        if skip:
            error = await events.wait_for("error")
            assert error.error_code == ERR_SETUP_FAILED and error.sip_status == 403
            await asyncio.sleep(0.2)
            assert standby.requests("INVITE") == []
        else:  # the control: without the code the standby gets the INVITE
            await events.wait_for("started")
            assert len({m.call_id for _, m in standby.requests("INVITE")}) == 1
        assert await primary.wait() == 0, primary.messages()
        await links.close(1.0)
        await standby.close()

    run(main())


def _up(links, where: str) -> float | None:  # type: ignore[no-untyped-def]
    for metric in link_metrics(links)():
        if metric.name == "mediafork_recorder_up":
            for sample in metric.samples:
                if sample.labels["recorder"] == where:
                    return float(sample.value)
    return None


def test_health_checks_mark_a_dead_primary_down_new_siprecs_skip_it_and_it_recovers(
    engine: Engine, recorders: Callable[..., Recorder], caplog: pytest.LogCaptureFixture
) -> None:
    rec1, rec2 = recorders(), recorders()
    media = [("127.0.0.1", rec1.port), ("127.0.0.1", rec2.port)]

    async def main() -> None:
        primary = await MiniSrs(media=media, mute=True).start()  # hung: answers nothing
        port, primary_uri = primary.port, primary.uri
        standby = await MiniSrs(media=media).start()
        events, tap = EventLog(), Wiretap()
        links = await open_links(events, tap, health=HealthConfig(0.2, 0.3, 2))
        request = start_request(primary_uri, standby=(standby.uri,))
        links.watch_recorders([request.connector])
        where = f"127.0.0.1:{port}"
        await eventually(lambda: _up(links, where) == 0.0, timeout=3.0)
        assert _up(links, f"127.0.0.1:{standby.port}") == 1.0
        assert f"recorder {where} (udp) is down" in caplog.text
        # Probes carry the connector's credentials header, no SDP.
        options = [m for m in tap.sent("OPTIONS") if m.uri == standby.uri]
        assert options and options[0].headers.get("X-Auth-Token") == "tok-e2e-secret"

        loop = asyncio.get_running_loop()
        began = loop.time()
        await links.start(_new_call(engine), request)
        await events.wait_for("started", timeout=2.0)
        assert loop.time() - began < 0.5  # no Timer B on the dead primary
        assert [r.uri for r in tap.sent("INVITE")] == [standby.uri]
        await links.stop(SIPREC_SID)

        primary.mute = False  # the primary answers again
        await eventually(lambda: _up(links, where) == 1.0, timeout=3.0)
        assert f"recorder {where} (udp) is up again" in caplog.text
        events.events.clear()
        await links.start(_new_call(engine), dataclasses.replace(
            request, siprec_sid="SR" + "e" * 32))
        await events.wait_for("started", timeout=2.0)
        assert tap.sent("INVITE")[-1].uri == primary_uri
        assert len({m.call_id for _, m in primary.requests("INVITE")}) == 1
        await links.close(1.0)
        await primary.close()
        await standby.close()

    with caplog.at_level("INFO", logger="mediafork.sip.recorder_links"):
        run(main())


def test_a_paused_siprec_stays_paused_across_a_failover_and_resumes_at_the_standby(
    engine: Engine, recorders: Callable[..., Recorder]
) -> None:
    rec1, rec2, rec3, rec4 = (recorders() for _ in range(4))

    async def main() -> None:
        primary = await mini_srs_on(rec1, rec2)
        standby = await mini_srs_on(rec3, rec4)
        events = EventLog()
        links = await open_links(events, **KEEPALIVE)
        call = _new_call(engine)
        await links.start(call, start_request(primary.uri, standby=(standby.uri,)))
        await events.wait_for("started")
        await links.pause(SIPREC_SID)
        await eventually(lambda: len(primary.requests("INVITE")) >= 2)
        await primary.close()
        await events.wait_for("failover", timeout=5.0)

        def directions() -> list[list[str]]:
            out = []
            for _, invite in standby.requests("INVITE"):
                out.append([m.direction for m in sdp_of(invite).media])
            return out

        # Once up, the standby is told at once that the recording is paused...
        await eventually(lambda: ["inactive", "inactive"] in directions())
        await pump_media(call, Track.INBOUND, 10)
        assert await rec3.receive(1, timeout=0.3) == []  # ...and gets no media while paused
        await links.resume(SIPREC_SID)
        await eventually(lambda: directions()[-1] == ["sendonly", "sendonly"])
        got = await _pump_until(call, engine, links, rec3, 50)
        assert len(got) == 5
        assert events.kinds() == ["started", "failover"]
        await links.close(1.0)
        await standby.close()

    run(main())


def test_a_bye_from_the_recorder_is_not_a_loss(
    engine: Engine, recorders: Callable[..., Recorder], sipp: Callable[..., Sipp]
) -> None:
    rec1, rec2 = recorders(), recorders()
    primary = sipp("srs_bye", fill={"HOLD_MS": "300"}, keys=answer_keys(rec1, rec2, secure=False))

    async def main() -> None:
        standby = await MiniSrs().start()
        events = EventLog()
        links = await open_links(events)
        await links.start(_new_call(engine), start_request(primary.uri, standby=(standby.uri,)))
        stopped = await events.wait_for("stopped", timeout=5.0)
        assert stopped.by_remote  # the recorder ended the recording on purpose
        await asyncio.sleep(0.2)
        assert events.kinds() == ["started", "stopped"]
        assert standby.requests("INVITE") == []
        assert await primary.wait() == 0, primary.messages()
        await links.close(1.0)
        await standby.close()

    run(main())
