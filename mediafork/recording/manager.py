"""The Recordings resource's engine side: taps a call's tracks, writes WAVs, keeps the store
and the status callbacks in step (issue 5 §1 status flow and §3).

Shape, and why:

* **One tap per call.** ``Call.record(tracks)`` opens the engine's recording ring for the union
  of the tracks the call's live recordings need; one drain task per call empties it every
  ``drain_interval`` and fans each drained batch out to every live ``CallRecording`` of the call.
  Several recordings of one call therefore share one ring and one copy out of C. A recording is
  a local sink: it never takes one of the call's four forked streams.
* **No audio work on the event loop.** Draining, decoding, mixing and disk writes run in a small
  thread pool. ``CallRecording`` is not thread-safe, so every job that touches a call's
  recordings holds that call's lock (FIFO): jobs of one call run one at a time and in the order
  the loop submitted them; different calls run in parallel.
* **Commands are queued, not applied, on the loop.** Pause/resume/stop append
  ``(recording, command, monotonic time)`` to the call's queue in the same synchronous step that
  changes the status, and the next job applies the queue before it feeds audio. The recorder
  places a command by its wall time (same CLOCK_MONOTONIC as the packets' ``arrival_ns``), so
  the delay until a job runs does not move the cut.
* **The store is written before anything is announced.** The row exists before its file (a
  crash in between leaves a row whose file never appeared → ``absent``); each status change is
  written before its callback is emitted, and the outbox stores the callback before sending it.
* **Status flow**: ``in-progress`` → (``paused`` ↔ ``in-progress``) → ``stopped`` (API) or call
  end → ``processing`` → ``completed`` / ``absent`` (error 16102, nothing was captured). After a
  crash, :meth:`RecordingManager.recover_after_crash` finalises what reached the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import wave
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np

from ..control import errors
from ..control.errors import ApiError
from ..control.events import recording_params, recording_url
from ..control.forms import RecordingRequest, RecordingUpdate, validate_callback_url
from ..control.quotas import check_live_limit
from ..control.resources import (
    account_recording_list_uri,
    list_page,
    page_request,
    recording_list_uri,
    render_recording,
)
from ..control.sids import RECORDING, new_sid
from ..control.store import CrashReport, RecordingRecord, StoreError
from ..control.timefmt import utcnow
from ..engine import EngineError, Track
from ..private_dirs import make_private_dir
from .batch import PacketBatch
from .recorder import ERROR_NO_AUDIO, CallRecording, RecordingOptions, RecordingResult
from .wavwriter import partial_path, recover

if TYPE_CHECKING:
    from ..calls import CallHandle
    from ..control.outbox import Outbox
    from ..control.store import AsyncStore

__all__ = ["RecordingManager"]

log = logging.getLogger("mediafork.recording")

T = TypeVar("T")

# Packets per drain_recording call: the C ring hands out at most this many per copy; the pump
# loops until the ring is empty, so this only sizes the temporary arrays.
_DRAIN_MAX = 1024

_ENGINE_TRACKS: dict[str, tuple[Track, ...]] = {
    "inbound": (Track.INBOUND,),
    "outbound": (Track.OUTBOUND,),
    "both": (Track.INBOUND, Track.OUTBOUND),
}
# Calls whose end was reported, remembered so a late create is refused (bounded: the host
# closes the engine call soon after, which refuses it too).
_ENDED_MEMORY = 4096
_TRACK_NAMES = {int(Track.INBOUND): "inbound", int(Track.OUTBOUND): "outbound"}

LiveStatus = Literal["in-progress", "paused", "stopped", "processing"]
_Command = tuple["_Live", str, tuple[Any, ...]]


def _monotonic() -> float:
    # The engine stamps arrival_ns with CLOCK_MONOTONIC; time.monotonic_ns is the same clock on
    # Linux. Converting both the same way keeps pause/stop cuts exact.
    return time.monotonic_ns() / 1e9


@dataclass(eq=False)
class _Live:
    """A recording this process is writing."""

    record: RecordingRecord
    tap: _Tap
    recording: CallRecording
    status: LiveStatus = "in-progress"
    finishing: asyncio.Task[None] | None = None
    announced: asyncio.Task[None] | None = None

    @property
    def sid(self) -> str:
        return self.record.sid


@dataclass(eq=False)
class _Tap:
    """The recording tap of one call, shared by its live recordings."""

    call: CallHandle
    live: dict[str, _Live] = field(default_factory=dict)
    claims: dict[str, frozenset[Track]] = field(default_factory=dict)
    """Tracks each recording needs (set before its file is opened, dropped when it ends)."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    commands: deque[_Command] = field(default_factory=deque)
    tracks: frozenset[Track] = frozenset()
    task: asyncio.Task[None] | None = None
    ended: bool = False
    packets_drained: int = 0

    @property
    def call_sid(self) -> str:
        return self.call.call_sid


