"""Fault matrix, established sessions: the SRS hangs up, moves the media, refreshes the
session, refuses our pause, loses its TCP connection, or its media port is dead (ICMP).

Media is real: a :class:`Talker` plays PCMU into the call's ingress ports at 50 pps and the
forks send it to the SRS (the ReferenceRecorder decodes it; with sipp a :class:`MediaSink`
counts it).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path
from typing import Any

import pytest

from mediafork.srs import ReferenceRecorder

from .harness import (
    MediaSink,
    Stack,
    Talker,
    connector,
    cpu_seconds,
    daemon_stack,
    error_hit,
    eventually,
    free_port,
    make_config,
    run,
)


async def _start(st: Stack, name: str, tag: str) -> tuple[dict[str, Any], str, Talker]:
    call = await st.api.register()
    talker = Talker(call["ingress"]).start()
    sid = await st.api.create_siprec(call["call_sid"], name, st.receiver.url("ok", tag))
    await st.receiver.wait_events(sid, ["siprec-started"])
    return call, sid, talker


async def _fork_destinations(st: Stack, call_sid: str) -> list[int | None]:
    _, view = await st.api.call(call_sid)
    return [(f["destination"] or {}).get("port") for f in view["forks"]]


async def _sent(st: Stack, call_sid: str) -> int:
    _, view = await st.api.call(call_sid)
    return sum(f["counters"]["sent"] for f in view["forks"])


def test_srs_bye_mid_session(tmp_path: Path) -> None:
    """The SRS hangs up: siprec-stopped, forks gone, no stale state (the call records again
    on the same connector)."""

    async def case() -> None:
        async with ReferenceRecorder(port=0, out_dir=tmp_path / "bye", hangup_after=0.6) as bye, \
                ReferenceRecorder(port=0, out_dir=tmp_path / "good") as good:
            config = make_config(tmp_path, [connector("HangsUp", bye.uri()),
                                            connector("Healthy", good.uri())])
            async with daemon_stack(config) as st:
                call, sid, talker = await _start(st, "HangsUp", "bye")
                try:
                    await st.receiver.wait_events(sid, ["siprec-started", "siprec-stopped"])
                    assert all(h.signed for h in st.receiver.for_sid(sid))
                    assert (await st.api.siprec(call["call_sid"], sid))["status"] == "stopped"
                    _, view = await st.api.call(call["call_sid"])
                    assert view["status"] == "live" and view["forks"] == []
                    (session,) = bye.sessions
                    summary = session.summary()
                    assert summary["ended_by"] == "srs" and summary["bye_status"] == 200
                    assert summary["totals"]["packets"] > 0 and summary["totals"]["lost"] == 0
                    # No stale state: the same call records again, to the same SRS.
                    again = await st.api.create_siprec(call["call_sid"], "HangsUp",
                                                       st.receiver.url("ok", "again"))
                    await st.receiver.wait_events(again, ["siprec-started", "siprec-stopped"])
                finally:
                    await talker.stop()
                await st.api.end_call(call["call_sid"])
                await asyncio.sleep(0.2)
                assert st.receiver.events(sid) == ["siprec-started", "siprec-stopped"]
                metrics = await st.api.metrics()
                assert metrics['mediafork_callback_deliveries_total{outcome="delivered"}'] == 4
                await st.serves_a_fresh_call()

    run(case())


def test_srs_reinvite_with_new_ports(tmp_path: Path) -> None:
    async def case() -> None:
        async with ReferenceRecorder(port=0, out_dir=tmp_path / "move", reinvite_after=0.5,
                                     tcp=False) as mover, \
                ReferenceRecorder(port=0, out_dir=tmp_path / "good") as good:
            config = make_config(tmp_path, [connector("Mover", mover.uri()),
                                            connector("Healthy", good.uri())])
            async with daemon_stack(config) as st:
                call, sid, talker = await _start(st, "Mover", "move")
                try:
                    before = await _fork_destinations(st, call["call_sid"])
                    assert all(before)

                    async def moved() -> bool:
                        now = await _fork_destinations(st, call["call_sid"])
                        return all(now) and not set(now) & set(before)

                    deadline = asyncio.get_running_loop().time() + 5
                    while not await moved():
                        assert asyncio.get_running_loop().time() < deadline, "media never moved"
                        await asyncio.sleep(0.05)
                    (session,) = mover.sessions
                    packets = session.summary()["totals"]["packets"]
                    await asyncio.sleep(0.6)
                    assert session.summary()["totals"]["packets"] > packets + 20
                    assert session.summary()["srs_reinvites"] == 1
                    assert st.receiver.events(sid) == ["siprec-started"]  # no callback for it
                finally:
                    await talker.stop()
                await st.api.stop_siprec(call["call_sid"], sid)
                await st.receiver.wait_events(sid, ["siprec-started", "siprec-stopped"])
                await mover.wait_for(lambda r: r.sessions[0].state == "ended", timeout=5)
                summary = mover.sessions[0].summary()
                assert summary["ended_by"] == "src"
                assert summary["totals"]["lost"] == 0 and not summary["warnings"]
                await st.api.end_call(call["call_sid"])
                await st.serves_a_fresh_call()

    run(case())


def test_srs_refreshes_the_session_and_is_answered(tmp_path: Path, sipp: Any) -> None:
    """RFC 4028 with the SRS as refresher: its refresh re-INVITE and UPDATE get 200s, the
    session and the media stay up, and our BYE ends it (sipp checks every step)."""

    async def case() -> None:
        sinks = [MediaSink(), MediaSink()]
        srs = sipp("srs_refresher", keys={"rec_port1": str(sinks[0].port),
                                          "rec_port2": str(sinks[1].port)})
        try:
            async with ReferenceRecorder(port=0, out_dir=tmp_path / "good") as good:
                config = make_config(tmp_path, [connector("Refresher", srs.uri),
                                                connector("Healthy", good.uri())])
                async with daemon_stack(config) as st:
                    call, sid, talker = await _start(st, "Refresher", "refresh")
                    try:
                        await eventually(lambda: srs.saw("CSeq: 12 UPDATE") and
                                         srs.saw("SIP/2.0 200"), 5, "both refreshes")
                        await asyncio.sleep(0.3)
                        sinks[0].drain()
                        sent = await _sent(st, call["call_sid"])
                        await asyncio.sleep(0.5)
                        assert await _sent(st, call["call_sid"]) > sent + 30
                        assert sinks[0].drain() > 15 and sinks[1].drain() > 15
                        assert st.receiver.events(sid) == ["siprec-started"]
                        assert st.daemon.links is not None
                        state = st.daemon.links.session_state(sid)
                        assert state is not None and state.name == "ESTABLISHED", state
                    finally:
                        await talker.stop()
                    await st.api.end_call(call["call_sid"])
                    assert await srs.wait(5) == 0, srs.messages()
                    await st.receiver.wait_events(sid, ["siprec-started", "siprec-stopped"])
                    await st.serves_a_fresh_call()
        finally:
            for sink in sinks:
                sink.close()

    run(case())


def test_srs_refresher_that_never_refreshes_expires(tmp_path: Path, sipp: Any) -> None:
    """The SRS takes the refresher role (Session-Expires 2) and goes quiet: the session is
    expired with a BYE before the interval ends, and reported (900031, refresh phase)."""

    async def case() -> None:
        sinks = [MediaSink(), MediaSink()]
        srs = sipp("srs_expires", keys={"rec_port1": str(sinks[0].port),
                                        "rec_port2": str(sinks[1].port)})
        try:
            async with ReferenceRecorder(port=0, out_dir=tmp_path / "good") as good:
                config = make_config(tmp_path, [connector("Quiet", srs.uri),
                                                connector("Healthy", good.uri())])
                async with daemon_stack(config) as st:
                    call, sid, talker = await _start(st, "Quiet", "expire")
                    started = asyncio.get_running_loop().time()
                    try:
                        await st.receiver.wait_events(sid, ["siprec-started", "siprec-error"],
                                                      timeout=5)
                    finally:
                        await talker.stop()
                    took = asyncio.get_running_loop().time() - started
                    # Expiry is due 1.33 s after the 200 (interval - interval/3); callbacks add latency.
                    assert 1.0 < took < 2.5, f"expired after {took:.2f} s (interval 2 s)"
                    hit = error_hit(st.receiver.for_sid(sid))
                    assert hit.params["SiprecErrorCode"] == "900031", hit.params
                    assert "refresh" in hit.params["SiprecError"], hit.params
                    assert hit.params["SiprecErrorPhase"] == "refresh", hit.params
                    assert hit.params["SiprecRecorder"] == srs.uri, hit.params
                    assert await srs.wait(5) == 0, srs.messages()  # the BYE came
                    _, view = await st.api.call(call["call_sid"])
                    assert view["forks"] == []
                    await st.api.end_call(call["call_sid"])
                    await st.serves_a_fresh_call()
        finally:
            for sink in sinks:
                sink.close()

    run(case())


def test_rejected_pause_reinvite(tmp_path: Path, sipp: Any) -> None:
    """Our pause re-INVITE gets 488: the session stays up (no callback), media stays held
    while we asked for the pause, and the resume brings it back on every fork.

    There is no Siprec pause route in the API, so the pause is asked of the daemon's links."""

    async def case() -> None:
        sinks = [MediaSink(), MediaSink()]
        srs = sipp("srs_reject_pause", keys={"rec_port1": str(sinks[0].port),
                                             "rec_port2": str(sinks[1].port)})
        try:
            async with ReferenceRecorder(port=0, out_dir=tmp_path / "good") as good:
                config = make_config(tmp_path, [connector("NoPause", srs.uri),
                                                connector("Healthy", good.uri())])
                async with daemon_stack(config) as st:
                    links = st.daemon.links
                    assert links is not None
                    call, sid, talker = await _start(st, "NoPause", "pause")
                    try:
                        await asyncio.sleep(0.3)
                        assert sinks[0].drain() > 5
                        await links.pause(sid)
                        await eventually(lambda: srs.saw("488 Not Acceptable"), 5, "the 488")
                        await asyncio.sleep(0.3)  # the 488 is in, and its ACK out
                        _, view = await st.api.call(call["call_sid"])
                        assert [f["paused"] for f in view["forks"]] == [True, True]
                        sinks[0].drain(), sinks[1].drain()
                        await asyncio.sleep(0.4)
                        assert sinks[0].drain() == 0 and sinks[1].drain() == 0
                        state = links.session_state(sid)
                        assert state is not None and state.name == "ESTABLISHED", state
                        assert st.receiver.events(sid) == ["siprec-started"]
                        await links.resume(sid)
                        await eventually(lambda: not any(
                            f.paused for f in links.forks(sid)), 5, "forks resumed")
                        await asyncio.sleep(0.4)
                        assert sinks[0].drain() > 10 and sinks[1].drain() > 10
                    finally:
                        await talker.stop()
                    await st.api.end_call(call["call_sid"])
                    assert await srs.wait(5) == 0, srs.messages()
                    await st.receiver.wait_events(sid, ["siprec-started", "siprec-stopped"])
                    await st.serves_a_fresh_call()
        finally:
            for sink in sinks:
                sink.close()

    run(case())


