"""Pause / resume / stop through the API on audio paced in real time.

The cuts are placed by CLOCK_MONOTONIC: the manager stamps each command with the same clock as
the engine's arrival_ns, so the audio must arrive at the pace it was produced for the expected
durations to hold (as on a real call). Tolerance: two packets (command timing against packet
boundaries, and sleep jitter of the paced sender)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from manager_stack import PTIME, RATE, Stack, ToneSender, push_paced, read_wav, spectrum_peak

from mediafork.engine import Track

SEGMENT = 0.6  # seconds: recorded, paused, recorded
TOLERANCE = 2 * PTIME


async def _paused_call(tmp_path: Path, behavior: str) -> tuple[np.ndarray, dict, list[str]]:
    stack = await Stack.open(tmp_path)
    try:
        call = await stack.new_call()
        body = await stack.create(call, channels="dual")
        sid = body["sid"]
        senders = [ToneSender(call.engine_call, Track.INBOUND, 440),
                   ToneSender(call.engine_call, Track.OUTBOUND, 1000, ssrc=3)]
        statuses = []
        await push_paced(senders, SEGMENT)
        statuses.append((await stack.update(call, sid, "paused", behavior))["status"])
        await push_paced(senders, SEGMENT)
        statuses.append((await stack.update(call, sid, "in-progress"))["status"])
        await push_paced(senders, SEGMENT)
        await asyncio.sleep(0.1)  # everything sent is before the stop
        statuses.append((await stack.update(call, sid, "stopped"))["status"])
        final = await stack.wait_status(call, sid, ("completed", "absent"))
        frames, _ = read_wav(await stack.wav(call, sid))
        return frames, final, statuses
    finally:
        await stack.close()


def _audible(frames: np.ndarray) -> bool:
    return bool(np.abs(frames.astype(np.int32)).mean() > 1000)


def test_pause_skip_removes_the_paused_time(run_asyncio, tmp_path: Path) -> None:
    frames, final, statuses = run_asyncio(_paused_call(tmp_path, "skip"))
    assert statuses == ["paused", "in-progress", "stopped"]
    assert final["status"] == "completed"
    expected = round(2 * SEGMENT * RATE)
    assert abs(len(frames) - expected) <= TOLERANCE, (len(frames), expected)
    assert _audible(frames[: len(frames) // 2]) and _audible(frames[len(frames) // 2 :])
    assert spectrum_peak(frames[:, 0]) == pytest.approx(440, abs=3)
    assert spectrum_peak(frames[:, 1]) == pytest.approx(1000, abs=3)


def test_pause_silence_keeps_the_paused_time_as_silence(run_asyncio, tmp_path: Path) -> None:
    frames, final, statuses = run_asyncio(_paused_call(tmp_path, "silence"))
    assert statuses == ["paused", "in-progress", "stopped"]
    expected = round(3 * SEGMENT * RATE)
    assert abs(len(frames) - expected) <= TOLERANCE, (len(frames), expected)
    seg = round(SEGMENT * RATE)
    margin = TOLERANCE
    assert not frames[seg + margin : 2 * seg - margin].any()  # digital silence while paused
    assert _audible(frames[margin : seg - margin])
    assert _audible(frames[2 * seg + margin : 3 * seg - margin])
