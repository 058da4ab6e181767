"""Fault matrix, setup phase: the SRS refuses, stays silent, cannot be reached or trusted, a
standby takes over, and the Siprec (or the whole call) goes away before the SRS answers.

Every case asserts the callbacks (order, signature, error code and text), the resource via
GET, the engine (no forks left, allocations back to where they were), the SRS's view, and that
the daemon then serves a fresh call.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from mediafork.srs import ReferenceRecorder
from mediafork.tlsutil import self_signed

from .harness import (
    API,
    Stack,
    allocations_back_to,
    allocations_now,
    connector,
    cpu_seconds,
    daemon_stack,
    error_hit,
    eventually,
    free_port,
    make_config,
    open_fds,
    run,
)


async def _fails_setup(st: Stack, connector_name: str, expect: list[str],
                       detail: dict[str, str | None] | None = None) -> tuple[str, Any]:
    """Start a Siprec that must fail; check callbacks, GET and forks; return (sid, error hit).
    ``detail``: the error callback's extra parameters, None for one that must be absent."""
    call = await st.api.register()
    sid = await st.api.create_siprec(call["call_sid"], connector_name,
                                     st.receiver.url("ok", "fail"))
    await st.receiver.wait_events(sid, ["siprec-error"])
    await asyncio.sleep(0.2)  # nothing else may follow the error
    hits = st.receiver.for_sid(sid)
    assert [h.event for h in hits] == ["siprec-error"], "no siprec-started before a failed setup"
    assert all(h.signed for h in hits)
    hit = error_hit(hits)
    assert hit.params["SiprecErrorCode"] == "900030"
    for text in expect:
        assert text in hit.params["SiprecError"], hit.params["SiprecError"]
    for name, value in (detail or {}).items():
        assert hit.params.get(name) == value, (name, hit.params)
    assert (await st.api.siprec(call["call_sid"], sid))["status"] == "stopped"
    status, view = await st.api.call(call["call_sid"])
    assert status == 200 and view["status"] == "live"  # the call itself is unharmed
    assert view["forks"] == [] and st.live_forks() == 0  # the failed session's forks are gone
    await st.api.end_call(call["call_sid"])
    return sid, hit


@pytest.mark.parametrize("status", [403, 486, 503, 603])
def test_srs_answers_an_error(tmp_path: Path, status: int) -> None:
    async def case() -> None:
        async with ReferenceRecorder(port=0, out_dir=tmp_path / "bad", answer=status) as bad, \
                ReferenceRecorder(port=0, out_dir=tmp_path / "good") as good:
            config = make_config(tmp_path, [connector("Faulty", bad.uri()),
                                            connector("Healthy", good.uri())])
            async with daemon_stack(config) as st:
                allocations = allocations_now()
                await _fails_setup(st, "Faulty", [f"SIP {status}", "setup phase", bad.uri()], {
                    # What an application can act on without parsing SiprecError's text.
                    "SiprecErrorSipStatus": str(status), "SiprecErrorPhase": "set-up",
                    "SiprecRecorder": bad.uri(),
                    "SiprecErrorReason": f'SIP;cause={status};text="mediafork-srs --answer"'})
                assert [s.state for s in bad.sessions] == ["rejected"]
                await allocations_back_to(allocations)
                metrics = await st.api.metrics()
                assert metrics['mediafork_callback_deliveries_total{outcome="delivered"}'] == 1
                assert metrics['mediafork_forks{state="active"}'] == 0
                assert metrics[f'mediafork_sip_responses_total{{class="{status // 100}xx"}}'] >= 1
                assert metrics['mediafork_siprecs{status="starting"}'] == 0
                assert metrics['mediafork_siprecs{status="in-progress"}'] == 0
                await st.serves_a_fresh_call()

    run(case())


