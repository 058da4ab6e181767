"""End-to-end: synthetic G.711 calls through CallRecording to a WAV file."""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest
from recording_synth import (
    PTIME,
    RATE,
    band_energy,
    packetize,
    peak_hz,
    tone,
    worker_batches,
)

from mediafork.recording.g711 import alaw_encode, ulaw_decode, ulaw_encode
from mediafork.recording.recorder import ERROR_NO_AUDIO, CallRecording, RecordingOptions
from mediafork.recording.wavwriter import partial_path

PACKET_S = PTIME / RATE


def read_wav(path: Path) -> tuple[np.ndarray, int, int]:
    with wave.open(str(path), "rb") as w:
        assert w.getsampwidth() == 2
        frames = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return frames.reshape(-1, w.getnchannels()), w.getnchannels(), w.getframerate()


def record(tmp_path: Path, tracks, name: str = "call.wav", commands=(), **opts):
    """Run a call; ``commands`` are (arrival_time, method, kwargs) interleaved by time."""
    rec = CallRecording(tmp_path / name, RecordingOptions(**opts))
    pending = sorted(commands, key=lambda c: c[0])
    for track, batch in worker_batches(tracks):
        first = float(batch.arrival[0])
        while pending and pending[0][0] <= first:
            _, method, kwargs = pending.pop(0)
            getattr(rec, method)(now=_, **kwargs)
        rec.feed(track, batch)
    for t, method, kwargs in pending:
        getattr(rec, method)(now=t, **kwargs)
    return rec, rec.finish()


def two_tones(seconds: float = 2.0, out_delay: float = 0.0, **kw):
    return {
        "inbound": packetize(tone(440, seconds), seq0=65000, ts0=4_000_000_000, t0=100.0, **kw),
        "outbound": packetize(tone(1000, seconds), seq0=7, ts0=999, t0=100.0 + out_delay, **kw),
    }


def test_dual_puts_each_tone_in_its_own_channel(tmp_path: Path) -> None:
    rec, res = record(tmp_path, two_tones(2.0), channels="dual")
    assert res.status == "completed" and res.error_code is None
    frames, channels, rate = read_wav(res.path)
    assert (channels, rate, res.channels) == (2, 8000, 2)
    assert abs(res.duration_seconds - 2.0) <= PACKET_S
    assert len(frames) == res.samples
    assert abs(peak_hz(frames[:, 0]) - 440) <= 3
    assert abs(peak_hz(frames[:, 1]) - 1000) <= 3
    assert band_energy(frames[:, 0], 1000) < 0.01 and band_energy(frames[:, 1], 440) < 0.01
    assert not partial_path(res.path).exists()


def test_mono_mixes_both_tones(tmp_path: Path) -> None:
    _, res = record(tmp_path, two_tones(2.0), channels="mono")
    frames, channels, _ = read_wav(res.path)
    assert channels == 1
    assert abs(res.duration_seconds - 2.0) <= PACKET_S
    mono = frames[:, 0]
    assert band_energy(mono, 440) > 0.3 and band_energy(mono, 1000) > 0.3


def test_mono_sum_saturates_instead_of_wrapping(tmp_path: Path) -> None:
    loud = np.full(8000, 30000, np.int16)
    tracks = {"inbound": packetize(loud, t0=5.0), "outbound": packetize(loud, t0=5.0)}
    _, res = record(tmp_path, tracks, channels="mono")
    frames, _, _ = read_wav(res.path)
    assert frames.min() > 0 and frames.max() == 32767


@pytest.mark.parametrize(("track", "freq", "other"), [("inbound", 440, 1000), ("outbound", 1000, 440)])
def test_single_track_selection(tmp_path: Path, track: str, freq: int, other: int) -> None:
    rec, res = record(tmp_path, two_tones(2.0), channels="mono", track=track)
    frames, channels, _ = read_wav(res.path)
    assert channels == 1
    assert abs(peak_hz(frames[:, 0]) - freq) <= 3
    assert band_energy(frames[:, 0], other) < 0.01
    assert rec.ignored_batches > 0