def test_icmp_port_unreachable_on_media(tmp_path: Path, sipp: Any) -> None:
    """The SRS answers with media ports nothing listens on: the forks get ICMP port
    unreachable, the Siprec fails with 900032 and the SRS still gets a BYE."""

    async def case() -> None:
        srs = sipp("srs_answer_plain", keys={"rec_port1": str(free_port()),
                                             "rec_port2": str(free_port())})
        async with ReferenceRecorder(port=0, out_dir=tmp_path / "good") as good:
            config = make_config(tmp_path, [connector("DeadMedia", srs.uri),
                                            connector("Healthy", good.uri())])
            async with daemon_stack(config) as st:
                call, sid, talker = await _start(st, "DeadMedia", "icmp")
                try:
                    await st.receiver.wait_events(sid, ["siprec-started", "siprec-error"])
                finally:
                    await talker.stop()
                hit = error_hit(st.receiver.for_sid(sid))
                assert hit.params["SiprecErrorCode"] == "900032"
                assert "ECONNREFUSED" in hit.params["SiprecError"]
                # An established session's media address died: no SIP status to report.
                assert hit.params["SiprecErrorPhase"] == "established", hit.params
                assert "SiprecErrorSipStatus" not in hit.params and "SiprecRecorder" in hit.params
                assert all(h.signed for h in st.receiver.for_sid(sid))
                assert await srs.wait(5) == 0, srs.messages()  # the best-effort BYE arrived
                assert (await st.api.siprec(call["call_sid"], sid))["status"] == "stopped"
                _, view = await st.api.call(call["call_sid"])
                assert view["forks"] == [] and st.live_forks() == 0
                await st.api.end_call(call["call_sid"])
                await asyncio.sleep(0.2)
                assert st.receiver.events(sid) == ["siprec-started", "siprec-error"]
                await st.serves_a_fresh_call()

    run(case())


