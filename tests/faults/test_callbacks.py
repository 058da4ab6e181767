"""Fault matrix, status callbacks: the receiver refuses connections, answers slower than the
callback timeout, or answers 500. Each is retried (bounded), each keeps its own order, none
delays the callbacks of other Siprecs, and the recordings themselves are unaffected."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from mediafork.srs import ReferenceRecorder

from .harness import Receiver, connector, daemon_stack, free_port, make_config, run

TIMEOUT = 0.5
ATTEMPTS = 3


def test_refusing_slow_and_failing_callback_urls(tmp_path: Path) -> None:
    async def case() -> None:
        async with ReferenceRecorder(port=0, out_dir=tmp_path / "good") as good:
            config = make_config(tmp_path, [connector("Healthy", good.uri())],
                                 callback_timeout=TIMEOUT, callback_attempts=ATTEMPTS)
            async with daemon_stack(config) as st:
                st.receiver.slow_seconds = 4 * TIMEOUT
                refused = f"http://127.0.0.1:{free_port(kind=1)}/refused"  # nothing listens
                urls = {"refused": refused, "slow": st.receiver.url("slow", "s"),
                        "fail500": st.receiver.url("fail500", "f")}
                calls: dict[str, str] = {}
                sids: dict[str, str] = {}
                for kind, url in urls.items():
                    call = await st.api.register()
                    calls[kind] = call["call_sid"]
                    sids[kind] = await st.api.create_siprec(call["call_sid"], "Healthy", url)
                # While those three retry, a healthy receiver's callbacks are not held up.
                await st.receiver.wait(lambda: len(st.receiver.for_sid(sids["slow"])) >= 1
                                       and len(st.receiver.for_sid(sids["fail500"])) >= 1)
                call = await st.api.register()
                calls["ok"] = call["call_sid"]
                asked = time.monotonic()
                sids["ok"] = await st.api.create_siprec(call["call_sid"], "Healthy",
                                                        st.receiver.url("ok", "o"))
                await st.receiver.wait_events(sids["ok"], ["siprec-started"], timeout=2)
                delay = st.receiver.for_sid(sids["ok"])[0].at - asked
                assert delay < TIMEOUT, f"healthy callback waited {delay:.2f} s behind others"

                # Recording is not affected by callback trouble.
                for kind in urls:
                    view = await st.api.siprec(calls[kind], sids[kind])
                    assert view["status"] == "in-progress", (kind, view)
                assert len([s for s in good.sessions if s.state == "established"]) == 4

                # Every attempt of the failing receivers, retries included, in order.
                for kind in ("slow", "fail500"):
                    await st.receiver.wait(
                        lambda k=kind: len(st.receiver.for_sid(sids[k])) >= ATTEMPTS,
                        timeout=ATTEMPTS * (TIMEOUT + 2.5), what=f"{kind} retries")
                for kind in urls:
                    await st.api.end_call(calls[kind])
                await st.api.end_call(calls["ok"])
                for kind in ("slow", "fail500"):
                    await st.receiver.wait(
                        lambda k=kind: len(st.receiver.for_sid(sids[k])) >= 2 * ATTEMPTS,
                        timeout=ATTEMPTS * (TIMEOUT + 2.5), what=f"{kind} stopped retries")
                    hits = st.receiver.for_sid(sids[kind])
                    assert [h.event for h in hits] == (["siprec-started"] * ATTEMPTS
                                                       + ["siprec-stopped"] * ATTEMPTS), kind
                    assert all(h.signed for h in hits)
                    gaps = [b.at - a.at for a, b in zip(hits, hits[1:ATTEMPTS], strict=False)]
                    # Backoff: 0.5 s then 1 s (±10% jitter), after each attempt's own time.
                    assert gaps[0] >= 0.4 and gaps[1] >= gaps[0] + 0.3, (kind, gaps)
                await st.receiver.wait_events(sids["ok"], ["siprec-started", "siprec-stopped"])
                await asyncio.sleep(0.3)
                assert len(st.receiver.for_sid(sids["slow"])) == 2 * ATTEMPTS  # bounded
                assert len(st.receiver.for_sid(sids["fail500"])) == 2 * ATTEMPTS
                assert st.receiver.for_sid(sids["refused"]) == []
                for kind in urls:
                    view = await st.api.siprec(calls[kind], sids[kind])
                    assert view["status"] == "stopped"

                async def outcomes() -> dict[str, float]:
                    metrics = await st.api.metrics()
                    return {k.split('"')[1]: v for k, v in metrics.items()
                            if k.startswith("mediafork_callback_deliveries_total")}

                # The last attempt of the slow receiver is given up on one timeout after it
                # arrived.
                deadline = time.monotonic() + 2 * TIMEOUT + 1
                while (await outcomes())["failed"] < 6 and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                final = await outcomes()
                # 3 failing receivers x 2 events, each given up after 3 attempts; the
                # healthy Siprec's 2 events delivered.
                assert final["failed"] == 6, final
                assert final["retried"] == 6 * (ATTEMPTS - 1), final
                assert final["delivered"] == 2, final
                assert all(s.state == "ended" for s in good.sessions)
                await st.serves_a_fresh_call()

    run(case(), timeout=60)


def test_shutdown_with_a_stuck_receiver_is_bounded_and_replays_after_restart(
        tmp_path: Path) -> None:
    """The receiver hangs on every request at shutdown time: the daemon still stops within
    its bound, and the callbacks it could not deliver are sent by the next start."""

    async def case() -> None:
        stuck = await Receiver(slow_seconds=8.0).start()  # outlives both daemons
        try:
            async with ReferenceRecorder(port=0, out_dir=tmp_path / "good") as good:
                config = make_config(tmp_path, [connector("Healthy", good.uri())],
                                     callback_timeout=TIMEOUT, callback_attempts=ATTEMPTS)
                async with daemon_stack(config, stuck) as st:
                    call = await st.api.register()
                    sid = await st.api.create_siprec(call["call_sid"], "Healthy",
                                                     stuck.url("slow", "stuck"))
                    await stuck.wait(lambda: len(stuck.for_sid(sid)) >= 1)
                    t0 = time.monotonic()
                    await st.shutdown()  # what SIGTERM runs
                    took = time.monotonic() - t0
                    assert took < st.daemon.shutdown_timeout + 0.5, f"shutdown took {took:.1f} s"
                    assert good.sessions[0].state == "ended"  # the BYE went out regardless
                # Restart on the same store; the receiver answers at once now.
                stuck.slow_seconds = 0.0
                async with daemon_stack(config) as st2:
                    await stuck.wait(lambda: "siprec-stopped" in stuck.events(sid), 8,
                                     "the replayed siprec-stopped")
                    events = stuck.events(sid)
                    deduped = [e for i, e in enumerate(events) if e not in events[:i]]
                    assert deduped == ["siprec-started", "siprec-stopped"], events
                    assert all(h.signed for h in stuck.for_sid(sid))
                    view = await st2.api.siprec(call["call_sid"], sid)
                    assert view["status"] == "stopped"
                    assert "siprec-error" not in events  # a clean stop is not a crash
                    await st2.serves_a_fresh_call()
        finally:
            await stuck.stop()

    run(case(), timeout=60)