def test_dual_with_one_track_keeps_the_layout(tmp_path: Path) -> None:
    _, res = record(tmp_path, two_tones(1.0), channels="dual", track="outbound")
    frames, channels, _ = read_wav(res.path)
    assert channels == 2
    assert not frames[:, 0].any()
    assert abs(peak_hz(frames[:, 1]) - 1000) <= 3


def test_tracks_are_aligned_by_first_arrival(tmp_path: Path) -> None:
    # The outbound track starts 0.5 s after the inbound one (independent timestamp bases): its
    # channel must begin with 0.5 s of silence and the file must cover both.
    _, res = record(tmp_path, two_tones(2.0, out_delay=0.5), channels="dual")
    frames, _, _ = read_wav(res.path)
    assert abs(res.duration_seconds - 2.5) <= PACKET_S
    first_out = int(np.flatnonzero(frames[:, 1])[0])
    assert abs(first_out - 4000) <= 2
    assert frames[:, 0][:100].any()


def test_alaw_call(tmp_path: Path) -> None:
    tracks = {"inbound": packetize(tone(440, 1.0), encode=alaw_encode, pt=8)}
    _, res = record(tmp_path, tracks, codec="PCMA", track="inbound")
    frames, _, _ = read_wav(res.path)
    assert abs(peak_hz(frames[:, 0]) - 440) <= 3
    assert abs(res.duration_seconds - 1.0) <= PACKET_S


def test_loss_and_reordering_keep_the_length(tmp_path: Path) -> None:
    tracks = two_tones(3.0)
    inbound = tracks["inbound"]
    for i in (10, 11, 40, 97):  # lost
        inbound[i] = None
    inbound = [p for p in inbound if p is not None]
    for i in range(20, 140, 7):  # reordered: arrive 20 ms late, after their successor
        inbound[i].arrival, inbound[i + 1].arrival = inbound[i + 1].arrival, inbound[i].arrival
        inbound[i], inbound[i + 1] = inbound[i + 1], inbound[i]
    tracks["inbound"] = inbound
    rec, res = record(tmp_path, tracks, channels="dual")
    assert abs(res.duration_seconds - 3.0) <= PACKET_S
    stats = res.stats["inbound"]
    assert stats.late == 0 and stats.gap_samples == 4 * PTIME
    frames, _, _ = read_wav(res.path)
    assert (frames[10 * PTIME : 12 * PTIME, 0] == 0).all()


def test_dtx_gap_is_silence_of_the_right_length(tmp_path: Path) -> None:
    # Inbound talks 1 s, stays silent (no packets, timestamps jump) 2 s, talks 1 s.
    first = packetize(tone(440, 1.0), ts0=50, seq0=10, t0=100.0)
    second = packetize(tone(440, 1.0), ts0=50 + 24000, seq0=60, t0=103.0)
    tracks = {"inbound": first + second, "outbound": packetize(tone(1000, 4.0), t0=100.0)}
    _, res = record(tmp_path, tracks, channels="dual")
    frames, _, _ = read_wav(res.path)
    assert abs(res.duration_seconds - 4.0) <= PACKET_S
    inbound = frames[:, 0]
    assert not inbound[8000:24000].any()
    assert inbound[24000:24100].any() and inbound[7900:8000].any()
    assert res.stats["inbound"].gap_samples == 16000


def test_sequence_and_timestamp_wrap_mid_call(tmp_path: Path) -> None:
    tracks = {
        "inbound": packetize(tone(440, 2.0), seq0=0xFFFF - 20, ts0=0xFFFFFFFF - 4000, t0=1.0),
        "outbound": packetize(tone(1000, 2.0), seq0=0xFFFF - 60, ts0=0xFFFFFFFF - 9000, t0=1.0),
    }
    _, res = record(tmp_path, tracks, channels="dual")
    assert abs(res.duration_seconds - 2.0) <= PACKET_S
    assert sum(s.late + s.gap_samples for s in res.stats.values()) == 0
    frames, _, _ = read_wav(res.path)
    assert abs(peak_hz(frames[:, 0]) - 440) <= 3 and abs(peak_hz(frames[:, 1]) - 1000) <= 3