def _reset(recorder: ReferenceRecorder) -> int:
    """Abort every TCP connection the recorder holds with SO_LINGER 0: the peer gets RST."""
    n = 0
    for conn in list(recorder._conns):  # noqa: SLF001 - the test reaches in on purpose
        sock = conn.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.writer.transport.abort()
        n += 1
    return n


def test_tcp_connection_reset_mid_dialog(tmp_path: Path) -> None:
    """The SRS's TCP connection is reset while the session is up: the session survives (no
    request was pending), the next keepalive reconnects, and the final BYE reaches the SRS."""

    async def case() -> None:
        async with ReferenceRecorder(port=0, tcp=True, out_dir=tmp_path / "tcp") as tcp, \
                ReferenceRecorder(port=0, out_dir=tmp_path / "good") as good:
            config = make_config(tmp_path, [connector("Tcp", tcp.uri("tcp")),
                                            connector("Healthy", good.uri())])
            # No session timer, OPTIONS keepalives every 0.4 s: traffic after the reset.
            async with daemon_stack(config, session_expires=None,
                                    keepalive_interval=0.4) as st:
                call, sid, talker = await _start(st, "Tcp", "tcp")
                try:
                    await asyncio.sleep(0.2)
                    assert _reset(tcp) == 1
                    options = tcp.requests_seen.get("OPTIONS", 0)
                    await eventually(lambda: tcp.requests_seen.get("OPTIONS", 0) >= options + 2,
                                     4, "keepalives over a new connection")
                    assert len(tcp._conns) == 1  # noqa: SLF001 - reconnected once
                    # No busy loop on the dead connection (media still flows at 100 pps).
                    before = cpu_seconds()
                    await asyncio.sleep(1.0)
                    assert cpu_seconds() - before < 0.3, "CPU spin after the reset"
                    assert st.receiver.events(sid) == ["siprec-started"]
                    assert tcp.sessions[0].state == "established"
                finally:
                    await talker.stop()
                await st.api.end_call(call["call_sid"])
                await st.receiver.wait_events(sid, ["siprec-started", "siprec-stopped"])
                await tcp.wait_for(lambda r: r.sessions[0].state == "ended", timeout=5)
                summary = tcp.sessions[0].summary()
                assert summary["ended_by"] == "src" and summary["totals"]["packets"] > 0
                await st.serves_a_fresh_call()

    run(case())


