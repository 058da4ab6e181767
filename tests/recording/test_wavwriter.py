"""Streamed WAV writer: header, atomic finalisation, truncation, crash recovery."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import numpy as np
import pytest

from mediafork.recording.wavwriter import HEADER_SIZE, WavWriter, partial_path, recover


def frames(n: int, channels: int = 2) -> np.ndarray:
    return (np.arange(n * channels, dtype=np.int32) % 2000 - 1000).astype(np.int16).reshape(n, channels)


def test_streamed_file_has_a_standard_header(tmp_path: Path) -> None:
    w = WavWriter(tmp_path / "a.wav", 2, 8000)
    data = frames(1000)
    for i in range(0, 1000, 160):
        w.write(data[i : i + 160])
    # While streaming only the partial file exists, and the audio is on disk, not in memory.
    assert not (tmp_path / "a.wav").exists()
    w._file.flush()
    assert partial_path(tmp_path / "a.wav").stat().st_size == HEADER_SIZE + 1000 * 4
    path = w.finalize()
    raw = path.read_bytes()
    riff, riff_size, wave_id = struct.unpack("<4sI4s", raw[:12])
    assert (riff, wave_id, riff_size) == (b"RIFF", b"WAVE", len(raw) - 8)
    assert struct.unpack("<I", raw[40:44])[0] == 1000 * 4
    with wave.open(str(path), "rb") as r:
        assert (r.getnchannels(), r.getframerate(), r.getsampwidth(), r.getnframes()) == (2, 8000, 2, 1000)
        got = np.frombuffer(r.readframes(1000), "<i2").reshape(1000, 2)
    np.testing.assert_array_equal(got, data)
    assert not partial_path(path).exists()


def test_truncate_drops_the_tail(tmp_path: Path) -> None:
    w = WavWriter(tmp_path / "t.wav", 1, 8000)
    w.write(frames(500, 1))
    w.truncate(200)
    w.write(frames(10, 1))
    path = w.finalize()
    with wave.open(str(path), "rb") as r:
        assert r.getnframes() == 210


def test_existing_partial_is_not_clobbered(tmp_path: Path) -> None:
    WavWriter(tmp_path / "x.wav", 1, 8000)
    with pytest.raises(FileExistsError):
        WavWriter(tmp_path / "x.wav", 1, 8000)


def test_abort_removes_the_partial(tmp_path: Path) -> None:
    w = WavWriter(tmp_path / "x.wav", 1, 8000)
    w.write(frames(10, 1))
    w.abort()
    assert list(tmp_path.iterdir()) == []


def test_recover_a_crashed_recording_with_a_torn_last_frame(tmp_path: Path) -> None:
    w = WavWriter(tmp_path / "crash.wav", 2, 8000)
    w.write(frames(4000))
    w._file.flush()
    temp = w.temp_path
    # Simulate a crash mid-write: the process dies (no finalize) after half a frame more hit disk.
    with open(temp, "ab") as f:
        f.write(b"\x01\x02")
    result = recover(temp)
    assert result.status == "completed" and result.frames == 4000 and result.channels == 2
    assert result.path == tmp_path / "crash.wav" and not temp.exists()
    assert result.duration_seconds == pytest.approx(0.5)
    with wave.open(str(result.path), "rb") as r:
        assert r.getnframes() == 4000
        np.testing.assert_array_equal(np.frombuffer(r.readframes(4000), "<i2").reshape(-1, 2), frames(4000))
    w._file.close()


def test_recover_an_empty_recording_is_absent(tmp_path: Path) -> None:
    w = WavWriter(tmp_path / "empty.wav", 1, 8000)
    w._file.flush()
    result = recover(w.temp_path)
    assert result.status == "absent" and result.path is None
    assert not w.temp_path.exists() and not (tmp_path / "empty.wav").exists()
    w._file.close()


def test_recover_a_torn_header_is_absent(tmp_path: Path) -> None:
    temp = partial_path(tmp_path / "torn.wav")
    temp.write_bytes(b"RIFF\x00\x00")
    assert recover(temp).status == "absent"
    assert not temp.exists()
    assert recover(temp).reason == "no partial file"


def test_recover_refuses_a_non_partial_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        recover(tmp_path / "final.wav")


def test_recover_rejects_foreign_content(tmp_path: Path) -> None:
    temp = partial_path(tmp_path / "junk.wav")
    temp.write_bytes(b"\x00" * 1000)
    assert recover(temp).status == "absent"