@pytest.mark.parametrize(("behavior", "expected_s"), [("skip", 4.0), ("silence", 6.0)])
def test_pause_behaviors(tmp_path: Path, behavior: str, expected_s: float) -> None:
    # 6 s call, paused from t=2 s to t=4 s.
    tracks = two_tones(6.0)
    commands = [(102.0, "pause", {"behavior": behavior}), (104.0, "resume", {})]
    _, res = record(tmp_path, tracks, channels="dual", commands=commands)
    assert abs(res.duration_seconds - expected_s) <= PACKET_S
    frames, _, _ = read_wav(res.path)
    if behavior == "silence":
        assert not frames[16000 + 80 : 32000 - 80].any()
        assert frames[16000 - 200 : 16000 - 80].any() and frames[32000 + 80 : 32000 + 200].any()
    else:
        # The paused 2 s are cut out: the file is the call's first 2 s followed by its last 2 s.
        sent = ulaw_decode(ulaw_encode(tone(440, 6.0)))
        np.testing.assert_array_equal(frames[:, 0], np.concatenate([sent[:16000], sent[32000:]]))


def test_pause_while_media_stops_and_skip_removes_the_gap(tmp_path: Path) -> None:
    # Media stops during the pause (hold): timestamps jump by the hold time; skip removes it.
    first = packetize(tone(440, 1.0), ts0=0, seq0=0, t0=10.0)
    second = packetize(tone(440, 1.0), ts0=8000 * 4, seq0=50, t0=14.0)
    commands = [(11.0, "pause", {"behavior": "skip"}), (14.0, "resume", {})]
    _, res = record(tmp_path, {"inbound": first + second}, track="inbound", commands=commands)
    assert abs(res.duration_seconds - 2.0) <= PACKET_S


def test_stop_discards_later_audio(tmp_path: Path) -> None:
    _, res = record(tmp_path, two_tones(4.0), commands=[(101.5, "stop", {})])
    assert abs(res.duration_seconds - 1.5) <= PACKET_S


def test_trim_silence_cuts_leading_and_trailing_silence(tmp_path: Path) -> None:
    quiet = np.zeros(8000, np.int16)
    pcm = np.concatenate([quiet, tone(440, 2.0), quiet, quiet])
    tracks = {"inbound": packetize(pcm, t0=0.0)}
    _, untrimmed = record(tmp_path, tracks, name="a.wav", track="inbound")
    _, trimmed = record(tmp_path, tracks, name="b.wav", track="inbound", trim="trim-silence")
    assert abs(untrimmed.duration_seconds - 5.0) <= PACKET_S
    assert abs(trimmed.duration_seconds - 2.0) <= PACKET_S
    frames, _, _ = read_wav(trimmed.path)
    assert frames[:80].any() and frames[-80:].any()
    assert abs(peak_hz(frames[:, 0]) - 440) <= 3


def test_trim_keeps_quiet_speech_above_the_threshold(tmp_path: Path) -> None:
    # -40 dBFS tone is above the default -50 dBFS threshold: nothing to trim.
    pcm = tone(440, 1.0, amplitude=10 ** (-37 / 20))
    _, res = record(tmp_path, {"inbound": packetize(pcm)}, track="inbound", trim="trim-silence")
    assert abs(res.duration_seconds - 1.0) <= PACKET_S


def test_no_audio_is_absent(tmp_path: Path) -> None:
    rec = CallRecording(tmp_path / "none.wav", RecordingOptions(channels="dual"))
    res = rec.finish()
    assert res.status == "absent" and res.error_code == ERROR_NO_AUDIO and res.path is None
    assert list(tmp_path.iterdir()) == []
    assert rec.finish() is res


def test_all_silence_trimmed_is_absent(tmp_path: Path) -> None:
    tracks = {"inbound": packetize(np.zeros(8000, np.int16))}
    _, res = record(tmp_path, tracks, track="inbound", trim="trim-silence")
    assert res.status == "absent" and res.error_code == ERROR_NO_AUDIO
    assert list(tmp_path.iterdir()) == []


def test_file_is_not_visible_under_its_final_name_until_finished(tmp_path: Path) -> None:
    rec = CallRecording(tmp_path / "live.wav", RecordingOptions(track="inbound"))
    for track, batch in worker_batches({"inbound": packetize(tone(440, 5.0))}):
        rec.feed(track, batch)
    assert not (tmp_path / "live.wav").exists()
    assert partial_path(tmp_path / "live.wav").stat().st_size > 44  # streamed, not buffered
    rec.finish()
    assert (tmp_path / "live.wav").exists() and not partial_path(tmp_path / "live.wav").exists()