@pytest.mark.parametrize("odd", ["every-stream-refused", "codec-not-offered"])
def test_srs_200_that_records_nothing_is_an_error(tmp_path: Path, sipp: Any, odd: str) -> None:
    """A 200 whose SDP refuses every stream (port 0), or accepts only a codec we did not offer
    (PCMA for our PCMU): nothing usable would be recorded, so it is a setup error (900030,
    488 "unusable SDP answer") with a BYE, never a siprec-started over silence or noise."""

    async def case() -> None:
        if odd == "every-stream-refused":
            media = {"media1": "m=audio 0 RTP/AVP 0", "media2": "m=audio 0 RTP/AVP 0"}
            expect = "refused every stream"
        else:
            media = {"media1": f"m=audio {free_port()} RTP/AVP 8",
                     "media2": f"m=audio {free_port()} RTP/AVP 8"}
            expect = "none of the offered formats (PCMU/8000)"
        srs = sipp("srs_answer_odd", keys=media)
        async with ReferenceRecorder(port=0, out_dir=tmp_path / "good") as good:
            config = make_config(tmp_path, [connector("Odd", srs.uri),
                                            connector("Healthy", good.uri())])
            async with daemon_stack(config) as st:
                call = await st.api.register()
                talker = Talker(call["ingress"]).start()
                try:
                    sid = await st.api.create_siprec(call["call_sid"], "Odd",
                                                     st.receiver.url("ok", odd))
                    await st.receiver.wait_events(sid, ["siprec-error"])
                finally:
                    await talker.stop()
                hit = error_hit(st.receiver.for_sid(sid))
                assert hit.params["SiprecErrorCode"] == "900030", hit.params
                assert "SIP 488" in hit.params["SiprecError"]
                assert expect in hit.params["SiprecError"], hit.params["SiprecError"]
                assert await srs.wait(5) == 0, srs.messages()  # ACKed and BYEd
                await asyncio.sleep(0.2)
                assert st.receiver.events(sid) == ["siprec-error"]
                _, view = await st.api.call(call["call_sid"])
                assert view["forks"] == [] and st.live_forks() == 0
                await st.api.end_call(call["call_sid"])
                await st.serves_a_fresh_call()

    run(case())


