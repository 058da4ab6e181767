"""Status-callback delivery against a real aiohttp receiver on 127.0.0.1.

Every test runs on asyncio and on uvloop (the ``run`` fixture) and is bounded in time.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from ipaddress import ip_address
from typing import Any

import pytest
from aiohttp import web
from twilio.request_validator import RequestValidator

from mediafork.control.callbacks import CallbackDispatcher, is_local_address
from mediafork.control.egress import EgressPolicy, Listener
from mediafork.control.events import CallbackEvent

ACCOUNT = "AC" + "0123456789abcdef" * 2
TOKEN = "s3cr3t-auth-token-do-not-log"
TOKENS = {ACCOUNT: TOKEN}


def event(sid: str, url: str, seq: int, method: str = "POST", **extra: str) -> CallbackEvent:
    params = (("AccountSid", ACCOUNT), ("SiprecSid", sid), ("Seq", str(seq)),
              *extra.items())
    return CallbackEvent(resource_sid=sid, account_sid=ACCOUNT, url=url, method=method,  # type: ignore[arg-type]
                         params=params)


def sid(n: int) -> str:
    return f"SR{n:032x}"


def dispatcher(**kwargs: Any) -> CallbackDispatcher:
    options: dict[str, Any] = {"timeout": 2.0, "backoff_initial": 0.01, "backoff_max": 0.05,
                               "jitter": 0.0}
    options.update(kwargs)
    return CallbackDispatcher(TOKENS.get, **options)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
def serving(receiver_factory) -> Callable[..., AbstractAsyncContextManager[Any]]:
    """``async with serving({path: handler}) as receiver:``: a started receiver with those
    handlers, stopped however the block ends."""

    @asynccontextmanager
    async def serve(handlers: dict[str, Handler] | None = None) -> AsyncIterator[Any]:
        receiver = await receiver_factory().start()
        try:
            for path, handler in (handlers or {}).items():
                receiver.on(path, handler)
            yield receiver
        finally:
            await receiver.stop()

    return serve


@asynccontextmanager
async def dispatching(close_within: float = 2, **kwargs: Any) -> AsyncIterator[CallbackDispatcher]:
    """``async with dispatching(**options) as d:``: :func:`dispatcher`, closed on the way out
    with ``d.close(close_within)``."""
    d = dispatcher(**kwargs)
    try:
        yield d
    finally:
        await d.close(close_within)


def held_until(release: asyncio.Event) -> Handler:
    """A handler that holds every request until ``release`` is set."""

    async def hold(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response()

    return hold


def answering(statuses: list[int]) -> Handler:
    """A handler that answers with ``statuses``, one per request, in order."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=statuses.pop(0))

    return answer


def assert_signed(received, token: str = TOKEN) -> None:
    validator = RequestValidator(token)
    for request in received:
        signature = request.headers["X-Twilio-Signature"]
        params = request.form if request.method == "POST" else {}
        # What an aiohttp receiver computes, and the raw request line: both must validate.
        assert validator.validate(request.url, params, signature), request.url
        assert validator.validate(request.raw_url, params, signature), request.raw_url


def test_events_of_one_resource_arrive_in_order(run, serving):
    async def scenario() -> None:
        async def jittery(request: web.Request) -> web.Response:
            # later events answer faster: only per-resource sequencing keeps them ordered
            seq = int((await request.post())["Seq"])
            await asyncio.sleep(0.02 * (5 - seq % 5))
            return web.Response(text="ok")

        async with serving({"/cb": jittery}) as receiver, dispatching() as d:
            for seq in range(15):
                assert d.enqueue(event(sid(1), f"{receiver.base}/cb", seq))
            await receiver.wait_for(lambda r: len(r) == 15, timeout=10)
            assert [int(r.form["Seq"]) for r in receiver.received] == list(range(15))
            while d.stats.delivered < 15:
                await asyncio.sleep(0.01)
            assert_signed(receiver.received)

    run(scenario())


def test_different_resources_are_delivered_concurrently(run, serving):
    async def scenario() -> None:
        async def slow(request: web.Request) -> web.Response:
            await asyncio.sleep(0.4)
            return web.Response(text="ok")

        async with serving({"/cb": slow}) as receiver, dispatching() as d:
            loop = asyncio.get_running_loop()
            started = loop.time()
            for n in range(8):
                d.enqueue(event(sid(n), f"{receiver.base}/cb", 0))
            while d.stats.delivered < 8:
                await asyncio.sleep(0.01)
            # serial delivery would take 8 * 0.4 s
            assert loop.time() - started < 1.6

    run(scenario())


