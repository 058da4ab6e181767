"""Hostile network, resources: every media socket a call or a Siprec takes is released when
it ends, at once, never when the garbage collector happens to run.

The real daemon in this process (mediastack.py) on a 40-port media range, with the garbage
collector disabled for the whole scenario: one leaked Siprec (two forked streams, four
sockets) per cycle would exhaust the range within ten cycles and every create after that
would get 503 "no free media ports".
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mediastack import MediaStack, media_stack
from mfstack import run

from mediafork.engine import Engine

CYCLES = 1000
BUDGET_SECONDS = 60.0  # the cycle loop stops early (and says so) on a slow machine
MIN_CYCLES = 100  # ten times what a leak would survive on 40 ports


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def wait_for_descriptors(limit: int, timeout: float = 5.0) -> int:
    """The recorder (same process) closes its side after BYE on its own loop turn."""
    deadline = time.monotonic() + timeout
    while (n := open_descriptors()) > limit and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return n


def test_siprec_create_stop_cycles_never_run_out_of_ports(tmp_path: Path, no_gc) -> None:
    async def scenario(stack: MediaStack) -> None:
        view = await stack.register()
        call_sid = view["call_sid"]
        sockets_with_call = Engine.open_media_sockets()

        async def cycle() -> None:
            status, created = await stack.start_siprec(call_sid)
            assert status == 201, created  # never 503 "no free media ports"
            assert Engine.open_media_sockets() == sockets_with_call + 4
            status, stopped = await stack.stop_siprec(call_sid, created["sid"])
            assert status == 200, stopped
            # released when the stop returns, not later
            assert Engine.open_media_sockets() == sockets_with_call

        await cycle()  # warm up: connections, database pages, recorder sockets
        await asyncio.sleep(0.5)  # the recorder's side of the warm-up session closes
        before = open_descriptors()
        started = time.monotonic()
        cycles = 0
        while cycles < CYCLES and time.monotonic() - started < BUDGET_SECONDS:
            await cycle()
            cycles += 1
        elapsed = time.monotonic() - started
        after = await wait_for_descriptors(before)
        print(f"\n{cycles} Siprec create/stop cycles on {stack.port_range} in {elapsed:.1f} s; "
              f"descriptors before {before}, after {after}; "
              f"media sockets {Engine.open_media_sockets()}")
        assert cycles >= MIN_CYCLES
        assert after == before
        assert await stack.metric("mediafork_media_sockets_open") == sockets_with_call

    run(_with_stack(tmp_path, scenario), timeout=BUDGET_SECONDS + 60)


def test_deleting_a_call_frees_its_ingress_ports_at_once(tmp_path: Path, no_gc) -> None:
    async def scenario(stack: MediaStack) -> None:
        baseline = Engine.open_media_sockets()
        view = await stack.register()
        call_sid = view["call_sid"]
        ingress = [(a["address"], a["port"]) for a in view["ingress"].values()]
        status, created = await stack.start_siprec(call_sid)
        assert status == 201, created
        assert Engine.open_media_sockets() == baseline + 2 + 4
        assert await stack.metric("mediafork_media_sockets_open") == baseline + 6
        status, _ = await stack.request("DELETE", f"/v1/Calls/{call_sid}")
        assert status == 204
        assert Engine.open_media_sockets() == baseline
        # the ports are free for anyone now: bind the very same ones
        for address in ingress:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind(address)
        assert await stack.metric("mediafork_media_sockets_open") == baseline

    run(_with_stack(tmp_path, scenario))


async def _with_stack(folder: Path, scenario) -> None:
    async with media_stack(folder) as stack:
        await scenario(stack)