def test_srs_never_answers_timer_b(tmp_path: Path) -> None:
    async def case() -> None:
        async with ReferenceRecorder(port=0, out_dir=tmp_path / "bad", no_answer=True) as bad, \
                ReferenceRecorder(port=0, out_dir=tmp_path / "good") as good:
            config = make_config(tmp_path, [connector("Faulty", bad.uri()),
                                            connector("Healthy", good.uri())])
            async with daemon_stack(config) as st:
                started = time.monotonic()
                _, hit = await _fails_setup(st, "Faulty", ["SIP 408", "setup phase"], {
                    "SiprecErrorSipStatus": "408", "SiprecErrorPhase": "set-up",
                    "SiprecErrorReason": None})  # a timeout has no response to quote
                # Timer B is 64*T1 = 1.28 s with T1 = 20 ms: not sooner, not much later.
                assert 1.2 < hit.at - started < 4.0, hit.at - started
                assert bad.sessions[0].state in ("unanswered", "cancelled")
                before = cpu_seconds()  # the failed transaction leaves no timer spinning
                await asyncio.sleep(1.0)
                assert cpu_seconds() - before < 0.2
                await st.serves_a_fresh_call()

    run(case())


@pytest.mark.parametrize("problem", ["untrusted", "wrong-host"])
def test_tls_handshake_failure(tmp_path: Path, problem: str) -> None:
    """The SRS's certificate is signed by nobody the daemon trusts, or is trusted but names
    another host: the handshake fails, the Siprec fails with 503, nothing reaches the SRS."""

    async def case() -> None:
        if problem == "untrusted":
            srs_cert, srs_key = self_signed(tmp_path / "srs", "srs")
            other_ca, _ = self_signed(tmp_path / "ca", "someone-else")
        else:  # trusted (it is its own CA) but issued for 127.0.0.2, served on 127.0.0.1
            srs_cert, srs_key = self_signed(tmp_path / "srs", "srs", host="127.0.0.2")
            other_ca = srs_cert
        async with ReferenceRecorder(port=0, tcp=True, out_dir=tmp_path / "bad",
                                     tls_cert=str(srs_cert), tls_key=str(srs_key)) as bad, \
                ReferenceRecorder(port=0, out_dir=tmp_path / "good") as good:
            # The daemon trusts only another CA: the SRS's certificate must be refused.
            config = make_config(tmp_path, [connector("Faulty", bad.uri("tls")),
                                            connector("Healthy", good.uri())],
                                 tls_ca_file=other_ca)
            async with daemon_stack(config) as st:
                await st.serves_a_fresh_call()  # warm up: pools, executor threads
                allocations, fds = allocations_now(), open_fds()
                for _ in range(3):  # each attempt must release its socket
                    _, hit = await _fails_setup(st, "Faulty", ["SIP 503", "setup phase"])
                    assert "CERTIFICATE_VERIFY_FAILED" in hit.params["SiprecError"], \
                        hit.params["SiprecError"]
                assert bad.sessions == []  # nothing ever reached the SRS's SIP layer
                await allocations_back_to(allocations)
                await eventually(lambda: open_fds() <= fds, 3, f"fds back to {fds}")
                await st.serves_a_fresh_call()

    run(case())


def test_primary_down_standby_up(tmp_path: Path) -> None:
    """Primary not running (ICMP port unreachable over UDP, connection refused over TCP) and
    a primary that never answers (Timer B): each fails over to the standby, which records;
    only siprec-started is reported."""

    async def case() -> None:
        dead = f"sip:srs@127.0.0.1:{free_port()}"
        dead_tcp = f"sip:srs@127.0.0.1:{free_port(kind=socket.SOCK_STREAM)};transport=tcp"
        async with ReferenceRecorder(port=0, out_dir=tmp_path / "mute", no_answer=True) as mute, \
                ReferenceRecorder(port=0, out_dir=tmp_path / "standby") as standby:
            config = make_config(tmp_path, [
                connector("DeadPrimary", dead, standby.uri()),
                connector("DeadTcpPrimary", dead_tcp, standby.uri()),
                connector("MutePrimary", mute.uri(), standby.uri()),
                connector("Healthy", standby.uri()),
            ])
            async with daemon_stack(config) as st:
                for name in ("DeadPrimary", "DeadTcpPrimary", "MutePrimary"):
                    call = await st.api.register()
                    sid = await st.api.create_siprec(call["call_sid"], name,
                                                     st.receiver.url("ok", name))
                    await st.receiver.wait_events(sid, ["siprec-started"], timeout=6)
                    status, view = await st.api.call(call["call_sid"])
                    assert len(view["forks"]) == 2
                    assert all(f["destination"]["port"] for f in view["forks"])
                    await st.api.end_call(call["call_sid"])
                    await st.receiver.wait_events(sid, ["siprec-started", "siprec-stopped"])
                    assert all(h.signed for h in st.receiver.for_sid(sid))
                assert [s.state for s in standby.sessions] == ["ended"] * 3
                assert all(s.summary()["ended_by"] == "src" for s in standby.sessions)
                assert mute.sessions[0].state in ("unanswered", "cancelled")
                await st.serves_a_fresh_call()

    run(case())


