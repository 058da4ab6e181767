"""The manager holds no audio: drained batches are released once fed (the recorder's own bound
is tested in tests/recording)."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from pathlib import Path

from manager_stack import RATE, Stack, ToneSender, push_fast, read_wav

from mediafork.engine import Track
from mediafork.recording import PacketBatch

MINUTE = 60
WARM_UP = 25


def test_long_call_memory_is_flat_and_batches_are_released(run_asyncio, tmp_path: Path) -> None:
    async def scenario() -> None:
        stack = await Stack.open(tmp_path, drain_interval=0.01)
        try:
            call = await stack.new_call()
            sid = (await stack.create(call, channels="dual"))["sid"]
            tap = stack.manager._taps[call.call_sid]
            senders = [ToneSender(call.engine_call, Track.INBOUND, 440),
                       ToneSender(call.engine_call, Track.OUTBOUND, 1000, ssrc=2)]

            async def second() -> None:
                push_fast(senders, 1.0)
                pushed = senders[0].sent_samples // 160 * 2
                while tap.packets_drained < pushed:  # wait for the drain task to take it
                    await asyncio.sleep(0.005)

            tracemalloc.start()
            try:
                # Warm up with tracing on, long enough for every bounded structure to reach its
                # bound (the de-duplication memory holds 1024 sequence numbers per track ≈ 20 s)
                # so the baseline is the steady state.
                for _ in range(WARM_UP):
                    await second()
                gc.collect()
                baseline = tracemalloc.get_traced_memory()[0]
                snap0 = tracemalloc.take_snapshot()
                for _ in range(MINUTE):
                    await second()
                gc.collect()
                growth = tracemalloc.get_traced_memory()[0] - baseline
                if growth >= 200_000:
                    for stat in tracemalloc.take_snapshot().compare_to(snap0, "lineno")[:8]:
                        print(stat)
            finally:
                tracemalloc.stop()
            # A minute of dual audio is ~1 MB of payload (~2 MB decoded); none of it may stay in
            # memory. The margin covers dict resizes in the bounded de-duplication memory.
            assert growth < 200_000, growth
            assert not [o for o in gc.get_objects() if isinstance(o, PacketBatch)]
            assert call.engine_call.counters()["inbound"].get("record_dropped", 0) == 0
            await stack.manager.call_ended(call.call_sid)
            frames, _ = read_wav(await stack.wav(call, sid))
            assert abs(len(frames) - (MINUTE + WARM_UP) * RATE) <= 160
        finally:
            await stack.close()

    run_asyncio(scenario(), timeout=90)
