"""Fault matrix, the process itself: SIGTERM with 100 live recording sessions, and SIGKILL
with sessions and recordings in progress followed by a restart on the same data directory.

The daemon is ``mediafork serve --config`` in a subprocess (the real entry point, its signal
handlers and exit code); the SRS and the callback receiver run in the test's loop. Both cases
are the slowest of the matrix (marked ``slow``; still bounded, and run by scripts/test).
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from mediafork.srs import ReferenceRecorder

from .harness import (
    API,
    Api,
    ChildDaemon,
    Receiver,
    Talker,
    connector,
    daemon_stack,
    make_config,
    media_range,
    run,
)

SESSIONS = 100
SHUTDOWN_BOUND = 10.0
"""``Daemon.shutdown_timeout``: the exit must come within it (plus process start-up slack)."""


@pytest.mark.slow
def test_sigterm_with_100_live_sessions(tmp_path: Path) -> None:
    async def case() -> None:
        receiver = await Receiver().start()
        recorder = await ReferenceRecorder(port=0, out_dir=tmp_path / "srs",
                                           rtcp_interval=5.0).start()
        # Plus a few Siprecs whose INVITE is still pending at SIGTERM (the SRS never answers,
        # and the child runs the default timers: Timer B would be 32 s).
        mute = await ReferenceRecorder(port=0, out_dir=tmp_path / "mute", no_answer=True).start()
        config = make_config(tmp_path, [connector("Healthy", recorder.uri()),
                                        connector("Mute", mute.uri())],
                             port_range=media_range(3000))  # ~610 ports needed
        child = ChildDaemon(config, tmp_path)
        api: Api | None = None
        try:
            api = Api(await child.ready())
            calls = [(await api.register())["call_sid"] for _ in range(SESSIONS)]
            gate = asyncio.Semaphore(10)

            async def start(call_sid: str) -> str:
                async with gate:
                    return await api.create_siprec(call_sid, "Healthy", receiver.url("ok", "t"),
                                                   track="inbound_track")

            sids = await asyncio.gather(*(start(c) for c in calls))
            pending = [await api.create_siprec(c, "Mute", receiver.url("ok", "p"),
                                               track="outbound_track") for c in calls[:5]]
            await receiver.wait(lambda: all(receiver.events(s) == ["siprec-started"]
                                            for s in sids), 20, "100 siprec-started")
            assert sum(1 for s in recorder.sessions if s.state == "established") == SESSIONS
            metrics = await api.metrics()
            assert metrics['mediafork_siprecs{status="in-progress"}'] == SESSIONS
            assert metrics['mediafork_siprecs{status="starting"}'] == len(pending)
            assert metrics['mediafork_forks{state="active"}'] == SESSIONS

            sigterm_at = time.monotonic()
            child.signal(signal.SIGTERM)
            code = await child.wait(SHUTDOWN_BOUND + 5)
            took = time.monotonic() - sigterm_at
            assert code == 0, child.log.read_text()[-3000:]
            assert took < SHUTDOWN_BOUND, f"exit took {took:.1f} s"
            # Every recording session got its BYE, and every Siprec its signed stopped
            # callback, before the process exited.
            await recorder.wait_for(lambda r: all(s.state == "ended" for s in r.sessions), 3)
            ended_by = {s.summary()["ended_by"] for s in recorder.sessions}
            assert ended_by == {"src"}, ended_by
            assert len(recorder.sessions) == SESSIONS
            for sid in sids:
                assert receiver.events(sid) == ["siprec-started", "siprec-stopped"], sid
            for sid in pending:  # never started, so stopped is all they get
                assert receiver.events(sid) == ["siprec-stopped"], sid
            assert all(h.signed for h in receiver.hits)
            assert "Traceback" not in child.log.read_text()
        finally:
            if api is not None:
                await api.close()
            child.kill()
            await recorder.stop()
            await mute.stop()
            await receiver.stop()

        # The data directory is clean for the next start: nothing to reconcile (no
        # siprec-error), the calls the signal ended are not live, and a fresh call works.
        async with ReferenceRecorder(port=0, out_dir=tmp_path / "srs2") as fresh:
            again = make_config(tmp_path, [connector("Healthy", fresh.uri())])
            async with daemon_stack(again) as st:
                status, _ = await st.api.call(calls[0])
                assert status == 404
                status, body = await st.api.request("GET", f"{API}/Calls/{calls[0]}/Siprec.json")
                assert status == 200 and [s["status"] for s in body["siprec"]] == ["stopped"] * 2
                await st.serves_a_fresh_call()
                assert not [h for h in st.receiver.hits if h.event == "siprec-error"]

    run(case(), timeout=90)


@pytest.mark.slow
def test_sigkill_then_restart_reconciles(tmp_path: Path) -> None:
    """kill -9 with two Siprecs and three recordings in progress (two with audio on disk, one
    that never got a packet); restart on the same data directory: the Siprecs read stopped
    with siprec-error "engine restarted" (900012), the recorder's two sessions get a BYE from
    the new process, recordings read completed (a playable WAV) or absent, every callback
    arrives signed, and a fresh call works."""

    async def case() -> None:
        receiver = await Receiver().start()
        recorder = await ReferenceRecorder(port=0, out_dir=tmp_path / "srs").start()
        config = make_config(tmp_path, [connector("Healthy", recorder.uri())],
                             port_range=media_range(300))
        child = ChildDaemon(config, tmp_path)
        api: Api | None = None
        talkers: list[Talker] = []
        try:
            api = Api(await child.ready())
            calls = [await api.register() for _ in range(3)]
            siprecs = []
            recordings = []
            for i, call in enumerate(calls):
                if i < 2:  # the third call only has a recording, and no audio ever
                    talkers.append(Talker(call["ingress"]).start())
                    siprecs.append(await api.create_siprec(
                        call["call_sid"], "Healthy", receiver.url("ok", f"s{i}")))
                status, body = await api.request(
                    "POST", f"{API}/Calls/{call['call_sid']}/Recordings.json",
                    data={"RecordingStatusCallback": receiver.url("ok", f"r{i}"),
                          "RecordingStatusCallbackEvent": "in-progress completed absent"})
                assert status == 201, body
                recordings.append(body["sid"])
            await receiver.wait(lambda: all(receiver.events(s) == ["siprec-started"]
                                            for s in siprecs), 8, "siprec-started")
            await receiver.wait(lambda: all(receiver.events(r)[:1] == ["in-progress"]
                                            for r in recordings), 8, "recording in-progress")
            await asyncio.sleep(1.5)  # audio reaches the recordings' files
            child.proc.kill()  # SIGKILL: no handler runs, nothing is flushed
            assert await child.wait(5) == -signal.SIGKILL
            # Nobody told the recorder: its two sessions are still open.
            assert [s.live for s in recorder.sessions] == [True, True]
        finally:
            for talker in talkers:
                await talker.stop()
            if api is not None:
                await api.close()
            child.kill()

        # Restart, in process, on the same configuration and data directory.
        async with daemon_stack(config) as st:
            st.receiver = receiver  # the callbacks were registered with the first receiver
            for i, sid in enumerate(siprecs):
                view = await st.api.siprec(calls[i]["call_sid"], sid)
                assert view["status"] == "stopped"
                await receiver.wait(lambda s=sid: "siprec-error" in receiver.events(s), 8)
                events = receiver.events(sid)
                # At-least-once across a crash: a started whose delivery mark had not
                # reached the disk may come again, but always before the error.
                assert events[0] == "siprec-started" and events[-1] == "siprec-error", events
                assert set(events) == {"siprec-started", "siprec-error"}
                error = [h for h in receiver.for_sid(sid) if h.event == "siprec-error"][0]
                assert error.params["SiprecError"] == "engine restarted"
                assert error.params["SiprecErrorCode"] == "900012"
            expected = {recordings[0]: "completed", recordings[1]: "completed",
                        recordings[2]: "absent"}
            for i, rsid in enumerate(recordings):
                status, body = await st.api.request(
                    "GET", f"{API}/Calls/{calls[i]['call_sid']}/Recordings/{rsid}.json")
                assert status == 200 and body["status"] == expected[rsid], body
                await receiver.wait(lambda r=rsid: expected[r] in receiver.events(r), 8)
                if expected[rsid] == "completed":
                    assert int(body["duration"]) >= 1, body
                    async with st.api.http.get(
                            f"{st.api.base}{API}/Calls/{calls[i]['call_sid']}/Recordings/"
                            f"{rsid}.wav") as r:
                        wav = await r.read()
                    assert r.status == 200 and wav[:4] == b"RIFF" and len(wav) > 8000
            assert all(h.signed for h in receiver.hits)
            # The restarted process BYEs what the dead one left open at the recorder.
            await recorder.wait_for(lambda r: not any(s.live for s in r.sessions), 8)
            assert [s.ended_by for s in recorder.sessions] == ["src", "src"]
            for call in calls:  # the calls died with the process
                assert (await st.api.call(call["call_sid"]))[0] == 404
            assert st.live_forks() == 0
            st.receiver = await Receiver().start()
            try:
                await st.serves_a_fresh_call()
            finally:
                await st.receiver.stop()
                st.receiver = receiver
        await recorder.stop()
        await receiver.stop()

    run(case(), timeout=90)
