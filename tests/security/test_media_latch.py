"""Hostile network, media: nobody but the call's media source gets audio into a recording.

Ingress ports are predictable. A call registered without ``sources`` latches each track onto
the first address:port that sends it valid RTP; a stranger (here 127.0.0.2, its own SSRC)
who sends to the same port is dropped and counted, and the recorder never receives a packet
of it. ``[media] latch = false`` restores accept-anything.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
from mediastack import MediaStack, media_stack
from mfstack import run

from mediafork.daemon.config import ConfigError, load_config

LEGIT, STRANGER = 60, 100


def packet(seq: int, ssrc: int, fill: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, ssrc) + bytes([fill]) * 160


async def send_both(target: tuple[str, int]) -> None:
    """The media server (127.0.0.1) streams; a stranger on 127.0.0.2 joins after ten packets."""
    legit = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        legit.bind(("127.0.0.1", 0))
        stranger.bind(("127.0.0.2", 0))
        sent_stranger = 0
        for i in range(LEGIT):
            legit.sendto(packet(1000 + i, 0xAAAA0001, 0x11), target)
            if i >= 10 and sent_stranger < STRANGER:
                for _ in range(2):
                    stranger.sendto(packet(5000 + sent_stranger, 0xBBBB0002, 0x22), target)
                    sent_stranger += 1
            await asyncio.sleep(0.002)
        assert sent_stranger == STRANGER
    finally:
        legit.close()
        stranger.close()


async def recorded_packets(stack: MediaStack, expected: int, timeout: float = 5.0) -> int:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        summaries = await stack.recorder_summaries()
        got = sum(s["totals"]["packets"] for s in summaries)
        if got >= expected or asyncio.get_running_loop().time() > deadline:
            return got
        await asyncio.sleep(0.05)


async def recording_started(stack: MediaStack, call_sid: str, track: str) -> dict[str, Any]:
    """Create a Siprec and return once its fork has the recorder's address: the answer's
    destination is queued to the worker without waiting, and packets before it are
    skipped, not recorded."""
    status, created = await stack.start_siprec(call_sid, track=track)
    assert status == 201, created
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        status, view = await stack.request("GET", f"/v1/Calls/{call_sid}")
        if view["forks"] and all(f["destination"] for f in view["forks"]):
            break
        assert asyncio.get_running_loop().time() < deadline, view
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)  # the worker applies a queued command within microseconds
    return view["ingress"]["inbound"]


async def inbound_counters(stack: MediaStack, call_sid: str, received: int) -> dict[str, int]:
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        status, view = await stack.request("GET", f"/v1/Calls/{call_sid}")
        assert status == 200, view
        counters = view["counters"]["inbound"]
        if counters["received"] + counters["source_rejected"] >= received:
            return counters
        assert asyncio.get_running_loop().time() < deadline, counters
        await asyncio.sleep(0.05)


def test_a_stranger_never_reaches_the_recorder(tmp_path: Path) -> None:
    async def scenario(stack: MediaStack) -> None:
        view = await stack.register()
        call_sid = view["call_sid"]
        inbound = await recording_started(stack, call_sid, "inbound_track")
        await send_both((inbound["address"], inbound["port"]))
        counters = await inbound_counters(stack, call_sid, LEGIT + STRANGER)
        assert counters["received"] == LEGIT
        assert counters["source_rejected"] == STRANGER
        assert counters["source_latches"] == 1
        assert await recorded_packets(stack, LEGIT) == LEGIT
        await asyncio.sleep(0.3)  # nothing more trickles in
        summaries = await stack.recorder_summaries()
        assert sum(s["totals"]["packets"] for s in summaries) == LEGIT
        assert all(st["ssrc_changes"] == 0 for s in summaries for st in s["streams"])
        assert await stack.metric(
            'mediafork_packets_dropped_total{reason="source_rejected"}') == STRANGER

    async def with_stack() -> None:
        async with media_stack(tmp_path) as stack:
            await scenario(stack)

    run(with_stack())


def test_latch_off_lets_every_sender_through(tmp_path: Path) -> None:
    async def scenario(stack: MediaStack) -> None:
        view = await stack.register()
        inbound = await recording_started(stack, view["call_sid"], "inbound_track")
        await send_both((inbound["address"], inbound["port"]))
        counters = await inbound_counters(stack, view["call_sid"], LEGIT + STRANGER)
        assert counters["received"] == LEGIT + STRANGER and counters["source_rejected"] == 0
        assert await recorded_packets(stack, LEGIT + STRANGER) == LEGIT + STRANGER

    async def with_stack() -> None:
        async with media_stack(tmp_path, media_extra="latch = false") as stack:
            await scenario(stack)

    run(with_stack())


@pytest.mark.parametrize(("line", "message"), [
    ("latch = \"yes\"", "media.latch: must be true or false"),
    ("relatch_after = -1", "media.relatch_after: must be between 0 and 3600"),
    ("relatch_after = \"3s\"", "media.relatch_after: must be a number"),
])
def test_bad_latch_settings_are_refused_clearly(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "mediafork.toml"
    path.write_text(f'[api]\nlisten = "127.0.0.1:0"\n[media]\n{line}\n'
                    '[[accounts]]\nsid = "AC' + "e5" * 16 + '"\nauth_token = "' + "t" * 20 + '"\n')
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(path)


def test_latch_settings_load(tmp_path: Path) -> None:
    path = tmp_path / "mediafork.toml"
    path.write_text('[media]\nlatch = false\nrelatch_after = 0.5\n'
                    '[[accounts]]\nsid = "AC' + "e5" * 16 + '"\nauth_token = "' + "t" * 20 + '"\n')
    media = load_config(path).media
    assert media.latch is False and media.relatch_after == 0.5
    path.write_text('[[accounts]]\nsid = "AC' + "e5" * 16 + '"\nauth_token = "' + "t" * 20 + '"\n')
    media = load_config(path).media
    assert media.latch is True and media.relatch_after == 3.0