class RecordingManager:
    """Creates, drives and finalises the local recordings of live calls."""

    def __init__(
        self,
        *,
        engine: Any,
        store: AsyncStore,
        outbox: Outbox,
        storage_dir: Path,
        public_base_url: str | None = None,
        drain_interval: float = 0.1,
    ) -> None:
        if drain_interval <= 0:
            raise ValueError("drain_interval must be positive")
        self.engine = engine
        self.store = store
        self.outbox = outbox
        self.storage_dir = Path(storage_dir)
        self.public_base_url = public_base_url
        self.drain_interval = drain_interval
        # A few threads: one call's jobs are serialised by its lock, calls run in parallel.
        self._executor = ThreadPoolExecutor(
            max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="mediafork-recording"
        )
        self._taps: dict[str, _Tap] = {}
        self._live: dict[str, _Live] = {}
        self._starting: dict[str, str] = {}
        """Recordings being created (SID -> account), for the max_recordings check."""
        self._background: set[asyncio.Task[Any]] = set()
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._closed = False

    def __repr__(self) -> str:
        return f"RecordingManager(storage_dir={str(self.storage_dir)!r}, live={len(self._live)})"

    # ------------------------------------------------------------------ API

    async def create(
        self, *, account_sid: str, call: CallHandle, request: RecordingRequest,
        max_live: int | None = None,
    ) -> dict[str, Any]:
        """``POST …/Calls/{CallSid}/Recordings.json``: start recording; the 201 body.

        *max_live*: the account's ``max_recordings``; a create beyond it gets 429.
        """
        options = self.check(account_sid=account_sid, call=call, request=request,
                             max_live=max_live)
        sid = new_sid(RECORDING)
        # Counted as live from here on (no await since the check): concurrent creates cannot
        # overshoot max_live.
        self._starting[sid] = account_sid
        try:
            return await self._start(account_sid, call, request, options, sid)
        finally:
            self._starting.pop(sid, None)

    def check(self, *, account_sid: str, call: CallHandle, request: RecordingRequest,
              max_live: int | None = None) -> RecordingOptions:
        """Every rule :meth:`create` applies before it changes anything (a caller that must
        prepare something first, such as subscribing to a media source, checks here)."""
        self._check_open()
        # The form was parsed against the built-in rules only; the daemon's policy (its
        # [callbacks] allow/deny and own listeners) lives with the dispatcher that sends.
        validate_callback_url(request.status_callback, "RecordingStatusCallback",
                              self.outbox.dispatcher.egress)
        if call.account_sid != account_sid:
            raise errors.not_found("call")
        if call.engine_call.closed:
            raise ApiError(errors.CALL_NOT_LIVE, "The call has ended: it cannot be recorded")
        if call.call_sid in self._ended:
            raise ApiError(errors.CALL_NOT_LIVE, "The call has ended: it cannot be recorded")
        options = self._options(call, request)
        if max_live is not None:
            check_live_limit("recordings", "max_recordings", self.live_count(account_sid),
                             max_live)
        return options

    def call_live_count(self, call_sid: str) -> int:
        """The call's recordings that are live or being finalised."""
        tap = self._taps.get(call_sid)
        return len(tap.live) if tap is not None else 0

    def live_count(self, account_sid: str) -> int:
        """The account's recordings that are starting, live or being finalised."""
        sids = {sid for sid, live in self._live.items() if live.record.account_sid == account_sid}
        sids.update(sid for sid, account in self._starting.items() if account == account_sid)
        return len(sids)

    async def _start(self, account_sid: str, call: CallHandle, request: RecordingRequest,
                     options: RecordingOptions, sid: str) -> dict[str, Any]:
        path = self.storage_dir / account_sid / call.call_sid / f"{sid}.wav"
        now = utcnow()
        record = RecordingRecord(
            sid=sid,
            account_sid=account_sid,
            call_sid=call.call_sid,
            status="in-progress",
            channels=request.channel_count,
            track=request.track,
            trim=request.trim,
            status_callback=request.status_callback,
            status_callback_method=request.status_callback_method,
            status_callback_events=tuple(sorted(request.status_callback_events)),
            start_time=now,
            file_path=str(path),
            date_created=now,
            date_updated=now,
        )
        try:
            # Row before file: a crash in between leaves a row whose file never appeared, which
            # recovery reports as absent, rather than an unaccounted file.
            await self.store.create_recording(record)
        except StoreError:
            raise errors.not_found("call") from None
        tap = self._tap_for(call)
        # Claim the tracks before the first await, so a concurrent re-tap (another recording
        # of the call finishing) keeps tapping what this one is about to need.
        tap.claims[sid] = frozenset(_ENGINE_TRACKS[request.track])
        try:
            recording = await self._on_worker(
                tap, self._open_job, tap, _recordings(tap), path, options, _needed_tracks(tap)
            )
        except Exception as exc:  # noqa: BLE001 - the client gets a 500, the row must not linger
            log.error("recording %s: cannot start (%s: %s)", sid, type(exc).__name__, exc)
            tap.claims.pop(sid, None)
            await self.store.delete_recording(sid)
            await self._after_removal(tap)
            raise ApiError(errors.INTERNAL, "The recording could not be started") from None
        # Fed from the next drain on: no audio is lost while the event is being stored.
        live = _Live(record, tap, recording)
        tap.live[sid] = live
        self._live[sid] = live
        if tap.ended or self._closed:
            # The call ended (or we are shutting down) while the file was being opened.
            self._start_finish(live)
        else:
            self._ensure_drain_task(tap)
        # Finalisation waits for this, so in-progress is always stored (and therefore
        # delivered) before completed/absent.
        live.announced = self._spawn(self._emit(record, "in-progress", None, None))
        await asyncio.shield(live.announced)
        return render_recording(record)

    async def update(
        self, *, account_sid: str, call_sid: str, sid: str, update: RecordingUpdate
    ) -> dict[str, Any]:
        """``POST …/Recordings/{Sid}.json`` with ``Status`` paused / in-progress / stopped."""
        now = _monotonic()  # the client's moment: where the cut goes, whatever the delays below
        record = await self._get(account_sid, call_sid, sid)
        live = self._live.get(sid)
        if live is None or live.status not in ("in-progress", "paused"):
            status = live.status if live is not None else record.status
            raise ApiError(
                errors.INVALID_STATUS,
                f"The recording is {status}: it can no longer be paused, resumed or stopped",
            )
        target = update.status
        if target == live.status:
            # Repeating the current status (a client retry) changes nothing; a second pause
            # keeps the first pause's behaviour, as the recorder does.
            return render_recording(record)
        tap = live.tap
        updated: RecordingRecord | None
        if target == "paused":
            behavior = update.pause_behavior or "silence"
            tap.commands.append((live, "pause", (behavior, now)))
            live.status = "paused"
            updated = await self.store.update_recording(
                sid, status="paused", pause_behavior=behavior
            )
        elif target == "in-progress":
            tap.commands.append((live, "resume", (now,)))
            live.status = "in-progress"
            updated = await self.store.update_recording(sid, status="in-progress")
        else:
            tap.commands.append((live, "stop", (now,)))
            live.status = "stopped"
            # Scheduled before the await: a delete arriving meanwhile then waits for it. The
            # task's first store write is queued after this one, so the order is kept.
            self._start_finish(live)
            updated = await self.store.update_recording(sid, status="stopped")
        return render_recording(updated or record)

    async def fetch(self, *, account_sid: str, call_sid: str, sid: str) -> dict[str, Any]:
        return render_recording(await self._get(account_sid, call_sid, sid))

    async def list(
        self, *, account_sid: str, call_sid: str, query: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """A page of the call's recordings (``Page`` / ``PageSize`` from ``query``)."""
        records = await self.store.list_recordings(account_sid, call_sid)
        return list_page(
            "recordings",
            records,
            render_recording,
            recording_list_uri(account_sid, call_sid),
            page_request(dict(query or {})),
        )

    async def list_account(self, *, account_sid: str,
                           query: Mapping[str, str] | None = None) -> dict[str, Any]:
        """A page of the account's recordings, newest first (``CallSid``, ``Page``,
        ``PageSize`` from ``query``), for ``/Accounts/{AccountSid}/Recordings.json``."""
        query = dict(query or {})
        call_sid = query.get("CallSid") or None
        records = await self.store.list_account_recordings(account_sid, call_sid)
        return list_page("recordings", records, render_recording,
                         account_recording_list_uri(account_sid), page_request(query))

    async def call_of(self, *, account_sid: str, sid: str) -> str:
        """The call a recording of this account belongs to (404 if none)."""
        record: RecordingRecord | None = await self.store.find_recording(account_sid, sid)
        if record is None:
            # The same 404 as for another account's SID or a malformed one: nothing tells
            # "exists elsewhere" from "exists nowhere".
            raise errors.not_found("resource")
        return record.call_sid

    async def wav_path(self, *, account_sid: str, call_sid: str, sid: str) -> Path | None:
        """The finished WAV, or None until the recording is ``completed`` (404 if unknown)."""
        record = await self._get(account_sid, call_sid, sid)
        if record.status != "completed" or not record.file_path:
            return None
        path = Path(record.file_path)
        return path if path.is_file() else None

    async def delete(self, *, account_sid: str, call_sid: str, sid: str) -> None:
        """Remove the resource and its audio; a live recording is discarded first."""
        record = await self._get(account_sid, call_sid, sid)
        live = self._live.get(sid)
        if live is not None:
            if live.finishing is not None:
                # Let finalisation settle the file and the store first, then delete both.
                await asyncio.shield(live.finishing)
            else:
                self._forget(live)
                await self._on_worker(live.tap, self._abort_job, live.tap, live)
                await self._after_removal(live.tap)
        row = await self.store.delete_recording(sid)
        path = (row or record).file_path
        if path:
            await asyncio.get_running_loop().run_in_executor(self._executor, _remove_files, Path(path))

    async def call_ended(self, call_sid: str) -> None:
        """The call is over: finalise its recordings (→ processing → completed/absent).

        Call it before closing the engine call if possible: the last ~``drain_interval`` of
        audio still in the engine's ring is drained here and would be lost otherwise.
        """
        self._ended[call_sid] = None
        while len(self._ended) > _ENDED_MEMORY:
            self._ended.popitem(last=False)
        tap = self._taps.get(call_sid)
        if tap is None:
            return
        tap.ended = True
        for live in list(tap.live.values()):
            self._start_finish(live)
        pending = [live.finishing for live in tap.live.values() if live.finishing is not None]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        await self._stop_drain_task(tap)
        if self._taps.get(call_sid) is tap and not tap.live:
            del self._taps[call_sid]

    async def recover_after_crash(self, report: CrashReport | None = None) -> None:
        """Finalise the recordings a previous process left unfinished, from what reached disk.

        Pass the :class:`CrashReport` if the service already ran
        ``store.reconcile_after_crash()`` (it must run once, and it also settles Siprecs and
        calls); without one this method runs it. Each unfinished recording becomes
        ``completed`` (its ``.partial`` WAV repaired, or its final WAV if the crash came after
        the rename) or ``absent`` with error 16102, and its subscribed callback is emitted.
        """
        self._check_open()
        if report is None:
            report = await self.store.reconcile_after_crash()
        loop = asyncio.get_running_loop()
        for record in report.recordings:
            if record.sid in self._live:
                continue  # ours, alive: not a leftover
            try:
                outcome = await loop.run_in_executor(self._executor, _recover_file, record)
            except Exception:  # noqa: BLE001 - one bad file must not stop the others
                log.exception("recording %s: recovery failed; reporting absent", record.sid)
                outcome = ("absent", 0.0, None)
            status, seconds, path = outcome
            await self._settle(record, status, seconds, path)
            log.info("recording %s: recovered after restart as %s", record.sid, status)

    async def close(self) -> None:
        """Finish every live recording (completed/absent, callbacks emitted), then stop."""
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*(self.call_ended(sid) for sid in list(self._taps)),
                             return_exceptions=True)
        if self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)

    # ------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._closed:
            raise ApiError(errors.ENGINE_UNAVAILABLE, "The recording service is shutting down")

    @staticmethod
    def _options(call: CallHandle, request: RecordingRequest) -> RecordingOptions:
        codec = call.codec
        try:
            return RecordingOptions(
                channels=request.channels,
                track=request.track,
                trim=request.trim,
                codec=codec.name,
                clock_rate=codec.clock_rate,
                payload_type=codec.payload_type,
            )
        except ValueError:
            # The request itself was validated by forms; what is left is the call's codec.
            raise ApiError(
                errors.INVALID_PARAMETER,
                f"The call's codec {codec.name} cannot be recorded (PCMU or PCMA only)",
            ) from None

    async def _get(self, account_sid: str, call_sid: str, sid: str) -> RecordingRecord:
        record: RecordingRecord | None = await self.store.get_recording(account_sid, call_sid, sid)
        if record is None:
            raise errors.not_found("recording")
        return record

    def _tap_for(self, call: CallHandle) -> _Tap:
        tap = self._taps.get(call.call_sid)
        if tap is None:
            tap = self._taps[call.call_sid] = _Tap(call)
            # call_ended may have come (and gone, with no tap to mark) while create awaited.
            tap.ended = call.call_sid in self._ended
        return tap

    async def _on_worker(self, tap: _Tap, job: Callable[..., T], *args: Any) -> T:
        """Run ``job`` in the pool while holding the call's lock (one job per call at a time)."""
        loop = asyncio.get_running_loop()
        async with tap.lock:
            future = loop.run_in_executor(self._executor, job, *args)
            try:
                return await asyncio.shield(future)
            except asyncio.CancelledError:
                # The thread keeps running the job: keep the lock until it is done, or the next
                # job of this call could touch the same CallRecording concurrently.
                while not future.done():
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait({future})
                raise

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _ensure_drain_task(self, tap: _Tap) -> None:
        if tap.task is None or tap.task.done():
            tap.task = self._spawn(self._drain_loop(tap))

    async def _stop_drain_task(self, tap: _Tap) -> None:
        task, tap.task = tap.task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Not simply "untap everything": a recording may have been created meanwhile. The set is
        # computed and the job queued in one step, so jobs apply in decision order.
        await self._on_worker(tap, self._retap_job, tap, _needed_tracks(tap))
        if tap.live and tap.task is None and not tap.ended:
            self._ensure_drain_task(tap)

    async def _drain_loop(self, tap: _Tap) -> None:
        while tap.live:
            await asyncio.sleep(self.drain_interval)
            try:
                await self._on_worker(tap, self._pump_job, tap, _recordings(tap))
            except EngineError:
                # The host closed the engine call without telling us: that is the call's end.
                log.info("call %s: engine call closed; finalising its recordings", tap.call_sid)
                tap.task = None
                self._spawn(self.call_ended(tap.call_sid))
                return
            except Exception:  # noqa: BLE001 - keep recording; the next drain may succeed
                log.exception("call %s: recording drain failed", tap.call_sid)

    def _start_finish(self, live: _Live) -> None:
        if live.finishing is None:
            live.finishing = self._spawn(self._finish(live))

    def _forget(self, live: _Live) -> None:
        live.tap.live.pop(live.sid, None)
        live.tap.claims.pop(live.sid, None)
        self._live.pop(live.sid, None)

    async def _after_removal(self, tap: _Tap) -> None:
        # Stop tapping tracks no remaining recording needs (nothing at all when none is left).
        if not tap.live:
            await self._stop_drain_task(tap)
        else:
            await self._on_worker(tap, self._retap_job, tap, _needed_tracks(tap))

    async def _finish(self, live: _Live) -> None:
        sid = live.sid
        live.status = "processing"
        await self.store.update_recording(sid, status="processing")
        try:
            result = await self._on_worker(
                live.tap, self._finish_job, live.tap, _recordings(live.tap), live
            )
            status, seconds, path = result.status, result.duration_seconds, result.path
            if result.io_error:
                log.warning("recording %s: write failed (%s); kept what reached the disk",
                            sid, result.io_error)
        except Exception:  # noqa: BLE001 - a bug must still leave the resource settled
            log.exception("recording %s: finalisation failed; reporting absent", sid)
            status, seconds, path = "absent", 0.0, None
        self._forget(live)
        if live.announced is not None:
            await asyncio.wait({live.announced})
        await self._settle(live.record, status, seconds, path)
        await self._after_removal(live.tap)

    async def _settle(
        self, record: RecordingRecord, status: str, seconds: float, path: Path | None
    ) -> None:
        """Write the final status, then emit its callback (if the client subscribed)."""
        duration = round(seconds)
        if status == "completed":
            error_code = None
            updated = await self.store.update_recording(
                record.sid, status="completed", duration=duration, error_code=None,
                file_path=str(path) if path else record.file_path,
            )
        else:
            error_code = ERROR_NO_AUDIO
            updated = await self.store.update_recording(
                record.sid, status="absent", duration=0, error_code=error_code, file_path=None,
            )
        if updated is None:
            return  # deleted meanwhile: nothing to announce
        await self._emit(record, status, duration if status == "completed" else 0, error_code)

    async def _emit(
        self, record: RecordingRecord, status: str, duration: int | None, error_code: int | None
    ) -> None:
        subscribed = status in record.status_callback_events and record.status_callback
        params = recording_params(
            account_sid=record.account_sid,
            call_sid=record.call_sid,
            recording_sid=record.sid,
            recording_url=recording_url(
                self.public_base_url or "", record.account_sid, record.call_sid, record.sid
            ),
            status=status,
            duration_seconds=duration,
            channels=record.channels,
            start_time=record.start_time,
            track=record.track,
            error_code=error_code,
            source=record.source,
        )
        try:
            # Unsubscribed events are stored too (state no-callback): the resource's history.
            await self.outbox.emit(
                resource_sid=record.sid,
                account_sid=record.account_sid,
                event=status,
                url=record.status_callback if subscribed else None,
                method=record.status_callback_method,
                params=params,
            )
        except Exception:  # noqa: BLE001 - the recording itself must go on
            log.exception("recording %s: could not store its %s event", record.sid, status)

    # --------------------------------------------------- jobs (worker threads)
    # Each runs with the call's lock held, so it owns the call's CallRecordings and its ring.

    def _apply_commands(self, tap: _Tap) -> None:
        while tap.commands:
            live, name, args = tap.commands.popleft()
            if live.recording.result is None:
                getattr(live.recording, name)(*args)

    def _pump_job(self, tap: _Tap, recordings: list[CallRecording]) -> int:
        """Apply queued commands, then drain the ring into ``recordings`` (the call's live
        recordings, listed on the loop: the thread never iterates the loop's dicts)."""
        self._apply_commands(tap)
        total = 0
        while True:
            drained = tap.call.engine_call.drain_recording(_DRAIN_MAX)
            count = len(drained["seq"])
            if count:
                batches = _split_batches(drained)
                del drained  # the batches view the same buffers; nothing else keeps them
                for recording in recordings:
                    if recording.result is not None:
                        continue
                    for track, batch in batches:
                        try:
                            recording.feed(track, batch)
                        except ValueError:
                            log.exception("recording: malformed batch skipped")
                del batches
            total += count
            if count < _DRAIN_MAX:
                break
        tap.packets_drained += total
        return total

    def _open_job(
        self, tap: _Tap, recordings: list[CallRecording], path: Path, options: RecordingOptions,
        tracks: frozenset[Track],
    ) -> CallRecording:
        # Call audio, in folders named by account and call SID: owner only.
        make_private_dir(path.parent, tighten_below=self.storage_dir)
        recording = CallRecording(path, options)
        try:
            # Whatever the ring holds arrived before this recording existed: give it to the
            # recordings that were running, then widen the tap for the new one.
            if recordings:
                self._pump_job(tap, recordings)
            self._retap_job(tap, tracks)
        except BaseException:
            recording.abort()
            raise
        return recording

    def _retap_job(self, tap: _Tap, tracks: frozenset[Track]) -> None:
        if tracks == tap.tracks:
            return
        with contextlib.suppress(EngineError):  # the call is gone: nothing is tapped anyway
            tap.call.engine_call.record(sorted(tracks))
        tap.tracks = tracks

    def _finish_job(
        self, tap: _Tap, recordings: list[CallRecording], live: _Live
    ) -> RecordingResult:
        try:
            self._pump_job(tap, recordings)  # what arrived before the stop / call end
        except EngineError:
            self._apply_commands(tap)  # the call is closed: finish with what was fed
        with contextlib.suppress(Exception):  # counters are diagnostics only
            dropped = {name: c.get("record_dropped", 0)
                       for name, c in tap.call.engine_call.counters().items()}
            if any(dropped.values()):
                # The ring overflowed (drain task starved): those packets became silence.
                log.warning("call %s: recording ring dropped packets %s", tap.call_sid, dropped)
        return live.recording.finish()

    def _abort_job(self, tap: _Tap, live: _Live) -> None:
        self._apply_commands(tap)
        live.recording.abort()


