"""The asyncio NG client over real UDP sockets: against the real rtpengine, and against a
local peer that misbehaves the ways rtpengine cannot be made to (drops, garbage, foreign
senders), which is the only way to reach those paths."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import bencodepy
import pytest

from mediafork.mediasource import NgBadReply, NgClosed, NgErrorReply, NgOverloaded, NgTimeout
from mediafork.mediasource.ng import NgTiming
from mediafork.mediasource.ng_client import NgClient

from .conftest import run

CODEC = bencodepy.Bencode()
FAST = NgTiming(timeout=1.0, retransmit=0.15, max_interval=0.3)


class Peer(asyncio.DatagramProtocol):
    """A UDP endpoint that answers each request datagram with ``answer(cookie, data, n)``
    (None: stay silent); ``n`` counts the datagrams it got."""

    def __init__(self, answer: Callable[[bytes, bytes, int], bytes | None]) -> None:
        self.answer = answer
        self.got: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr) -> None:
        self.got.append(data)
        cookie = data.partition(b" ")[0]
        out = self.answer(cookie, data, len(self.got))
        if out is not None and self.transport is not None:
            self.transport.sendto(out, addr)


async def peer(answer: Callable[[bytes, bytes, int], bytes | None]) -> tuple[Peer, tuple[str, int]]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: Peer(answer), local_addr=("127.0.0.1", 0))
    return protocol, transport.get_extra_info("sockname")[:2]


def ok(cookie: bytes, body: dict | None = None) -> bytes:
    return cookie + b" " + CODEC.encode(body or {"result": "ok"})


def test_ping_and_error_reply_against_rtpengine(rtpengine):
    async def scenario() -> None:
        async with await NgClient.connect(rtpengine.ng, timing=FAST) as client:
            await client.ping()
            with pytest.raises(NgErrorReply, match="Unrecognized command"):
                await client.request({"command": "frobnicate"})
            replies = await asyncio.gather(*(client.request({"command": "ping"})
                                             for _ in range(50)))
            assert all(r["result"] == "pong" for r in replies)
            assert client.outstanding == 0

    run(scenario())


def test_a_lost_request_is_retransmitted_with_the_same_cookie():
    async def scenario() -> None:
        server, address = await peer(lambda c, d, n: None if n < 3 else ok(c))
        async with await NgClient.connect(address, timing=FAST) as client:
            assert (await client.request({"command": "query", "call-id": "x"}))["result"] == "ok"
            assert len(server.got) == 3 and len(set(server.got)) == 1
            assert client.protocol_counters["retransmits"] == 2
        server.transport.close()

    run(scenario())


def test_replies_from_other_addresses_are_ignored():
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stranger.bind(("127.0.0.1", 0))
        client_box: list[NgClient] = []

        def answer(cookie: bytes, data: bytes, n: int) -> bytes | None:
            # Before the real answer, a stranger sends a valid-looking error reply with our
            # cookie, and garbage.
            local = client_box[0].local_address
            stranger.sendto(ok(cookie, {"result": "error", "error-reason": "spoofed"}), local)
            stranger.sendto(b"\x00garbage", local)
            loop.call_later(0.05, server.transport.sendto, ok(cookie), local)
            return None

        server, address = await peer(answer)
        try:
            async with await NgClient.connect(address, timing=FAST) as client:
                client_box.append(client)
                assert (await client.request({"command": "ping"}))["result"] == "ok"
                assert client.counters["foreign"] == 2
        finally:
            stranger.close()
            server.transport.close()

    run(scenario())


def test_malformed_reply_is_a_typed_error_and_garbage_is_ignored():
    async def scenario() -> None:
        def answer(cookie: bytes, data: bytes, n: int) -> bytes | None:
            if b"query" in data:
                return cookie + b" d6:result"  # truncated bencode, our cookie
            return b"no cookie at all"  # ping: garbage, never an answer

        server, address = await peer(answer)
        async with await NgClient.connect(address, timing=FAST) as client:
            with pytest.raises(NgBadReply) as caught:
                await client.request({"command": "query", "call-id": "x"})
            assert caught.value.code == 900062
            started = time.monotonic()
            with pytest.raises(NgTimeout):
                await client.request({"command": "ping"})
            assert 0.9 < time.monotonic() - started < 1.6
            assert client.protocol_counters["ignored"] >= 1
        server.transport.close()

    run(scenario())


def test_outstanding_cap_and_close_fails_waiters_and_closes_the_socket():
    async def scenario() -> None:
        server, address = await peer(lambda c, d, n: None)
        client = await NgClient.connect(address, timing=NgTiming(timeout=5.0, retransmit=1.0),
                                        max_outstanding=3)
        waiting = [asyncio.ensure_future(client.request({"command": "ping"})) for _ in range(3)]
        await asyncio.sleep(0.05)
        with pytest.raises(NgOverloaded):
            await client.request({"command": "ping"})
        sock = client._transport.get_extra_info("socket")
        client.close()
        await asyncio.sleep(0)
        assert sock.fileno() == -1  # closed by close(), not left to the collector
        for task in waiting:
            with pytest.raises(NgClosed):
                await task
        with pytest.raises(NgClosed):
            await client.request({"command": "ping"})
        client.close()  # idempotent
        server.transport.close()

    run(scenario())


def test_a_cancelled_request_stops_retransmitting():
    async def scenario() -> None:
        server, address = await peer(lambda c, d, n: None)
        async with await NgClient.connect(address, timing=FAST) as client:
            task = asyncio.ensure_future(client.request({"command": "ping"}))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert client.outstanding == 0
            sent = len(server.got)
            await asyncio.sleep(0.5)
            assert len(server.got) == sent
        server.transport.close()

    run(scenario())


@pytest.mark.parametrize("uptime", [None, "soon", "nan", "-5"])
def test_endpoint_refuses_an_impossible_uptime(uptime):
    from mediafork.mediasource.rtpengine import RtpengineEndpoint

    async def scenario() -> None:
        total = {} if uptime is None else {"uptime": uptime}
        body = {"result": "ok", "statistics": {"totalstatistics": total}}
        server, address = await peer(lambda c, d, n: ok(c, body))
        endpoint = await RtpengineEndpoint.connect("fake", address, timing=FAST)
        try:
            with pytest.raises(NgBadReply, match="uptime"):
                await endpoint.heartbeat()
        finally:
            endpoint.close()
            server.transport.close()

    run(scenario())


def test_probe_that_times_out_waits_one_timeout_not_two():
    """rtpengine answers statistics, then goes silent: the failed probe does not spend a
    second timeout unsubscribing what was never answered."""
    from mediafork.mediasource.rtpengine import RtpengineEndpoint, RtpengineSource

    async def scenario() -> None:
        stats = {"result": "ok", "statistics": {"totalstatistics": {"uptime": "100"}}}
        server, address = await peer(lambda c, d, n: ok(c, stats) if b"statistics" in d else None)
        endpoint = await RtpengineEndpoint.connect("fake", address, timing=FAST)
        try:
            started = time.monotonic()
            with pytest.raises(NgTimeout):
                await RtpengineSource(endpoint, "call", "ta", "tb").probe()
            assert time.monotonic() - started < 1.5
            assert not [d for d in server.got if b"unsubscribe" in d]
        finally:
            endpoint.close()
            server.transport.close()

    run(scenario())
