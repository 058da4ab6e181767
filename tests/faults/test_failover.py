"""Recorder resilience through the whole daemon: a session lost mid-call fails over to the
standby reference recorder with a signed ``siprec-failover`` callback at a real HTTP server;
``[sip.health]`` marks a dead primary down (``mediafork_recorder_up``) so a new Siprec skips
it without a Timer B."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
import sqlite3
from pathlib import Path
from typing import Any

from mediafork.sip.recorder_health import HealthConfig
from mediafork.srs import ReferenceRecorder

from .harness import (
    Talker,
    connector,
    daemon_stack,
    free_port,
    make_config,
    run,
)


def test_icmp_on_media_fails_over_to_the_standby_with_a_failover_callback(
    tmp_path: Path, sipp: Any
) -> None:
    async def case() -> None:
        # The primary answers with media ports nothing listens on: ICMP on the forks.
        srs = sipp("srs_answer_plain", keys={"rec_port1": str(free_port()),
                                             "rec_port2": str(free_port())})
        async with ReferenceRecorder(port=0, out_dir=tmp_path / "standby") as standby:
            config = make_config(tmp_path, [connector("Failover", srs.uri, standby.uri())])
            async with daemon_stack(config) as st:
                call = await st.api.register()
                talker = Talker(call["ingress"]).start()
                sid = await st.api.create_siprec(call["call_sid"], "Failover",
                                                 st.receiver.url("ok", "failover"))
                try:
                    await st.receiver.wait_events(sid, ["siprec-started", "siprec-failover"])
                    await st.receiver.wait(lambda: bool(standby.sessions) and standby.sessions[0]
                                           .summary()["totals"]["packets"] > 20,
                                           what="media at the standby")
                finally:
                    await talker.stop()
                (hit,) = [h for h in st.receiver.for_sid(sid) if h.event == "siprec-failover"]
                params = hit.params
                assert hit.signed
                assert params["SiprecRecorder"].endswith(f":{standby.address[1]}"), params
                assert params["SiprecPreviousRecorder"] == srs.uri
                assert params["SiprecFailoverCount"] == "1"
                assert params["SiprecFailoverPhase"] == "established"
                assert "ECONNREFUSED" in params["SiprecFailoverReason"]
                assert "SiprecError" not in params and "SiprecErrorCode" not in params
                assert await srs.wait(5) == 0, srs.messages()  # the lost dialog got its BYE
                view = await st.api.siprec(call["call_sid"], sid)
                assert view["status"] == "in-progress"
                # A crash from now on BYEs the standby's session: its dialog replaced the lost one.
                with contextlib.closing(sqlite3.connect(config.storage.path)) as db:
                    (dialog,), = db.execute("SELECT dialog FROM siprec_dialogs WHERE sid = ?",
                                            (sid,)).fetchall()
                record = json.loads(dialog)
                assert record["srs_uri"].endswith(f":{standby.address[1]}"), record
                await st.api.end_call(call["call_sid"])
                await st.receiver.wait_events(
                    sid, ["siprec-started", "siprec-failover", "siprec-stopped"])
                await asyncio.sleep(0.2)
                assert st.receiver.events(sid) == [
                    "siprec-started", "siprec-failover", "siprec-stopped"]
                (session,) = standby.sessions
                assert session.summary()["ended_by"] == "src"

    run(case())


def test_health_checks_mark_a_silent_primary_down_and_new_siprecs_skip_it(
        tmp_path: Path) -> None:
    async def case() -> None:
        # The primary never answers anything (no ICMP either): without the down mark a
        # Siprec would wait Timer B (64*T1 = 1.28 s here) before trying the standby.
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", 0))
        silent.setblocking(False)
        port = silent.getsockname()[1]
        try:
            async with ReferenceRecorder(port=0, out_dir=tmp_path / "standby") as standby:
                config = make_config(tmp_path, [connector(
                    "Skips", f"sip:recorder@127.0.0.1:{port}", standby.uri())])
                config = dataclasses.replace(config, sip=dataclasses.replace(
                    config.sip, health=HealthConfig(interval=0.2, timeout=0.3, down_after=2)))
                async with daemon_stack(config) as st:
                    down = f'mediafork_recorder_up{{recorder="127.0.0.1:{port}",transport="udp"}}'
                    metrics: dict[str, float] = {}
                    for _ in range(60):
                        metrics = await st.api.metrics()
                        if metrics.get(down) == 0:
                            break
                        await asyncio.sleep(0.05)
                    assert metrics.get(down) == 0, sorted(k for k in metrics if "recorder" in k)
                    up = (f'mediafork_recorder_up{{recorder="127.0.0.1:{standby.address[1]}",'
                          'transport="udp"}')
                    assert metrics.get(up) == 1
                    call = await st.api.register()
                    loop = asyncio.get_running_loop()
                    began = loop.time()
                    sid = await st.api.create_siprec(call["call_sid"], "Skips",
                                                     st.receiver.url("ok", "skip"))
                    await st.receiver.wait_events(sid, ["siprec-started"], timeout=3.0)
                    assert loop.time() - began < 1.0
                    assert len(standby.sessions) == 1
                    await st.api.end_call(call["call_sid"])
                    await st.receiver.wait_events(sid, ["siprec-started", "siprec-stopped"])
            got = []
            with contextlib.suppress(BlockingIOError):
                while True:
                    got.append(silent.recv(65536))
            assert got and all(d.startswith(b"OPTIONS ") for d in got)  # never an INVITE
        finally:
            silent.close()

    run(case())
