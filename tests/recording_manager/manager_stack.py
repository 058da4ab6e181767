"""A real stack for the RecordingManager tests: threaded Engine (embedded, pushed G.711),
SQLite store in tmp_path, Outbox, and an aiohttp callback receiver on 127.0.0.1 that checks
every request's X-Twilio-Signature with the official RequestValidator."""

from __future__ import annotations

import asyncio
import time
import wave
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvloop
from aiohttp import web
from twilio.request_validator import RequestValidator

from mediafork.calls import CallHandle
from mediafork.control.forms import RecordingRequest, RecordingUpdate
from mediafork.control.outbox import Outbox
from mediafork.control.sids import new_sid
from mediafork.control.store import AsyncStore, CallRecord
from mediafork.engine import Call, Engine, Track
from mediafork.recorder_api import CallCodec
from mediafork.recording.g711 import alaw_encode, ulaw_encode
from mediafork.recording.manager import RecordingManager
from mediafork.synth import rtp_packet, tone

ACCOUNT = "AC" + "0123456789abcdef" * 2
OTHER_ACCOUNT = "AC" + "f" * 32
TOKEN = "recording-manager-token"
BASE_URL = "https://mediafork.example"
RATE = 8000
PTIME = 160  # samples per 20 ms packet
PCMU = CallCodec()


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """``run(coro, timeout=…)``: run a coroutine to completion on a fresh loop, bounded."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def runner(coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(asyncio.wait_for(coro, timeout))

    return runner


@pytest.fixture
def run_asyncio() -> Callable[..., Any]:
    """One loop only, for the slow real-time tests (pacing, not loop behaviour, is tested)."""

    def runner(coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        with asyncio.Runner() as r:
            return r.run(asyncio.wait_for(coro, timeout))

    return runner


@dataclass
class Callback:
    path: str
    method: str
    params: dict[str, str]
    signature_ok: bool


@dataclass
class Receiver:
    """Records every callback and whether its signature verified."""

    token: str = TOKEN
    base: str = ""
    received: list[Callback] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    _event: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        validator = RequestValidator(self.token)
        signature = request.headers.get("X-Twilio-Signature", "")
        if request.method == "POST":
            params = {k: str(v) for k, v in (await request.post()).items()}
            ok = validator.validate(str(request.url), params, signature)
        else:
            params = dict(request.query)
            ok = validator.validate(str(request.url), {}, signature)
        self.received.append(Callback(request.path, request.method, params, ok))
        self._event.set()
        return web.Response(text="ok")

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[Callback]:
        async def poll() -> None:
            while len(self.received) < count:
                self._event.clear()
                await self._event.wait()

        await asyncio.wait_for(poll(), timeout)
        return self.received


class ToneSender:
    """One track's RTP stream of a tone, continuing seq/timestamp across calls."""

    def __init__(self, call: Call, track: Track, freq: float, *, codec: str = "PCMU",
                 seq: int = 1000, ts: int = 50_000, ssrc: int = 0x1234) -> None:
        self.call, self.track, self.freq = call, track, freq
        self.encode = ulaw_encode if codec == "PCMU" else alaw_encode
        self.pt = 0 if codec == "PCMU" else 8
        self.seq, self.ts, self.ssrc = seq, ts, ssrc
        self.sent_samples = 0
        self._pcm = tone(freq, 1.0, level=0.4)  # 1 s is a whole number of periods of 440/1000 Hz

    def packet(self) -> bytes:
        start = self.sent_samples % len(self._pcm)
        pcm = self._pcm[start : start + PTIME]
        pkt = rtp_packet(self.seq, self.ts, self.encode(pcm), payload_type=self.pt, ssrc=self.ssrc)
        self.seq = (self.seq + 1) & 0xFFFF
        self.ts = (self.ts + PTIME) & 0xFFFFFFFF
        self.sent_samples += PTIME
        return pkt

    def push(self, packets: int) -> None:
        data = [self.packet() for _ in range(packets)]
        lengths = np.array([len(p) for p in data], dtype=np.uint32)
        offsets = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.uint32)
        buf = np.frombuffer(b"".join(data), dtype=np.uint8)
        assert self.call.push_many(self.track, buf, offsets, lengths) == packets


def push_fast(senders: list[ToneSender], seconds: float, chunk: int = 25) -> None:
    """Push ``seconds`` of audio on every sender as fast as possible, tracks interleaved per
    chunk (arrival times ≈ equal: durations come from the RTP timestamps).

    Returns once the worker has taken every pushed packet: it does so on its next loop, and
    on a busy machine a stop or a call end coming right after could otherwise overtake the
    packets (the audio would look lost)."""
    def taken() -> dict[tuple[int, Track], int]:
        return {(id(s.call), s.track): s.call.counters()[s.track.label]["received"]
                for s in senders if not s.call.closed}

    expected = taken()
    remaining = round(seconds * RATE / PTIME)
    while remaining:
        n = min(chunk, remaining)
        for s in senders:
            s.push(n)
            if (id(s.call), s.track) in expected:
                expected[(id(s.call), s.track)] += n
        remaining -= n
    deadline = time.monotonic() + 5
    while any(taken().get(key, want) < want for key, want in expected.items()):
        if time.monotonic() > deadline:
            raise AssertionError("the media worker did not take the pushed packets in 5 s")
        time.sleep(0.002)


