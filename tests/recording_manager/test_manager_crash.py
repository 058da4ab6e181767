"""Crash recovery: a process recording is SIGKILLed; the next one finalises from the disk."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from manager_stack import (
    ACCOUNT,
    PTIME,
    RATE,
    TOKEN,
    Receiver,
    read_wav,
    spectrum_peak,
)

from mediafork.control.outbox import Outbox
from mediafork.control.store import AsyncStore, RecordingRecord
from mediafork.engine import Engine
from mediafork.recording import ERROR_NO_AUDIO, PARTIAL_SUFFIX
from mediafork.recording.manager import RecordingManager, _recover_file

HERE = Path(__file__).parent


def test_sigkill_then_recover_after_crash(run_asyncio, tmp_path: Path) -> None:
    async def scenario() -> None:
        receiver = await Receiver().start()
        db, storage = tmp_path / "mediafork.db", tmp_path / "recordings"
        child = await asyncio.create_subprocess_exec(
            sys.executable, str(HERE / "crash_child.py"), str(db), str(storage),
            f"{receiver.base}/cb", cwd=HERE, stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        try:
            line = await asyncio.wait_for(child.stdout.readline(), 20)
        finally:
            child.send_signal(signal.SIGKILL)
            await child.wait()
        audio_sid, audio_call, silent_sid, silent_call = line.decode().split()
        partial = storage / ACCOUNT / audio_call / f"{audio_sid}.wav{PARTIAL_SUFFIX}"
        on_disk_frames = (partial.stat().st_size - 44) // 4  # what the crash left
        assert on_disk_frames > 1.5 * RATE  # most of the 2 s had been written

        store = await AsyncStore.open(db)
        outbox = Outbox(store, {ACCOUNT: TOKEN}.get, backoff_initial=0.02)
        engine = Engine()
        manager = RecordingManager(engine=engine, store=store, outbox=outbox,
                                   storage_dir=storage, public_base_url="https://mf.example")
        try:
            report = await store.reconcile_after_crash()
            assert {r.sid for r in report.recordings} == {audio_sid, silent_sid}
            await manager.recover_after_crash(report)

            audio = await manager.fetch(account_sid=ACCOUNT, call_sid=audio_call, sid=audio_sid)
            assert audio["status"] == "completed" and audio["error_code"] is None
            path = await manager.wav_path(account_sid=ACCOUNT, call_sid=audio_call,
                                          sid=audio_sid)
            assert path is not None and not partial.exists()
            frames, _ = read_wav(path)
            assert len(frames) == on_disk_frames  # exactly what reached the disk
            assert audio["duration"] == str(round(on_disk_frames / RATE))
            assert spectrum_peak(frames[:, 0]) == pytest.approx(440, abs=3)
            assert spectrum_peak(frames[:, 1]) == pytest.approx(1000, abs=3)

            silent = await manager.fetch(account_sid=ACCOUNT, call_sid=silent_call,
                                         sid=silent_sid)
            assert silent["status"] == "absent" and silent["error_code"] == ERROR_NO_AUDIO
            assert not list((storage / ACCOUNT / silent_call).glob("*.wav*"))

            received = await receiver.wait_for(2)
            by_sid = {c.params["RecordingSid"]: c for c in received}
            assert by_sid[audio_sid].params["RecordingStatus"] == "completed"
            assert by_sid[audio_sid].params["RecordingDuration"] == audio["duration"]
            assert by_sid[silent_sid].params["RecordingStatus"] == "absent"
            assert all(c.signature_ok for c in received)

            # Nothing is left unfinished: a second restart finds no work.
            assert (await store.reconcile_after_crash()).recordings == ()
        finally:
            await manager.close()
            await outbox.close(2.0)
            await store.close()
            await receiver.stop()
            engine.close()

    run_asyncio(scenario(), timeout=60)


def _record(path: Path) -> RecordingRecord:
    return RecordingRecord(sid="RE" + "1" * 32, account_sid=ACCOUNT, call_sid="CA" + "1" * 32,
                           status="processing", channels=1, track="both", trim="do-not-trim",
                           status_callback=None, status_callback_method="POST",
                           status_callback_events=("completed",), file_path=str(path))


def test_recover_file_after_rename(tmp_path: Path) -> None:
    # Crash after the atomic rename, before the store said completed: the final file counts.
    path = tmp_path / "done.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(np.ones(3 * PTIME, "<i2").tobytes())
    assert _recover_file(_record(path)) == ("completed", 3 * PTIME / RATE, path)


def test_recover_file_nothing_on_disk(tmp_path: Path) -> None:
    assert _recover_file(_record(tmp_path / "never.wav")) == ("absent", 0.0, None)
    torn = tmp_path / "torn.wav.partial"
    torn.write_bytes(b"RIFF")  # header cut short
    assert _recover_file(_record(tmp_path / "torn.wav")) == ("absent", 0.0, None)
    assert not torn.exists()
