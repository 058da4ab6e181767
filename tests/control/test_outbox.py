"""Outbox: stored-then-sent callbacks, outcomes written back, replay after a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web
from twilio.request_validator import RequestValidator

from mediafork.control.outbox import Outbox
from mediafork.control.store import AsyncStore, CallRecord

ACCOUNT = "AC" + "0123456789abcdef" * 2
CALL = "CA" + "1" * 32
TOKEN = "outbox-token"
SR1 = "SR" + "1" * 32
SR2 = "SR" + "2" * 32


def params(event: str, n: int) -> list[tuple[str, str]]:
    return [("AccountSid", ACCOUNT), ("SiprecSid", SR1), ("SiprecEvent", event), ("N", str(n))]


async def states(store: AsyncStore, sid: str) -> list[str]:
    return [e.delivery_state for e in await store.events_for(sid)]


def test_outcomes_are_written_back(run, receiver_factory, tmp_path: Path):
    async def scenario() -> None:
        receiver = await receiver_factory().start()

        async def reject(request: web.Request) -> web.Response:
            return web.Response(status=410)

        receiver.on("/gone", reject)
        store = await AsyncStore.open(tmp_path / "o.db")
        outbox = Outbox(store, {ACCOUNT: TOKEN}.get, backoff_initial=0.01, jitter=0)
        try:
            await store.register_call(CallRecord(CALL, ACCOUNT, "sip:a", "sip:b", {}))
            for n, name in enumerate(["siprec-started", "siprec-stopped"]):
                await outbox.emit(resource_sid=SR1, account_sid=ACCOUNT, event=name,
                                  url=f"{receiver.base}/cb", method="POST",
                                  params=params(name, n))
            await outbox.emit(resource_sid=SR2, account_sid=ACCOUNT, event="siprec-started",
                              url=f"{receiver.base}/gone", method="GET",
                              params=params("siprec-started", 9))
            none = await outbox.emit(resource_sid=SR2, account_sid=ACCOUNT,
                                     event="siprec-stopped", url=None, method="POST",
                                     params=params("siprec-stopped", 10))
            assert none.delivery_state == "no-callback"
        finally:
            await outbox.close(5)
        assert await states(store, SR1) == ["delivered", "delivered"]
        assert await states(store, SR2) == ["failed", "no-callback"]
        assert [r.form.get("N") or r.query["N"] for r in receiver.received] in (
            ["0", "1", "9"], ["0", "9", "1"], ["9", "0", "1"])
        await store.close()
        await receiver.stop()

    run(scenario())


def test_undelivered_events_survive_a_restart_and_are_replayed_in_order(
    run, receiver_factory, tmp_path: Path
):
    path = tmp_path / "replay.db"
    port: list[int] = []

    async def first_life() -> None:
        receiver = await receiver_factory().start()
        port.append(int(receiver.base.rsplit(":", 1)[1]))
        never = asyncio.Event()

        async def hang(request: web.Request) -> web.Response:
            await never.wait()
            return web.Response()

        receiver.on("/cb", hang)
        store = await AsyncStore.open(path)
        outbox = Outbox(store, {ACCOUNT: TOKEN}.get, timeout=30)
        await store.register_call(CallRecord(CALL, ACCOUNT, "sip:a", "sip:b", {}))
        for n in range(4):
            await outbox.emit(resource_sid=SR1, account_sid=ACCOUNT, event=f"e{n}",
                              url=f"{receiver.base}/cb", method="POST", params=params("x", n))
        await receiver.wait_for(lambda r: len(r) == 1)
        await outbox.close(0.1)  # gives up: nothing was acknowledged
        assert await states(store, SR1) == ["pending"] * 4
        await store.close()
        never.set()
        await receiver.stop()

    run(first_life())

    # Second life: a new process state, and a receiver back on the stored URL's port.
    async def second_life_same_port() -> None:
        receiver = receiver_factory()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", receiver._handle)
        runner = web.AppRunner(app, shutdown_timeout=0.2)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port[0]).start()
        receiver.base = f"http://127.0.0.1:{port[0]}"
        store = await AsyncStore.open(path)
        outbox = Outbox(store, {ACCOUNT: TOKEN}.get)
        try:
            assert await outbox.replay_pending() == 4
            await receiver.wait_for(lambda r: len(r) == 4)
        finally:
            await outbox.close(5)
        assert [r.form["N"] for r in receiver.received] == ["0", "1", "2", "3"]
        validator = RequestValidator(TOKEN)
        for request in receiver.received:
            assert validator.validate(request.url, request.form,
                                      request.headers["X-Twilio-Signature"])
        assert await states(store, SR1) == ["delivered"] * 4
        assert await outbox.replay_pending() == 0
        await store.close()
        await runner.cleanup()

    run(second_life_same_port())