def test_enqueue_returns_immediately(run, serving):
    async def scenario() -> None:
        never = asyncio.Event()
        async with (serving({"/hang": held_until(never)}) as receiver,
                    dispatching(close_within=0.1, timeout=5.0) as d):
            loop = asyncio.get_running_loop()
            started = loop.time()
            for seq in range(100):
                d.enqueue(event(sid(seq % 3), f"{receiver.base}/hang", seq))
            assert loop.time() - started < 0.5

    run(scenario())


def test_retries_on_500_then_succeeds(run, serving):
    async def scenario() -> None:
        delivered: list[CallbackEvent] = []
        async with (serving({"/cb": answering([500, 503, 200])}) as receiver,
                    dispatching(max_attempts=4, on_delivered=delivered.append) as d):
            sent = event(sid(1), f"{receiver.base}/cb", 7)
            d.enqueue(sent)
            await receiver.wait_for(lambda r: len(r) == 3)
            while not delivered:
                await asyncio.sleep(0.01)
            assert delivered == [sent]
            assert d.stats.as_dict() == {"delivered": 1, "retried": 2, "failed": 0,
                                         "dropped": 0, "abandoned": 0, "denied": 0}
            assert {r.form["Seq"] for r in receiver.received} == {"7"}
            assert_signed(receiver.received)

    run(scenario())


def test_gives_up_after_max_attempts(run, serving):
    async def scenario() -> None:
        undelivered: list[tuple[CallbackEvent, str]] = []
        async with (serving({"/cb": lambda request: _status(500)}) as receiver,
                    dispatching(max_attempts=3,
                                on_undelivered=lambda e, r: undelivered.append((e, r))) as d):
            d.enqueue(event(sid(1), f"{receiver.base}/cb", 0))
            while not undelivered:
                await asyncio.sleep(0.01)
            assert len(receiver.received) == 3
            assert undelivered[0][1] == "failed"
            assert d.stats.failed == 1 and d.stats.retried == 2 and d.stats.delivered == 0

    run(scenario())


async def _status(status: int) -> web.Response:
    return web.Response(status=status)


def test_no_retry_on_4xx(run, serving):
    async def scenario() -> None:
        undelivered: list[str] = []
        async with (serving({"/cb": lambda request: _status(400)}) as receiver,
                    dispatching(max_attempts=5,
                                on_undelivered=lambda e, r: undelivered.append(r)) as d):
            d.enqueue(event(sid(1), f"{receiver.base}/cb", 0))
            d.enqueue(event(sid(1), f"{receiver.base}/ok", 1))
            await receiver.wait_for(lambda r: len(r) == 2)
            while d.stats.delivered < 1:
                await asyncio.sleep(0.01)
            assert [r.path for r in receiver.received] == ["/cb", "/ok"]
            assert undelivered == ["failed"]
            assert d.stats.failed == 1 and d.stats.retried == 0

    run(scenario())


def test_connection_errors_are_retried(run):
    async def scenario() -> None:
        with socket.socket() as s:  # a port with nothing listening
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        undelivered: list[str] = []
        async with dispatching(max_attempts=3,
                               on_undelivered=lambda e, r: undelivered.append(r)) as d:
            d.enqueue(event(sid(1), f"http://127.0.0.1:{port}/cb", 0))
            while not undelivered:
                await asyncio.sleep(0.01)
            assert undelivered == ["failed"]
            assert d.stats.retried == 2 and d.stats.failed == 1

    run(scenario())


def test_slow_receiver_does_not_delay_other_callbacks(run, serving):
    async def scenario() -> None:
        never = asyncio.Event()
        async with (serving({"/cb": held_until(never)}) as slow_receiver,
                    serving() as fast_receiver,
                    dispatching(close_within=0.1, timeout=1.0, max_attempts=3) as d):
            loop = asyncio.get_running_loop()
            try:
                for seq in range(3):
                    d.enqueue(event(sid(1), f"{slow_receiver.base}/cb", seq))
                await slow_receiver.wait_for(lambda r: len(r) >= 1)
                started = loop.time()
                for seq in range(3):
                    d.enqueue(event(sid(2), f"{fast_receiver.base}/cb", seq))
                await fast_receiver.wait_for(lambda r: len(r) == 3, timeout=2)
                # well under one timeout of the slow receiver
                assert loop.time() - started < 0.6
                # the slow one times out and is retried: timeouts count as retryable
                while d.stats.retried < 1:
                    await asyncio.sleep(0.01)
            finally:
                never.set()

    run(scenario())


