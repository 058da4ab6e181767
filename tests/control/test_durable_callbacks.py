"""Callbacks outlive an application's restart: retries run for a time horizon (an hour by
default) rather than a handful of attempts, the horizon counts from the event's creation
even across a restart of mediafork, and given-up events can be listed and sent again."""

from __future__ import annotations

import asyncio
import socket
from datetime import timedelta
from pathlib import Path

from aiohttp import web

from mediafork.control.callbacks import CallbackDispatcher
from mediafork.control.events import CallbackEvent
from mediafork.control.outbox import Outbox
from mediafork.control.store import AsyncStore
from mediafork.control.timefmt import utcnow

ACCOUNT = "AC" + "a1" * 16
OTHER = "AC" + "b2" * 16
TOKEN = "durable-token-" + "q" * 10
SR1 = "SR" + "1" * 32
TOKENS = {ACCOUNT: TOKEN, OTHER: TOKEN + "x"}.get


def test_defaults_retry_for_an_hour_with_capped_backoff() -> None:
    dispatcher = CallbackDispatcher(TOKENS)
    assert dispatcher.max_attempts == 0 and dispatcher.retry_for >= 3600
    assert dispatcher.backoff_max <= 300
    # The backoff grows, then stays at the cap: an hour is ~60 attempts, not 4.
    delays = [dispatcher._backoff(n) for n in range(1, 200)]
    assert max(delays) <= dispatcher.backoff_max * (1 + dispatcher.jitter)
    assert sum(delays) > 3600


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_application_down_longer_than_the_old_attempts_still_gets_its_callback(run):
    """The receiver's port refuses connections for 5 s (an app restarting), then answers:
    the old 4 attempts with 0.5/1/2 s backoff gave up after about 3.5 s."""
    port = _free_port()

    async def scenario() -> tuple[int, int, float]:
        delivered: list[CallbackEvent] = []
        dispatcher = CallbackDispatcher(TOKENS, backoff_initial=0.5, backoff_max=1.0, jitter=0,
                                        on_delivered=delivered.append)
        loop = asyncio.get_running_loop()
        started = loop.time()
        dispatcher.enqueue(CallbackEvent(SR1, ACCOUNT, f"http://127.0.0.1:{port}/cb", "POST",
                                         (("SiprecEvent", "siprec-stopped"),)))
        await asyncio.sleep(5.0)
        got: list[float] = []

        async def handle(request: web.Request) -> web.Response:
            got.append(loop.time())
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/cb", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            for _ in range(40):
                if delivered:
                    break
                await asyncio.sleep(0.1)
        finally:
            await dispatcher.close(2)
            await runner.cleanup()
        return len(delivered), dispatcher.stats.retried, got[0] - started

    delivered, retried, at = run(scenario(), timeout=30)
    assert delivered == 1
    assert retried >= 4  # more attempts than the old limit allowed in all
    assert at > 5.0


def test_the_horizon_ends_retries_and_counts_from_creation(run, receiver_factory):
    async def scenario() -> tuple[dict[str, int], list[str], float]:
        receiver = await receiver_factory().start()

        async def busy(request: web.Request) -> web.Response:
            return web.Response(status=503)

        receiver.on("/busy", busy)
        failed: list[str] = []
        dispatcher = CallbackDispatcher(TOKENS, retry_for=1.0, backoff_initial=0.1,
                                        backoff_max=0.2, jitter=0,
                                        on_undelivered=lambda e, r: failed.append(r))
        loop = asyncio.get_running_loop()
        started = loop.time()
        dispatcher.enqueue(CallbackEvent(SR1, ACCOUNT, f"{receiver.base}/busy", "POST",
                                         (("N", "fresh"),)))
        # An event created an hour ago (replayed after a restart): one attempt, no retries.
        old = CallbackEvent("SR" + "2" * 32, ACCOUNT, f"{receiver.base}/busy", "POST",
                            (("N", "old"),),
                            created_at=(utcnow() - timedelta(hours=1)).timestamp())
        dispatcher.enqueue(old)
        while len(failed) < 2 and loop.time() - started < 10:
            await asyncio.sleep(0.05)
        took = loop.time() - started
        await dispatcher.close(1)
        attempts = {n: sum(1 for r in receiver.received if r.form.get("N") == n)
                    for n in ("fresh", "old")}
        await receiver.stop()
        return attempts, failed, took

    attempts, failed, took = run(scenario())
    assert failed == ["failed", "failed"]
    assert 0.7 < took < 3.0  # the 1 s horizon, not max_attempts, ended the retries
    # The fresh event tried several times within its second; the hour-old one once.
    assert attempts["fresh"] >= 3 and attempts["old"] == 1


def test_given_up_events_are_listed_and_redelivered_for_their_account_only(
        run, receiver_factory, tmp_path: Path):
    async def scenario() -> None:
        receiver = await receiver_factory().start()
        answers = {"status": 404}

        async def flaky(request: web.Request) -> web.Response:
            return web.Response(status=answers["status"])

        receiver.on("/app", flaky)
        store = await AsyncStore.open(tmp_path / "d.db")
        outbox = Outbox(store, TOKENS, backoff_initial=0.01, jitter=0)
        try:
            first = await outbox.emit(resource_sid=SR1, account_sid=ACCOUNT,
                                      event="siprec-started", url=f"{receiver.base}/app",
                                      method="POST", params=[("SiprecEvent", "siprec-started")])
            foreign = await outbox.emit(resource_sid="SR" + "9" * 32, account_sid=OTHER,
                                        event="siprec-started", url=f"{receiver.base}/app",
                                        method="POST", params=[("N", "other")])
            await receiver.wait_for(lambda r: len(r) >= 2)
            for _ in range(50):
                if {e.delivery_state for e in await store.account_events(
                        ACCOUNT, ("failed",))} == {"failed"}:
                    break
                await asyncio.sleep(0.02)
            listed = await store.account_events(ACCOUNT, ("failed", "dropped"))
            assert [e.id for e in listed] == [first.id]  # not the other account's
            assert await store.count_events(ACCOUNT) == {"failed": 1}

            answers["status"] = 200  # the application is fixed
            # Another account's id is ignored, whatever the caller asks for.
            assert await outbox.redeliver(ACCOUNT, [foreign.id]) == 0
            assert await outbox.redeliver(ACCOUNT, None) == 1
            await receiver.wait_for(lambda r: len(r) >= 3)
            for _ in range(50):
                if (await store.events_for(SR1))[0].delivery_state == "delivered":
                    break
                await asyncio.sleep(0.02)
            assert (await store.events_for(SR1))[0].delivery_state == "delivered"
            assert (await store.events_for("SR" + "9" * 32))[0].delivery_state == "failed"
            assert await outbox.redeliver(ACCOUNT, None) == 0  # nothing left given up
        finally:
            await outbox.close(2)
            await store.close()
            await receiver.stop()

    run(scenario())