def test_srs_without_an_rtcp_port_keeps_recording(tmp_path: Path, sipp: Any) -> None:
    """Plenty of SRSes ignore RTCP and leave port+1 closed: the ICMP port unreachable our
    sender reports draw must not end a recording whose RTP is received fine."""

    async def case() -> None:
        sinks = [MediaSink(), MediaSink()]
        for sink in sinks:
            sink.rtcp.close()  # RTP is received, RTCP port+1 answers ICMP
        srs = sipp("srs_answer_plain", keys={"rec_port1": str(sinks[0].port),
                                             "rec_port2": str(sinks[1].port)})
        try:
            async with ReferenceRecorder(port=0, out_dir=tmp_path / "good") as good:
                config = make_config(tmp_path, [connector("NoRtcp", srs.uri),
                                                connector("Healthy", good.uri())])
                async with daemon_stack(config) as st:
                    call, sid, talker = await _start(st, "NoRtcp", "rtcp")
                    try:
                        # The first sender reports go out within ~3 s.
                        # ICMP for our sender reports is counted apart from RTP errors
                        # (rtcp_send_error), so it does not fail the session.
                        await eventually(lambda: False if not st.engine.calls else all(
                            f.closed or f.counters()["rtcp_send_errors"] > 0
                            for c in st.engine.calls for f in c.forks), 5, "RTCP refused")
                        assert all(f.counters()["send_errors"] == 0
                                   for c in st.engine.calls for f in c.forks)
                        await asyncio.sleep(0.3)
                        assert st.receiver.events(sid) == ["siprec-started"]
                        assert sinks[0].drain() > 50 and sinks[1].drain() > 50
                    finally:
                        await talker.stop()
                    await st.api.end_call(call["call_sid"])
                    assert await srs.wait(5) == 0, srs.messages()
        finally:
            for sink in sinks:
                sink.close()

    run(case())


def test_byes_crossing(tmp_path: Path, sipp: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Our BYE and the SRS's BYE cross: the SRS's is answered, the end is reported once."""

    async def case() -> None:
        srs = sipp("srs_bye_cross", keys={"rec_port1": str(free_port()),
                                          "rec_port2": str(free_port())})
        async with ReferenceRecorder(port=0, out_dir=tmp_path / "good") as good:
            config = make_config(tmp_path, [connector("Crossing", srs.uri),
                                            connector("Healthy", good.uri())])
            async with daemon_stack(config) as st:
                call = await st.api.register()
                sid = await st.api.create_siprec(call["call_sid"], "Crossing",
                                                 st.receiver.url("ok", "cross"))
                await st.receiver.wait_events(sid, ["siprec-started"])
                await st.api.stop_siprec(call["call_sid"], sid)
                assert await srs.wait(5) == 0, srs.messages()
                await st.receiver.wait_events(sid, ["siprec-started", "siprec-stopped"])
                await asyncio.sleep(0.3)
                assert st.receiver.events(sid) == ["siprec-started", "siprec-stopped"]
                await st.api.end_call(call["call_sid"])
                await st.serves_a_fresh_call()

    with caplog.at_level("ERROR", logger="mediafork"):
        run(case())
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")], caplog.text


def test_we_refresh_and_the_srs_answers(tmp_path: Path) -> None:
    """RFC 4028 with us as refresher (Session-Expires 2 s, echoed by the recorder with
    refresher=uac): we refresh every second, the session outlives several intervals, and
    the refreshes do not disturb the media."""

    async def case() -> None:
        async with ReferenceRecorder(port=0, out_dir=tmp_path / "rec") as rec:
            config = make_config(tmp_path, [connector("Healthy", rec.uri())])
            async with daemon_stack(config, session_expires=2) as st:
                call, sid, talker = await _start(st, "Healthy", "refresh-us")
                try:
                    await asyncio.sleep(3.5)
                    (session,) = rec.sessions
                    summary = session.summary()
                    refreshes = summary["reinvites"] + summary["updates"]
                    assert refreshes >= 2, summary
                    assert session.state == "established"
                    assert st.receiver.events(sid) == ["siprec-started"]
                    assert summary["totals"]["lost"] == 0
                finally:
                    await talker.stop()
                await st.api.end_call(call["call_sid"])
                await st.receiver.wait_events(sid, ["siprec-started", "siprec-stopped"])
                assert rec.sessions[0].summary()["ended_by"] == "src"

    run(case())
