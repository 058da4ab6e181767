"""Streamed, crash-safe 16-bit PCM WAV files.

Layout: the canonical 44-byte header (RIFF chunk, 16-byte ``fmt `` chunk with WAVE_FORMAT_PCM,
``data`` chunk) followed by interleaved little-endian int16 frames. The two size fields (RIFF size
at byte 4, data size at byte 40) are unknown while streaming, so the header is written first with
zeros there and patched when the file is finalised.

Crash safety: audio is written to ``<final>.partial`` in the target folder and only renamed to the
final name (``os.replace``, atomic on POSIX within one filesystem) after the header is patched and
the data fsynced. So a file under its final name is always complete; a ``.partial`` file is what a
crash left behind, and ``recover()`` turns it into a complete file from what reached the disk (or
reports that nothing did).

Size limit: RIFF sizes are 32-bit. At 8 kHz stereo that is ~37 hours; beyond that the writer stops
appending and sets ``overflowed`` (the file stays valid).
"""

from __future__ import annotations

import contextlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

__all__ = ["HEADER_SIZE", "PARTIAL_SUFFIX", "RecoveredFile", "WavWriter", "partial_path", "recover"]

HEADER_SIZE = 44
PARTIAL_SUFFIX = ".partial"
_MAX_DATA = 0xFFFFFFFF - (HEADER_SIZE - 8)  # largest data chunk whose RIFF size still fits
_WAVE_FORMAT_PCM = 1
_BITS = 16


def partial_path(final: str | os.PathLike[str]) -> Path:
    """Where a recording destined for ``final`` is written while in progress."""
    final = Path(final)
    return final.with_name(final.name + PARTIAL_SUFFIX)


def _header(channels: int, rate: int, data_bytes: int) -> bytes:
    block_align = channels * _BITS // 8
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        HEADER_SIZE - 8 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,
        _WAVE_FORMAT_PCM,
        channels,
        rate,
        rate * block_align,
        block_align,
        _BITS,
        b"data",
        data_bytes,
    )


def _fsync_dir(path: Path) -> None:
    # Make the rename itself durable; not every platform can open a directory, so best effort.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class WavWriter:
    """Appends int16 frames to ``<path>.partial``; ``finalize()`` makes ``path`` appear complete."""

    def __init__(self, path: str | os.PathLike[str], channels: int, rate: int) -> None:
        if channels not in (1, 2):
            raise ValueError("channels must be 1 or 2")
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.path = Path(path)
        self.temp_path = partial_path(self.path)
        self.channels = channels
        self.rate = rate
        self.frame_bytes = channels * _BITS // 8
        self.frames = 0
        self.overflowed = False
        self.closed = False
        # Exclusive create: two recordings must never share a file by accident. Call audio
        # is the owner's only (0600), whatever the umask and the folder's mode.
        fd = os.open(self.temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._file: BinaryIO = os.fdopen(fd, "wb")  # lives until finalize/abort
        self._file.write(_header(channels, rate, 0))

    def write(self, frames: npt.NDArray[np.int16]) -> None:
        """Append frames shaped (n, channels) (or (n,) for mono)."""
        if self.closed:
            raise ValueError("write to a finished WAV file")
        data = np.ascontiguousarray(frames, dtype="<i2")
        if data.ndim == 1:
            data = data.reshape(-1, 1)
        if data.shape[1] != self.channels:
            raise ValueError(f"expected {self.channels} channels, got {data.shape[1]}")
        room = (_MAX_DATA - self.frames * self.frame_bytes) // self.frame_bytes
        if len(data) > room:
            data = data[:room]
            self.overflowed = True
        self._file.write(data.tobytes())
        self.frames += len(data)

    def truncate(self, frames: int) -> None:
        """Drop everything after the first ``frames`` frames (trailing silence trim)."""
        if frames < self.frames:
            self._file.flush()
            self._file.truncate(HEADER_SIZE + frames * self.frame_bytes)
            self._file.seek(0, os.SEEK_END)
            self.frames = frames

    @property
    def duration_seconds(self) -> float:
        return self.frames / self.rate

    def finalize(self) -> Path:
        """Patch the sizes, fsync, and atomically rename to the final path."""
        if self.closed:
            raise ValueError("WAV file already finished")
        f = self._file
        f.seek(0)
        f.write(_header(self.channels, self.rate, self.frames * self.frame_bytes))
        f.flush()
        os.fsync(f.fileno())
        f.close()
        self.closed = True
        os.replace(self.temp_path, self.path)
        _fsync_dir(self.path.parent)
        return self.path

    def abandon(self) -> None:
        """Close the handle after a write error, leaving ``.partial`` for ``recover()``."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):  # a full disk may refuse the final flush
                self._file.close()

    def abort(self) -> None:
        """Close and delete the partial file (no audio, or the recording was discarded)."""
        if not self.closed:
            self._file.close()
            self.closed = True
        self.temp_path.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class RecoveredFile:
    """Outcome of ``recover``: ``status`` is ``completed`` (``path`` is a valid WAV) or ``absent``."""

    status: str
    path: Path | None
    frames: int
    channels: int
    rate: int
    reason: str = ""

    @property
    def duration_seconds(self) -> float:
        return self.frames / self.rate if self.rate else 0.0


def recover(partial: str | os.PathLike[str]) -> RecoveredFile:
    """Finish a ``.partial`` WAV left by a crash.

    The format fields were written when the file was created, so only the sizes need fixing: the
    data size is whatever whole frames reached the disk (a torn final frame is cut off). With at
    least one frame the header is patched and the file renamed to its final name → ``completed``.
    Otherwise (no file, no valid header, no frames) the partial file is removed → ``absent``.
    """
    partial = Path(partial)
    if partial.name.endswith(PARTIAL_SUFFIX):
        final = partial.with_name(partial.name[: -len(PARTIAL_SUFFIX)])
    else:
        raise ValueError(f"not a partial recording (no {PARTIAL_SUFFIX} suffix): {partial}")

    def absent(reason: str, channels: int = 0, rate: int = 0) -> RecoveredFile:
        partial.unlink(missing_ok=True)
        return RecoveredFile("absent", None, 0, channels, rate, reason)

    try:
        f = open(partial, "r+b")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        return RecoveredFile("absent", None, 0, 0, 0, "no partial file")
    with f:
        head = f.read(HEADER_SIZE)
        if len(head) < HEADER_SIZE:
            return absent("header incomplete")
        riff, _, wave, fmt, fmt_size, tag, channels, rate, _, align, bits, data, _ = struct.unpack(
            "<4sI4s4sIHHIIHH4sI", head
        )
        valid = (
            (riff, wave, fmt, data) == (b"RIFF", b"WAVE", b"fmt ", b"data")
            and fmt_size == 16
            and tag == _WAVE_FORMAT_PCM
            and bits == _BITS
            and channels in (1, 2)
            and rate > 0
            and align == channels * _BITS // 8
        )
        if not valid:
            return absent("not a mediafork WAV header")
        size = os.fstat(f.fileno()).st_size
        frames = min(size - HEADER_SIZE, _MAX_DATA) // align
        if frames <= 0:
            return absent("no audio reached the disk", channels, rate)
        f.truncate(HEADER_SIZE + frames * align)
        f.seek(0)
        f.write(_header(channels, rate, frames * align))
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, final)
    _fsync_dir(final.parent)
    return RecoveredFile("completed", final, frames, channels, rate)