async def push_paced(senders: list[ToneSender], seconds: float) -> None:
    """Push ``seconds`` of audio in real time, one packet per track every 20 ms (arrival times
    follow media time, as on a real call: pause/stop cuts are placed by arrival time)."""
    packets = round(seconds * RATE / PTIME)
    start = time.monotonic()
    for i in range(packets):
        delay = start + i * PTIME / RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        for s in senders:
            s.push(1)


@dataclass
class Stack:
    tmp_path: Path
    engine: Engine
    store: AsyncStore
    outbox: Outbox
    receiver: Receiver
    manager: RecordingManager
    calls: list[CallHandle] = field(default_factory=list)

    @classmethod
    async def open(cls, tmp_path: Path, *, drain_interval: float = 0.02) -> Stack:
        engine = Engine()
        store = await AsyncStore.open(tmp_path / "mediafork.db")
        outbox = Outbox(store, {ACCOUNT: TOKEN}.get, backoff_initial=0.02, jitter=0)
        receiver = await Receiver().start()
        manager = RecordingManager(
            engine=engine, store=store, outbox=outbox, storage_dir=tmp_path / "recordings",
            public_base_url=BASE_URL, drain_interval=drain_interval,
        )
        return cls(tmp_path, engine, store, outbox, receiver, manager)

    @classmethod
    @asynccontextmanager
    async def opened(cls, tmp_path: Path, **options: Any) -> AsyncIterator[Stack]:
        """``async with Stack.opened(tmp_path) as stack:``: :meth:`open` with the same
        options, and :meth:`close` however the block ends."""
        stack = await cls.open(tmp_path, **options)
        try:
            yield stack
        finally:
            await stack.close()

    async def new_call(self, codec: CallCodec = PCMU, account: str = ACCOUNT) -> CallHandle:
        call_sid = new_sid("CA")
        engine_call = self.engine.add_call(call_sid, ingress=False, record_slots=8192,
                                           clock_rate=codec.clock_rate)
        await self.store.register_call(
            CallRecord(call_sid, account, "sip:alice@pbx.example", "sip:bob@pbx.example",
                       {"name": codec.name, "payload_type": codec.payload_type,
                        "clock_rate": codec.clock_rate})
        )
        handle = CallHandle(call_sid, account, engine_call, "sip:alice@pbx.example",
                            "sip:bob@pbx.example", codec)
        self.calls.append(handle)
        return handle

    def callback_url(self, name: str = "cb") -> str:
        return f"{self.receiver.base}/{name}?x=1"

    async def create(self, call: CallHandle, **kwargs: Any) -> dict[str, Any]:
        request = RecordingRequest(**kwargs)
        return await self.manager.create(account_sid=call.account_sid, call=call, request=request)

    async def update(self, call: CallHandle, sid: str, status: str,
                     behavior: str | None = None) -> dict[str, Any]:
        return await self.manager.update(
            account_sid=call.account_sid, call_sid=call.call_sid, sid=sid,
            update=RecordingUpdate(status=status, pause_behavior=behavior),  # type: ignore[arg-type]
        )

    async def fetch(self, call: CallHandle, sid: str) -> dict[str, Any]:
        return await self.manager.fetch(account_sid=call.account_sid, call_sid=call.call_sid,
                                        sid=sid)

    async def wait_status(self, call: CallHandle, sid: str, statuses: tuple[str, ...],
                          timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            body = await self.fetch(call, sid)
            if body["status"] in statuses:
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"recording stuck at {body['status']}")
            await asyncio.sleep(0.01)

    async def wav(self, call: CallHandle, sid: str) -> Path:
        path = await self.manager.wav_path(account_sid=call.account_sid,
                                           call_sid=call.call_sid, sid=sid)
        assert path is not None
        return path

    async def close(self) -> None:
        try:
            await self.manager.close()
            await self.outbox.close(2.0)
        finally:
            await self.store.close()
            await self.receiver.stop()
            self.engine.close()


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """(frames × channels int16, rate)."""
    with wave.open(str(path), "rb") as w:
        assert w.getsampwidth() == 2
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return data.reshape(-1, w.getnchannels()), w.getframerate()


def spectrum_peak(x: np.ndarray, rate: int = RATE) -> float:
    x = x.astype(np.float64)
    mags = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[int(np.argmax(mags))])


def band_energy(x: np.ndarray, freq: float, rate: int = RATE, width: float = 30.0) -> float:
    """Share of the signal's spectral energy within ``width`` Hz of ``freq``."""
    x = x.astype(np.float64)
    mags = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    total = mags.sum()
    return float(mags[np.abs(freqs - freq) <= width].sum() / total) if total else 0.0
