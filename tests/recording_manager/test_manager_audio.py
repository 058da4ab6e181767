"""Audio through the whole stack: engine tap → drain task → CallRecording → WAV on disk."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from manager_stack import (
    ACCOUNT,
    PCMU,
    PTIME,
    RATE,
    Stack,
    ToneSender,
    band_energy,
    push_fast,
    read_wav,
    spectrum_peak,
)

from mediafork.engine import Track
from mediafork.recorder_api import CallCodec

SECONDS = 2.0


async def _record(tmp_path: Path, *, codec: CallCodec = PCMU, **request: object):
    """Record SECONDS of 440 Hz inbound / 1 kHz outbound; end the call; return the stack's
    view: (fetched resource, frames, rate, wav path)."""
    async with Stack.opened(tmp_path) as stack:
        call = await stack.new_call(codec)
        body = await stack.create(call, **request)
        assert body["status"] == "in-progress"
        senders = [
            ToneSender(call.engine_call, Track.INBOUND, 440, codec=codec.name),
            ToneSender(call.engine_call, Track.OUTBOUND, 1000, codec=codec.name, ssrc=0x99),
        ]
        push_fast(senders, SECONDS)
        await stack.manager.call_ended(call.call_sid)
        final = await stack.fetch(call, body["sid"])
        path = await stack.wav(call, body["sid"])
        frames, rate = read_wav(path)
        return final, frames, rate, path


def test_dual_puts_each_tone_on_its_channel(run, tmp_path: Path) -> None:
    final, frames, rate, path = run(_record(tmp_path, channels="dual"))
    assert final["status"] == "completed"
    assert final["channels"] == 2 and final["duration"] == "2" and final["error_code"] is None
    assert rate == RATE and frames.shape[1] == 2
    assert abs(len(frames) - SECONDS * RATE) <= PTIME  # within one packet of what was sent
    assert spectrum_peak(frames[:, 0]) == pytest.approx(440, abs=3)
    assert spectrum_peak(frames[:, 1]) == pytest.approx(1000, abs=3)
    assert band_energy(frames[:, 0], 1000) < 0.01 and band_energy(frames[:, 1], 440) < 0.01
    # storage_dir/<account>/<call>/<RE…>.wav
    assert path.name == f"{final['sid']}.wav"
    assert path.parent.name == final["call_sid"] and path.parent.parent.name == ACCOUNT


def test_mono_has_both_tones(run, tmp_path: Path) -> None:
    final, frames, _, _ = run(_record(tmp_path))  # defaults: mono, both
    assert final["channels"] == 1 and frames.shape[1] == 1
    assert abs(len(frames) - SECONDS * RATE) <= PTIME
    assert band_energy(frames[:, 0], 440) > 0.3 and band_energy(frames[:, 0], 1000) > 0.3


@pytest.mark.parametrize("track,present,absent", [("inbound", 440, 1000),
                                                   ("outbound", 1000, 440)])
def test_one_track_only(run_asyncio, tmp_path: Path, track: str, present: int,
                        absent: int) -> None:
    final, frames, _, _ = run_asyncio(_record(tmp_path, track=track))
    assert final["track"] == track and frames.shape[1] == 1
    assert spectrum_peak(frames[:, 0]) == pytest.approx(present, abs=3)
    assert band_energy(frames[:, 0], absent) < 0.01
    assert abs(len(frames) - SECONDS * RATE) <= PTIME


def test_alaw_call(run_asyncio, tmp_path: Path) -> None:
    final, frames, _, _ = run_asyncio(
        _record(tmp_path, codec=CallCodec("PCMA", 8, 8000), channels="dual")
    )
    assert final["status"] == "completed"
    assert spectrum_peak(frames[:, 0]) == pytest.approx(440, abs=3)
    assert spectrum_peak(frames[:, 1]) == pytest.approx(1000, abs=3)


@pytest.mark.skipif(shutil.which("sox") is None, reason="sox not installed")
def test_sox_reads_the_file(run_asyncio, tmp_path: Path) -> None:
    _, frames, _, path = run_asyncio(_record(tmp_path, channels="dual"))
    out = subprocess.run(["sox", "--i", str(path)], capture_output=True, text=True, timeout=10,
                         check=True).stdout
    assert "Channels       : 2" in out
    assert "Sample Rate    : 8000" in out
    assert f"{len(frames)} samples" in out
    assert "16-bit Signed Integer PCM" in out


def test_trim_silence_cuts_leading_silence(run_asyncio, tmp_path: Path) -> None:
    async def scenario() -> tuple[np.ndarray, dict]:
        async with Stack.opened(tmp_path) as stack:
            call = await stack.new_call()
            body = await stack.create(call, trim="trim-silence", track="inbound")
            sender = ToneSender(call.engine_call, Track.INBOUND, 440)
            # 1 s of digital silence (µ-law 0xFF) first, then 1 s of tone.
            sender._pcm = np.concatenate([np.zeros(RATE, np.int16), sender._pcm])
            push_fast([sender], 2.0)
            await stack.manager.call_ended(call.call_sid)
            frames, _ = read_wav(await stack.wav(call, body["sid"]))
            return frames, await stack.fetch(call, body["sid"])

    frames, final = run_asyncio(scenario())
    assert final["status"] == "completed"
    assert abs(len(frames) - RATE) <= 2 * PTIME  # only the tone is left