@pytest.mark.skipif(shutil.which("sox") is None, reason="sox not installed")
def test_sox_reads_the_file(tmp_path: Path) -> None:
    _, res = record(tmp_path, two_tones(1.0), channels="dual")
    info = subprocess.run(
        ["sox", "--i", str(res.path)], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    assert "Channels       : 2" in info
    assert "Sample Rate    : 8000" in info
    assert f"= {res.samples} samples" in info


def test_invalid_options_are_rejected(tmp_path: Path) -> None:
    for bad in ({"channels": "stereo"}, {"track": "all"}, {"trim": "yes"}, {"codec": "G729"}):
        with pytest.raises(ValueError):
            RecordingOptions(**bad)
    rec = CallRecording(tmp_path / "x.wav")
    with pytest.raises(ValueError):
        rec.pause("mute")
    rec.abort()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_memory_stays_bounded_over_ten_minutes(tmp_path: Path) -> None:
    # 10 minutes of both tracks (60 000 packets), with the outbound track going quiet (no packets)
    # for a minute in the middle: the buffered audio must stay within the skew + jitter bounds.
    seconds = 600
    pattern = tone(440, 1.0)
    inbound = packetize(np.tile(pattern, seconds), t0=0.0)
    outbound = [p for p in packetize(np.tile(tone(1000, 1.0), seconds), t0=0.003)
                if not 200 <= p.arrival < 260]
    rec, res = record(tmp_path, {"inbound": inbound, "outbound": outbound}, channels="dual")
    assert abs(res.duration_seconds - seconds) <= PACKET_S
    # The leader's max_skew (2 s) of released audio, plus per track a jitter window and a batch;
    # without the skew bound the outbound gap alone would hold 60 s of inbound audio.
    bound = 2.0 * RATE + 2 * (0.06 * RATE) + 2 * (0.1 * RATE)
    assert rec.peak_buffered_samples <= bound
    assert res.stats["outbound"].late == 0


def test_status_follows_the_commands(tmp_path: Path) -> None:
    rec = CallRecording(tmp_path / "s.wav")
    assert rec.status == "in-progress"
    rec.pause("skip", now=1.0)
    assert rec.status == "paused"
    rec.pause("silence", now=1.5)  # already paused: no second interval
    rec.resume(now=2.0)
    assert rec.status == "in-progress"
    rec.stop(now=3.0)
    assert rec.status == "stopped"
    assert rec.finish().status == "absent" and rec.status == "absent"
    with pytest.raises(RuntimeError):
        rec.feed("inbound", worker_batch_one())


def worker_batch_one():
    return next(iter(worker_batches({"inbound": packetize(tone(440, 0.1))})))[1]


def test_pause_issued_before_the_first_packet_lands_on_the_wallclock(tmp_path: Path) -> None:
    # Pause at t=99 s (before any media), resume at 101 s; media starts at 100 s → the first
    # second of audio is skipped.
    tracks = {"inbound": packetize(tone(440, 3.0), t0=100.0)}
    rec = CallRecording(tmp_path / "p.wav", RecordingOptions(track="inbound"))
    rec.pause("skip", now=99.0)
    rec.resume(now=101.0)
    for track, batch in worker_batches(tracks):
        rec.feed(track, batch)
    assert abs(rec.finish().duration_seconds - 2.0) <= PACKET_S


def test_batches_without_arrival_times_still_record(tmp_path: Path) -> None:
    # Embedded callers may not have arrival times: tracks then start where they are first seen
    # and commands take effect at the newest audio received.
    from mediafork.recording.batch import PacketBatch

    pkts = packetize(tone(440, 2.0))
    rec = CallRecording(tmp_path / "n.wav", RecordingOptions(track="inbound"))
    for i in range(0, len(pkts), 5):
        part = pkts[i : i + 5]
        rec.feed("inbound", PacketBatch.from_packets([(p.seq, p.ts, p.payload) for p in part]))
        if i == 50:  # after 55 packets = 1.1 s received
            rec.pause("silence")
        if i == 75:  # after 80 packets = 1.6 s received
            rec.resume()
    res = rec.finish()
    assert abs(res.duration_seconds - 2.0) <= PACKET_S
    frames, _, _ = read_wav(res.path)
    assert not frames[int(1.1 * RATE) : int(1.6 * RATE)].any()
    assert frames[int(1.6 * RATE) :].any() and frames[: int(1.1 * RATE)].any()


def test_later_fed_track_that_arrived_first_moves_the_anchor(tmp_path: Path) -> None:
    # The worker hands over the inbound batch first, but the outbound's first packet arrived
    # 30 ms earlier: the outbound channel must start at 0 and the inbound at 240 samples.
    tracks = {
        "inbound": packetize(tone(440, 1.0), t0=100.03),
        "outbound": packetize(tone(1000, 1.0), t0=100.0),
    }
    rec = CallRecording(tmp_path / "o.wav", RecordingOptions(channels="dual"))
    inb = list(worker_batches({"inbound": tracks["inbound"]}, window=0.2))
    out = list(worker_batches({"outbound": tracks["outbound"]}, window=0.2))
    for (t1, b1), (t2, b2) in zip(inb, out, strict=True):
        rec.feed(t1, b1)
        rec.feed(t2, b2)
    res = rec.finish()
    frames, _, _ = read_wav(res.path)
    assert int(np.flatnonzero(frames[:, 1])[0]) <= 2
    assert abs(int(np.flatnonzero(frames[:, 0])[0]) - 240) <= 2


class _FullDisk:
    """Wraps the writer's file: accepts ``budget`` bytes, then fails like a full disk (ENOSPC)."""

    def __init__(self, f, budget: int) -> None:
        self._f, self._budget = f, budget

    def write(self, data: bytes) -> int:
        if len(data) > self._budget:
            self._f.write(data[: self._budget])  # a torn write: part of the last chunk lands
            self._budget = 0
            raise OSError(28, "No space left on device")
        self._budget -= len(data)
        return self._f.write(data)

    def __getattr__(self, name: str):
        return getattr(self._f, name)


@pytest.mark.parametrize(("budget", "status"), [(44 + 8001, "completed"), (44, "absent")])
def test_disk_full_salvages_what_reached_the_disk(tmp_path: Path, budget: int, status: str) -> None:
    rec = CallRecording(tmp_path / "full.wav", RecordingOptions(channels="dual"))
    rec.writer._file = _FullDisk(rec.writer._file, budget - 44)
    for track, batch in worker_batches(two_tones(5.0)):
        rec.feed(track, batch)  # must not raise: the media consumer keeps running
    assert rec.io_error is not None
    res = rec.finish()
    assert res.status == status and res.io_error and "No space" in res.io_error
    assert not partial_path(tmp_path / "full.wav").exists()
    if status == "completed":
        assert res.samples == 8001 // 4  # whole stereo frames only; the torn one is cut
        frames, channels, _ = read_wav(res.path)
        assert channels == 2 and len(frames) == 2000
    else:
        assert res.path is None and not (tmp_path / "full.wav").exists()


def test_call_shorter_than_the_jitter_window_is_recorded(tmp_path: Path) -> None:
    tracks = {"inbound": packetize(tone(440, 0.04)), "outbound": packetize(tone(1000, 0.04))}
    _, res = record(tmp_path, tracks, channels="dual")
    assert res.status == "completed" and res.samples == 2 * PTIME
    frames, _, _ = read_wav(res.path)
    assert frames[:, 0].any() and frames[:, 1].any()


def test_one_way_call_records_the_talking_track(tmp_path: Path) -> None:
    # Both tracks requested, but the outbound never sends a packet (one-way audio).
    tracks = {"inbound": packetize(tone(440, 4.0), t0=20.0)}
    rec, res = record(tmp_path, tracks, channels="mono", track="both")
    assert res.status == "completed"
    assert abs(res.duration_seconds - 4.0) <= PACKET_S
    # max_skew of released audio + the jitter window and the packet straddling it + one batch
    assert rec.peak_buffered_samples <= 2.0 * RATE + 0.06 * RATE + PTIME + 0.1 * RATE
    frames, _, _ = read_wav(res.path)
    assert abs(peak_hz(frames[:, 0]) - 440) <= 3