def test_get_puts_params_in_query_and_post_in_body(run, serving):
    async def scenario() -> None:
        async with serving() as receiver, dispatching() as d:
            tricky = "a b+c&d=e/é?:"
            d.enqueue(event(sid(1), f"{receiver.base}/get?mine=1", 0, "GET", Text=tricky))
            d.enqueue(event(sid(2), f"{receiver.base}/post?mine=2", 0, "POST", Text=tricky))
            await receiver.wait_for(lambda r: len(r) == 2)
            by_path = {r.path: r for r in receiver.received}
            get, post = by_path["/get"], by_path["/post"]
            assert get.method == "GET" and get.form == {}
            assert get.query == {"mine": "1", "AccountSid": ACCOUNT, "SiprecSid": sid(1),
                                 "Seq": "0", "Text": tricky}
            assert post.method == "POST" and post.query == {"mine": "2"}
            assert post.form == {"AccountSid": ACCOUNT, "SiprecSid": sid(2), "Seq": "0",
                                 "Text": tricky}
            assert post.headers["Content-Type"].startswith("application/x-www-form-urlencoded")
            assert_signed(receiver.received)
            # and a wrong token does not validate
            validator = RequestValidator("not-the-token")
            assert not validator.validate(post.url, post.form,
                                          post.headers["X-Twilio-Signature"])

    run(scenario())


def test_pending_bound_drops_oldest(run, serving):
    async def scenario() -> None:
        release = asyncio.Event()
        dropped: list[str] = []
        async with (serving({"/cb": held_until(release)}) as receiver,
                    dispatching(max_pending=3, on_undelivered=lambda e, r: dropped.append(
                        f"{r}:{e.param('Seq')}")) as d):
            d.enqueue(event(sid(1), f"{receiver.base}/cb", 0))
            await receiver.wait_for(lambda r: len(r) == 1)  # event 0 is in flight
            for seq in range(1, 7):
                d.enqueue(event(sid(1), f"{receiver.base}/cb", seq))
            assert d.pending == 3
            assert d.stats.dropped == 3
            assert dropped == ["dropped:1", "dropped:2", "dropped:3"]
            release.set()
            await receiver.wait_for(lambda r: len(r) == 4)
            assert [r.form["Seq"] for r in receiver.received] == ["0", "4", "5", "6"]

    run(scenario())


def test_close_flushes_then_refuses(run, serving):
    async def scenario() -> None:
        async with serving() as receiver:
            undelivered: list[str] = []
            d = dispatcher(on_undelivered=lambda e, r: undelivered.append(r))
            for n in range(5):
                d.enqueue(event(sid(n), f"{receiver.base}/cb", 0))
            await d.close(5)
            assert d.stats.delivered == 5 and len(receiver.received) == 5
            assert d.enqueue(event(sid(9), f"{receiver.base}/cb", 0)) is False
            assert undelivered == ["closed"]

    run(scenario())


def test_close_gives_up_on_stuck_deliveries_and_reports_them(run, serving):
    async def scenario() -> None:
        never = asyncio.Event()
        async with serving({"/cb": held_until(never)}) as receiver:
            undelivered: list[str] = []
            d = dispatcher(timeout=30, on_undelivered=lambda e, r: undelivered.append(
                f"{r}:{e.param('Seq')}"))
            for seq in range(3):
                d.enqueue(event(sid(1), f"{receiver.base}/cb", seq))
            await receiver.wait_for(lambda r: len(r) == 1)
            loop = asyncio.get_running_loop()
            started = loop.time()
            await d.close(0.2)
            assert loop.time() - started < 1.0
            assert sorted(undelivered) == ["closed:0", "closed:1", "closed:2"]
            assert d.stats.abandoned == 3
            never.set()

    run(scenario())


def test_unknown_account_is_not_sent(run, serving):
    async def scenario() -> None:
        async with serving() as receiver:
            reasons: list[str] = []
            d = CallbackDispatcher(lambda account: None,
                                   on_undelivered=lambda e, r: reasons.append(r))
            d.enqueue(event(sid(1), f"{receiver.base}/cb", 0))
            await d.close(2)
            assert reasons == ["no-token"] and receiver.received == []
            assert d.stats.failed == 1

    run(scenario())