@pytest.mark.parametrize("how", ["call-ended", "siprec-stopped"])
def test_gone_before_the_srs_answers_cancel_no_leak_no_spin(
        tmp_path: Path, sipp: Any, how: str) -> None:
    """The SRS rings (180) and never answers; the call ends (or the Siprec is stopped) first:
    CANCEL goes out, the INVITE ends with 487, siprec-stopped only, nothing leaks, no spin."""

    async def case() -> None:
        ringing = sipp("srs_ring_then_cancel")
        async with ReferenceRecorder(port=0, out_dir=tmp_path / "good") as good:
            config = make_config(tmp_path, [connector("Ringing", ringing.uri),
                                            connector("Healthy", good.uri())])
            async with daemon_stack(config) as st:
                await st.serves_a_fresh_call()  # warm up: lazy sockets, HTTP pools, threads
                await asyncio.sleep(0.3)
                allocations, fds = allocations_now(), open_fds()
                call = await st.api.register()
                sid = await st.api.create_siprec(call["call_sid"], "Ringing",
                                                 st.receiver.url("ok", "ring"))
                deadline = asyncio.get_running_loop().time() + 5
                while not ringing.saw("180 Ringing"):
                    assert asyncio.get_running_loop().time() < deadline, ringing.messages()
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.1)  # let the 180 reach the daemon
                if how == "call-ended":
                    await st.api.end_call(call["call_sid"])
                else:
                    await st.api.stop_siprec(call["call_sid"], sid)
                assert await ringing.wait(5) == 0, ringing.messages()  # CANCEL, 487, ACK
                await st.receiver.wait_events(sid, ["siprec-stopped"])
                await asyncio.sleep(0.3)
                assert st.receiver.events(sid) == ["siprec-stopped"]
                assert all(h.signed for h in st.receiver.for_sid(sid))
                assert (await st.api.siprec(call["call_sid"], sid))["status"] == "stopped"
                if how == "siprec-stopped":
                    status, view = await st.api.call(call["call_sid"])
                    assert view["status"] == "live" and view["forks"] == []
                    await st.api.end_call(call["call_sid"])
                # No spin: the whole process (loop, media worker, SIP timers) stays idle.
                before = cpu_seconds()
                await asyncio.sleep(2.0)
                spent = cpu_seconds() - before
                assert spent < 0.4, f"{spent:.2f} s of CPU in 2 s after the early end"
                await allocations_back_to(allocations)
                assert open_fds() <= fds, "sockets leaked"
                assert st.live_forks() == 0
                await st.serves_a_fresh_call()

    run(case())


def test_stopped_while_invite_pending_without_provisional(tmp_path: Path) -> None:
    """The SRS sends nothing at all (no 100/180): stopping the Siprec ends it at once
    (siprec-stopped, no started), the late INVITE transaction does not resurrect it."""

    async def case() -> None:
        async with ReferenceRecorder(port=0, out_dir=tmp_path / "mute", no_answer=True) as mute, \
                ReferenceRecorder(port=0, out_dir=tmp_path / "good") as good:
            config = make_config(tmp_path, [connector("Mute", mute.uri()),
                                            connector("Healthy", good.uri())])
            async with daemon_stack(config) as st:
                call = await st.api.register()
                sid = await st.api.create_siprec(call["call_sid"], "Mute",
                                                 st.receiver.url("ok", "mute"))
                await asyncio.sleep(0.2)
                t0 = asyncio.get_running_loop().time()
                await st.api.stop_siprec(call["call_sid"], sid)
                assert asyncio.get_running_loop().time() - t0 < 2.0
                await st.receiver.wait_events(sid, ["siprec-stopped"])
                await asyncio.sleep(1.6)  # past Timer B: no late error after the stop
                assert st.receiver.events(sid) == ["siprec-stopped"]
                assert (await st.api.siprec(call["call_sid"], sid))["status"] == "stopped"
                status, view = await st.api.call(call["call_sid"])
                assert view["forks"] == []
                # The call can record again after the abandoned attempt.
                again = await st.api.create_siprec(call["call_sid"], "Healthy",
                                                   st.receiver.url("ok", "again"))
                await st.receiver.wait_events(again, ["siprec-started"])
                await st.api.end_call(call["call_sid"])
                await st.receiver.wait_events(again, ["siprec-started", "siprec-stopped"])
                await st.serves_a_fresh_call()

    run(case())


