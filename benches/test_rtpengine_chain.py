"""The rtpengine chain bench (benches/rtpengine_chain.py) under scripts/bench: rtpengine
relaying and forking N calls to mediafork, mediafork forking them to the recorder. Skipped
when rtpengine is not installed. ``MEDIAFORK_BENCH_CHAIN_CALLS`` (500) and
``MEDIAFORK_BENCH_CHAIN_SECONDS`` (20) size it; it stays under a minute."""

from __future__ import annotations

import asyncio
import os

import pytest

from mediafork.mediasource.local_rtpengine import find_rtpengine

from . import rtpengine_chain


@pytest.mark.e2e
@pytest.mark.skipif(find_rtpengine() is None, reason="rtpengine is not installed")
def test_rtpengine_chain(benchmark):
    calls = int(os.environ.get("MEDIAFORK_BENCH_CHAIN_CALLS", "500"))
    seconds = float(os.environ.get("MEDIAFORK_BENCH_CHAIN_SECONDS", "20"))
    result: dict = {}

    def once() -> None:
        result.update(asyncio.run(asyncio.wait_for(
            rtpengine_chain.run(calls, seconds, say=lambda _: None), seconds + 60)))

    benchmark.pedantic(once, rounds=1, iterations=1)
    benchmark.extra_info.update({f"rtpengine_chain_{k}": v for k, v in result.items()})
    assert result["party_packets_sent"] > 0