def _recordings(tap: _Tap) -> list[CallRecording]:
    return [live.recording for live in tap.live.values()]


def _needed_tracks(tap: _Tap) -> frozenset[Track]:
    return frozenset(t for tracks in tap.claims.values() for t in tracks)


def _split_batches(drained: dict[str, np.ndarray]) -> list[tuple[str, PacketBatch]]:
    """One ``PacketBatch`` per track from a ``drain_recording`` result (packets keep their
    arrival order within a track; the payload buffer is shared, not copied)."""
    tracks = drained["track"]
    payload = memoryview(drained["payload"])
    out: list[tuple[str, PacketBatch]] = []
    for value, name in _TRACK_NAMES.items():
        mask = tracks == value
        if not mask.any():
            continue
        out.append(
            (
                name,
                PacketBatch(
                    seq=drained["seq"][mask],
                    ts=drained["timestamp"][mask],
                    payload=payload,
                    offsets=drained["offset"][mask].astype(np.int64),
                    lengths=drained["length"][mask].astype(np.int64),
                    arrival=drained["arrival_ns"][mask] / 1e9,
                    pt=drained["payload_type"][mask],
                    marker=drained["marker"][mask].astype(bool),
                ),
            )
        )
    return out


def _recover_file(record: RecordingRecord) -> tuple[str, float, Path | None]:
    """(status, seconds, path) of an unfinished recording, from its files on disk."""
    if not record.file_path:
        return "absent", 0.0, None
    final = Path(record.file_path)
    partial = partial_path(final)
    if partial.exists():
        recovered = recover(partial)
        if recovered.status == "completed" and recovered.path is not None:
            return "completed", recovered.duration_seconds, recovered.path
        return "absent", 0.0, None
    if final.is_file():
        # The crash came after the atomic rename but before the store said completed: the
        # file under its final name is complete by construction.
        try:
            with wave.open(str(final), "rb") as w:
                frames, rate = w.getnframes(), w.getframerate()
        except (OSError, EOFError, wave.Error):
            final.unlink(missing_ok=True)
            return "absent", 0.0, None
        if frames:
            return "completed", frames / rate, final
        final.unlink(missing_ok=True)
    return "absent", 0.0, None


def _remove_files(final: Path) -> None:
    final.unlink(missing_ok=True)
    partial_path(final).unlink(missing_ok=True)
    # Tidy the per-call folder when it is empty (best effort: another recording may appear).
    with contextlib.suppress(OSError):
        final.parent.rmdir()