@pytest.mark.parametrize("scenario", ["srs_cancel_race", "srs_late_answer"])
def test_srs_answers_after_we_gave_up_ack_and_bye(tmp_path: Path, sipp: Any,
                                                   scenario: str) -> None:
    """The Siprec is stopped while the INVITE is pending and the SRS answers 200 anyway
    (racing our CANCEL, or late with no provisional so no CANCEL was allowed): the 2xx is
    ACKed and BYEd (sipp checks), the client sees only siprec-stopped, nothing leaks."""

    async def case() -> None:
        srs = sipp(scenario, keys={"rec_port1": str(free_port()), "rec_port2": str(free_port())})
        async with ReferenceRecorder(port=0, out_dir=tmp_path / "good") as good:
            config = make_config(tmp_path, [connector("Racy", srs.uri),
                                            connector("Healthy", good.uri())])
            async with daemon_stack(config) as st:
                await st.serves_a_fresh_call()
                allocations = allocations_now()
                call = await st.api.register()
                sid = await st.api.create_siprec(call["call_sid"], "Racy",
                                                 st.receiver.url("ok", "racy"))
                if scenario == "srs_cancel_race":
                    deadline = asyncio.get_running_loop().time() + 5
                    while not srs.saw("180 Ringing"):
                        assert asyncio.get_running_loop().time() < deadline, srs.messages()
                        await asyncio.sleep(0.02)
                    await asyncio.sleep(0.1)
                else:
                    await asyncio.sleep(0.2)
                await st.api.stop_siprec(call["call_sid"], sid)
                await st.receiver.wait_events(sid, ["siprec-stopped"])
                assert await srs.wait(6) == 0, srs.messages()  # ACK and BYE for the 2xx
                await asyncio.sleep(0.3)
                assert st.receiver.events(sid) == ["siprec-stopped"]
                _, view = await st.api.call(call["call_sid"])
                assert view["forks"] == [] and view["status"] == "live"
                await st.api.end_call(call["call_sid"])
                await allocations_back_to(allocations)
                await st.serves_a_fresh_call()

    run(case())


def test_failed_siprecs_give_back_their_streams(tmp_path: Path) -> None:
    """A call may fork four streams. Siprecs that failed (SRS refused) hold none: two more
    both_tracks Siprecs fit afterwards, and a third is refused by the budget, not by a leak."""

    async def case() -> None:
        async with ReferenceRecorder(port=0, out_dir=tmp_path / "bad", answer=486) as bad, \
                ReferenceRecorder(port=0, out_dir=tmp_path / "good") as good:
            config = make_config(tmp_path, [connector("Faulty", bad.uri()),
                                            connector("Healthy", good.uri())])
            async with daemon_stack(config) as st:
                call = await st.api.register()
                cs = call["call_sid"]
                for i in range(3):
                    sid = await st.api.create_siprec(cs, "Faulty", st.receiver.url("ok", f"f{i}"))
                    await st.receiver.wait_events(sid, ["siprec-error"])
                ok = [await st.api.create_siprec(cs, "Healthy", st.receiver.url("ok", f"o{i}"))
                      for i in range(2)]
                for sid in ok:
                    await st.receiver.wait_events(sid, ["siprec-started"])
                status, body = await st.api.request(
                    "POST", f"{API}/Calls/{cs}/Siprec.json",
                    data={"ConnectorName": "Healthy", "Track": "inbound_track"})
                assert status == 400, body  # the four streams are in use
                _, view = await st.api.call(cs)
                assert len(view["forks"]) == 4
                await st.api.end_call(cs)
                for sid in ok:
                    await st.receiver.wait_events(sid, ["siprec-started", "siprec-stopped"])

    run(case())
