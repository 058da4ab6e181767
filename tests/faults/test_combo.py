"""Pause, failover and resume through the whole daemon (issue 11's features together): the
REST API pauses a Siprec, its recorder dies (the keepalive OPTIONS gets ICMP), the standby
reference recorder takes over while paused, and the REST API resumes it there. Status
callbacks at a real HTTP server, the resource's ``error`` and ``streams`` fields, and a
failover that finds no recorder."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

from sip_e2e.harness import Recorder
from sip_e2e.minisrs import MiniSrs

from mediafork.srs import ReferenceRecorder

from .harness import (
    API,
    Stack,
    Talker,
    connector,
    daemon_stack,
    eventually,
    make_config,
    run,
)

KEEPALIVE: dict[str, Any] = {"keepalive_interval": 0.3, "session_expires": None}
"""No session timer with MiniSrs answers: a dead recorder is found by the next OPTIONS."""


async def _set_status(st: Stack, call_sid: str, sid: str, status: str) -> dict[str, Any]:
    code, body = await st.api.request("POST", f"{API}/Calls/{call_sid}/Siprec/{sid}.json",
                                      data={"Status": status})
    assert code == 200, body
    return dict(body)


def _standby_streams(standby: ReferenceRecorder) -> dict[str, dict[str, Any]]:
    (session,) = standby.sessions
    return {s["label"]: s for s in session.summary()["streams"]}


def test_pause_then_failover_then_resume_keeps_the_standby_silent_until_resumed(
    tmp_path: Path
) -> None:
    async def case() -> None:
        rec1, rec2 = Recorder(), Recorder()
        primary = await MiniSrs(media=[("127.0.0.1", rec1.port),
                                       ("127.0.0.1", rec2.port)]).start()
        try:
            async with ReferenceRecorder(port=0, out_dir=tmp_path / "standby") as standby:
                config = make_config(tmp_path, [connector("Combo", primary.uri,
                                                          standby.uri())])
                async with daemon_stack(config, **KEEPALIVE) as st:
                    call = await st.api.register()
                    call_sid = call["call_sid"]
                    talker = Talker(call["ingress"]).start()
                    try:
                        await _paused_failover_resumed(st, call_sid, primary, rec1, standby)
                    finally:
                        await talker.stop()
                    await st.api.end_call(call_sid)
                    sid = st.receiver.hits[0].sid
                    await st.receiver.wait_events(sid, [
                        "siprec-started", "siprec-paused", "siprec-failover",
                        "siprec-resumed", "siprec-stopped"])
                    await asyncio.sleep(0.2)
                    assert st.receiver.events(sid) == [
                        "siprec-started", "siprec-paused", "siprec-failover",
                        "siprec-resumed", "siprec-stopped"]
                    assert all(h.signed for h in st.receiver.for_sid(sid))
        finally:
            await primary.close()
            rec1.close()
            rec2.close()

    run(case())


async def _paused_failover_resumed(st: Stack, call_sid: str, primary: MiniSrs,
                                   rec1: Recorder, standby: ReferenceRecorder) -> None:
    sid = await st.api.create_siprec(call_sid, "Combo", st.receiver.url("ok", "combo"))
    await st.receiver.wait_events(sid, ["siprec-started"])
    assert len(await rec1.receive(10)) == 10  # media at the primary
    assert (await _set_status(st, call_sid, sid, "paused"))["status"] == "paused"
    await st.receiver.wait_events(sid, ["siprec-started", "siprec-paused"])
    await eventually(lambda: len({m.cseq[0] for _, m in primary.requests("INVITE")}) == 2)
    before = {s["label"]: s["sent"] for s in (await st.api.siprec(call_sid, sid))["streams"]}
    assert all(before.values()), before

    await primary.close()  # its process is gone: the next keepalive gets ICMP
    await st.receiver.wait_events(sid, ["siprec-started", "siprec-paused", "siprec-failover"])
    await eventually(lambda: bool(standby.sessions), what="the standby's session")
    # The standby is told at once that the recording is paused, and gets nothing meanwhile.
    (session,) = standby.sessions
    await eventually(lambda: ["inactive", "inactive"] in session.summary()["offered_directions"],
                     what="a=inactive at the standby")
    view = await st.api.siprec(call_sid, sid)
    assert view["status"] == "paused"
    assert view.get("error") is None  # a failover is not an error
    await asyncio.sleep(0.6)  # 30 packets per track offered meanwhile
    assert {k: s["datagrams"] for k, s in _standby_streams(standby).items()} == {"1": 0, "2": 0}
    view = await st.api.siprec(call_sid, sid)
    # The same forks: their counters go on from before the failover (nothing sent while
    # paused), they are not reset.
    assert {s["label"]: s["sent"] for s in view["streams"]} == before

    assert (await _set_status(st, call_sid, sid, "in-progress"))["status"] == "in-progress"
    await st.receiver.wait_events(sid, ["siprec-started", "siprec-paused", "siprec-failover",
                                        "siprec-resumed"])
    await eventually(lambda: all(s["packets"] >= 20 for s in _standby_streams(standby).values()),
                     timeout=5.0, what="media at the standby after resume")
    view = await st.api.siprec(call_sid, sid)
    assert view["status"] == "in-progress" and view.get("error") is None
    after = {s["label"]: s["sent"] for s in view["streams"]}
    assert all(after[k] >= before[k] + 20 for k in before), (before, after)
    (hit,) = [h for h in st.receiver.for_sid(sid) if h.event == "siprec-failover"]
    assert hit.params["SiprecPreviousRecorder"] == primary.uri
    assert "SiprecError" not in hit.params


def test_a_failed_failover_is_the_error_with_both_recorders(tmp_path: Path) -> None:
    async def case() -> None:
        rec1, rec2 = Recorder(), Recorder()
        primary = await MiniSrs(media=[("127.0.0.1", rec1.port),
                                       ("127.0.0.1", rec2.port)]).start()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            dead = f"sip:srs@127.0.0.1:{sock.getsockname()[1]}"  # closed: ICMP
        try:
            config = make_config(tmp_path, [connector("Combo", primary.uri, dead)])
            async with daemon_stack(config, **KEEPALIVE) as st:
                call = await st.api.register()
                call_sid = call["call_sid"]
                sid = await st.api.create_siprec(call_sid, "Combo", st.receiver.url("ok", "x"))
                await st.receiver.wait_events(sid, ["siprec-started"])
                await primary.close()
                await st.receiver.wait_events(sid, ["siprec-started", "siprec-error"])
                view = await st.wait_stopped(call_sid, sid)
                error = view["error"]
                assert error["code"] == 900031 and "failover failed" in error["message"]
                assert error["recorder"] == dead
                assert error["previous_recorder"] == primary.uri
                assert view["streams"] == []
                (hit,) = [h for h in st.receiver.for_sid(sid) if h.event == "siprec-error"]
                assert hit.params["SiprecRecorder"] == dead
                assert hit.params["SiprecPreviousRecorder"] == primary.uri
                await asyncio.sleep(0.2)
                assert st.receiver.events(sid) == ["siprec-started", "siprec-error"]
                await st.api.end_call(call_sid)
        finally:
            await primary.close()
            rec1.close()
            rec2.close()

    run(case())