def test_a_raising_hook_does_not_stop_delivery(run, serving):
    async def scenario() -> None:
        def broken(_: CallbackEvent) -> None:
            raise RuntimeError("hook bug")

        async with serving() as receiver:
            d = dispatcher(on_delivered=broken)
            for seq in range(3):
                d.enqueue(event(sid(1), f"{receiver.base}/cb", seq))
            await d.close(5)
            assert d.stats.delivered == 3 and len(receiver.received) == 3

    run(scenario())


def test_secrets_never_logged_and_url_credentials_never_sent(run, serving, caplog):
    password = "cb-basic-password-xyz"
    query_secret = "query-token-abc"

    async def scenario() -> None:
        async with serving({"/cb": answering([500, 200, 404])}) as receiver:
            d = dispatcher(max_attempts=2)
            host = receiver.base.removeprefix("http://")
            clean = f"http://{host}/cb?token={query_secret}"
            d.enqueue(event(sid(1), clean, 0))
            d.enqueue(event(sid(1), clean, 1))
            # A URL with credentials (stored before they were refused at create time) is
            # refused by the egress policy: nothing is sent, with or without Basic auth.
            d.enqueue(event(sid(3), f"http://user:{password}@{host}/cb?token={query_secret}",
                            0))
            # and one that cannot even connect, to exercise the error-logging path
            d.enqueue(event(sid(2), f"http://127.0.0.1:1/x?token={query_secret}", 0))
            while d.stats.delivered + d.stats.failed + d.stats.denied < 4:
                await asyncio.sleep(0.01)
            assert repr(d).count("delivered") == 1
            await d.close(2)
            assert d.stats.denied == 1
            assert len(receiver.received) == 3
            assert [r.headers.get("Authorization") for r in receiver.received] == [None] * 3
            assert_signed(receiver.received)

    with caplog.at_level(logging.DEBUG, logger="mediafork.callbacks"):
        run(scenario())
    assert "status callback" in caplog.text  # the logging paths did run
    for secret in (password, query_secret, TOKEN):
        assert secret not in caplog.text
    sample = event(sid(1), f"http://user:{password}@h/cb?token={query_secret}", 0)
    assert password not in repr(sample) and query_secret not in repr(sample)


def test_egress_policy_is_applied_at_delivery_to_every_address_connected_to(run, serving, caplog):
    """A host name is resolved once, every address checked, and only checked addresses are
    connected to; the Host header (and so the signed URL) keeps the name."""

    async def scenario() -> None:
        async with serving() as receiver:
            port = int(receiver.base.rsplit(":", 1)[1])
            by_name = f"http://localhost:{port}/cb?token=query-secret-1"
            ours = EgressPolicy().with_listeners([Listener.of("127.0.0.1", port)])
            cases = [
                (EgressPolicy(), by_name, 1, 0),  # loopback allowed by default
                (EgressPolicy.from_rules(deny=["127.0.0.0/8"]), by_name, 0, 1),
                (EgressPolicy.from_rules(deny=["localhost"]), by_name, 0, 1),
                # an IP host never reaches the resolver: checked from the URL itself
                (ours, f"{receiver.base}/cb", 0, 1),
                (ours, by_name, 0, 1),
            ]
            for policy, url, delivered, denied in cases:
                before = len(receiver.received)
                d = dispatcher(egress=policy, max_attempts=3)
                d.enqueue(event(sid(1), url, 0))
                await d.close(5)
                assert (d.stats.delivered, d.stats.denied) == (delivered, denied), url
                assert d.stats.retried == 0 and d.stats.failed == 0  # a refusal is final
                assert len(receiver.received) == before + delivered
            assert receiver.received[0].headers["Host"] == f"localhost:{port}"
            assert_signed(receiver.received)

    with caplog.at_level(logging.DEBUG, logger="mediafork.callbacks"):
        run(scenario())
    assert "refused by the egress policy (localhost resolves to 127.0.0.1" in caplog.text
    assert "one of mediafork's own listening sockets" in caplog.text
    assert "query-secret-1" not in caplog.text


def test_is_local_address_knows_this_machine_without_sending_anything():
    assert is_local_address(ip_address("127.0.0.1"))
    assert is_local_address(ip_address("127.0.0.42"))  # all of 127/8 is local on Linux
    assert not is_local_address(ip_address("192.0.2.1"))  # TEST-NET-1: nobody's
    assert not is_local_address(ip_address("2001:db8::1"))
