"""ControlService: the single owner of control-plane state.

Everything the REST API, the host call API and the msgpack control socket do goes through
here: registered calls, Siprec resources, the forked-stream budget, connectors, recorder
sessions (through an injected :class:`RecorderLinks`), status callbacks (through the
:class:`Outbox`), TwiML, restart reconciliation, and the Recordings resource (delegated to a
RecordingManager).

Concurrency rules, and why:

* One ``asyncio.Lock`` per call serialises the operations that read-then-change a call's
  Siprecs (create, stop, TwiML, end): the name-uniqueness and four-stream checks would
  otherwise race between two concurrent requests.
* Link events are handled in one ordered chain per Siprec (each handler awaits the previous
  one of the same Siprec), and every status callback of a Siprec is produced on that chain,
  so callbacks are stored and queued in the order they happened. Different Siprecs never
  wait for each other.
* Terminal callbacks are de-duplicated in memory: a Siprec gets at most one of
  ``siprec-stopped`` / ``siprec-error``, whichever comes first (an API stop followed by the
  recorder's BYE, say, reports once).
* Engine calls that wait for the media worker run in a thread so the loop never blocks.
* Validate, then change: a handler checks the whole request (and the account's limits,
  :mod:`mediafork.control.quotas`) before it changes anything, so a 4xx leaves the store, the
  engine and the in-memory state as they were. Quota checks and the reservation they guard
  happen in one synchronous step (no await between them), so concurrent requests cannot
  overshoot a limit.
* Calls nobody looks after end by themselves: a periodic sweep ends, as ``DELETE`` would, a
  call with no ingress media and no API activity for ``[media] call_idle_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..calls import CallHandle
from ..control import errors
from ..control.call_event_form import parse_call_event
from ..control.codecs import codec_json, parse_codec
from ..control.errors import ApiError
from ..control.events import CallInfo, ErrorDetail, FailoverDetail, siprec_params
from ..control.forms import (
    DEFAULT_CONNECTOR,
    RecordingRequest,
    RecordingUpdate,
    SiprecRequest,
    Track,
    check_stream_budget,
    check_text,
    parse_siprec_create,
    parse_siprec_update,
)
from ..control.outbox import Outbox
from ..control.quotas import CALL_PORTS, PortReserve, check_live_limit, siprec_ports
from ..control.resources import (
    list_page,
    page_request,
    render_call,
    render_siprec,
    siprec_list_uri,
)
from ..control.sids import ACCOUNT, CALL, SIPREC, is_sid, new_sid
from ..control.store import (
    ENGINE_RESTARTED,
    ENGINE_RESTARTED_CODE,
    AsyncStore,
    CallRecord,
    CrashReport,
    EventRecord,
    NameTaken,
    SiprecRecord,
)
from ..control.timefmt import rfc2822, utcnow
from ..control.twiml import ActiveSiprec, StartSiprec, StopSiprec, check_program, parse_twiml
from ..engine import Engine, EngineError
from ..engine import Track as EngineTrack
from ..mediasource import (
    CallGone,
    MediaSourceError,
    NoUsableCodec,
    SourceRestarted,
    UnknownMediaSource,
)
from ..mediasource.rtpengine import RtpengineSource, SourceMedia
from ..recorder_api import CallCodec, Connector, LinkError, LinkEvent, RecorderLinks, SiprecStart
from ..sip.call_events import CallEventError
from .config import Config, MediaSourceConfig
from .logs import log_fields
from .media_sources import CallSource, MediaSources, api_error, parse_media_source

log = logging.getLogger("mediafork.daemon.service")

__all__ = ["ControlService", "PublishingOutbox", "RecordingManagerLike", "ServiceEvent"]

STOP_TIMEOUT = 10.0
"""Upper bound on waiting for a recorder session to stop (links.stop has its own, shorter)."""

_SWEEP_BATCH = 200
"""Calls the idle sweep checks between two yields to the event loop (~2 ms of work)."""
_MAX_PARTICIPANT = 1024


class RecordingManagerLike(Protocol):
    """The interface of mediafork.recording.manager.RecordingManager that we call."""

    async def create(self, *, account_sid: str, call: CallHandle, request: RecordingRequest,
                     max_live: int | None = None) -> dict[str, Any]: ...

    async def update(self, *, account_sid: str, call_sid: str, sid: str,
                     update: RecordingUpdate) -> dict[str, Any]: ...

    async def fetch(self, *, account_sid: str, call_sid: str, sid: str) -> dict[str, Any]: ...

    async def list(self, *, account_sid: str, call_sid: str, query: Any) -> dict[str, Any]: ...

    async def wav_path(self, *, account_sid: str, call_sid: str, sid: str) -> Any: ...

    async def call_ended(self, call_sid: str) -> None: ...

    def check(self, *, account_sid: str, call: CallHandle, request: RecordingRequest,
              max_live: int | None = None) -> Any: ...

    def call_live_count(self, call_sid: str) -> int: ...

    async def delete(self, *, account_sid: str, call_sid: str, sid: str) -> None: ...

    async def recover_after_crash(self, report: CrashReport | None = None) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class ServiceEvent:
    """What the control socket's event stream carries (never URLs, tokens or credentials)."""

    account_sid: str
    type: str
    """``call-registered``, ``call-updated``, ``call-ended``, or a status-callback event name
    (``siprec-started``, ``siprec-failover``, ``siprec-stopped``, ``siprec-error``,
    ``siprec-paused``, ``siprec-resumed``, ``recording-…``/``completed``…)."""
    data: dict[str, Any]


class PublishingOutbox(Outbox):
    """An Outbox that also publishes each event to the service's subscribers.

    Recording events are emitted by the RecordingManager through the outbox it is given;
    subclassing is how they reach the control socket's event stream without the manager
    knowing about it.
    """

    publish: Callable[[ServiceEvent], None] | None = None

    async def emit(self, **kwargs: Any) -> EventRecord:  # type: ignore[override]
        record = await super().emit(**kwargs)
        if self.publish is not None:
            self.publish(ServiceEvent(account_sid=record.account_sid, type=record.event,
                                      data=dict(record.params)))
        return record


@dataclass
class _Siprec:
    """In-memory state of a Siprec this process started."""

    sid: str
    account_sid: str
    call_sid: str
    name: str | None
    track: Track
    url: str | None
    method: str
    started_sent: bool = False
    final_sent: bool = False
    paused: bool = False
    """Paused through the API (Status=paused): for the metrics."""
    chain: asyncio.Task[None] | None = None


@dataclass
class _LiveCall:
    account_sid: str
    handle: CallHandle | None = None
    """None while ``POST /v1/Calls`` is still allocating it: such a call is not found yet."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    ended: bool = False
    last_activity: float = field(default_factory=time.monotonic)
    """When the API last named this call, or the idle sweep last saw new ingress packets."""
    ingress_seen: int = 0
    """Ingress packets (accepted, well-formed) counted at the previous sweep."""
    ended_idle: bool = False
    """The idle sweep is ending it (so the next sweep does not start a second end)."""
    source: CallSource | None = None
    """Where the call's media comes from when it was registered with ``media_source``."""
    recordings_starting: int = 0
    """Recordings being created (they need the media source attached)."""


@dataclass
class _Usage:
    """What one account holds, for the quota checks (counted on demand, never cached)."""

    calls: int = 0
    siprecs: int = 0
    ports: int = 0


class ControlService:
    """See the module docstring. Construct, then ``await start()``; ``await close()`` at the end.

    *links* may be given later with :meth:`set_links` (it usually needs
    :meth:`on_link_event` as its event sink, so it is built after the service).
    """

    def __init__(
        self,
        config: Config,
        *,
        engine: Engine,
        store: AsyncStore,
        outbox: Outbox | None = None,
        links: RecorderLinks | None = None,
        recordings: RecordingManagerLike | None = None,
        callback_options: Mapping[str, Any] | None = None,
        media_sources: MediaSources | None = None,
    ) -> None:
        self.config = config
        self.media_sources = media_sources
        """The daemon's open [[media_sources]] (it opens and closes them, not the service)."""
        self.engine = engine
        self.store = store
        options = {"timeout": config.callbacks.timeout,
                   "max_attempts": config.callbacks.max_attempts,
                   "retry_for": config.callbacks.retry_for,
                   "backoff_max": config.callbacks.backoff_max, **(callback_options or {})}
        # Looked up at each delivery, not bound to this config: a reload may rotate a token.
        self.outbox = outbox if outbox is not None else PublishingOutbox(
            store, lambda sid: self.config.auth_token_for(sid), **options)
        if isinstance(self.outbox, PublishingOutbox):
            self.outbox.publish = self._publish
        self.links = links
        self.recordings = recordings
        self._calls: dict[str, _LiveCall] = {}
        self._siprecs: dict[str, _Siprec] = {}
        self._subscribers: set[asyncio.Queue[ServiceEvent | None]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.started = False
        self._ports = PortReserve(capacity=config.media.port_capacity,
                                  reserve=config.media.reserved_ports,
                                  accounts=len(config.accounts))
        self.quota_rejections: dict[str, int] = {}
        """Requests refused with 429, by the limit's config key (for the metrics)."""
        self._quota_logged: dict[tuple[str, str], float] = {}
        self.idle_calls_ended = 0
        self._idle_sweep: asyncio.Task[None] | None = None
        self._idle_ends: set[asyncio.Task[None]] = set()
        # A constant-time comparison needs something to compare with for unknown accounts.
        self._dummy_token = new_sid(ACCOUNT)

    def siprec_counts(self) -> dict[str, int]:
        """Siprecs this process is running, by phase, for the metrics gauge:
        ``starting`` (INVITE out, no answer yet), ``in-progress`` and ``paused``."""
        counts = {"starting": 0, "in-progress": 0, "paused": 0}
        for state in self._siprecs.values():
            if not state.final_sent:
                phase = "paused" if state.paused else "in-progress"
                counts[phase if state.started_sent else "starting"] += 1
        return counts

    def quota_counts(self) -> dict[str, int]:
        """Requests refused with 429, by limit, for the metrics counter."""
        return dict(self.quota_rejections)

    def idle_count(self) -> int:
        """Calls the idle sweep has ended, for the metrics counter."""
        return self.idle_calls_ended

    def apply_config(self, config: Config) -> None:
        """Use a reloaded configuration from now on: accounts (tokens, limits), connectors
        and callback settings. Live Siprecs keep the connector they started with (their
        start request holds it); an account removed from the file can no longer
        authenticate, while its live calls go on until they end."""
        self.config = config
        dispatcher = self.outbox.dispatcher
        dispatcher.timeout = config.callbacks.timeout
        dispatcher.max_attempts = config.callbacks.max_attempts
        dispatcher.retry_for = config.callbacks.retry_for
        dispatcher.backoff_max = config.callbacks.backoff_max

    def set_links(self, links: RecorderLinks) -> None:
        self.links = links

    def set_recordings(self, recordings: RecordingManagerLike) -> None:
        self.recordings = recordings

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Settle what a previous process left behind, then be ready to serve.

        Undelivered callbacks are replayed first, then the ``siprec-error`` ("engine
        restarted") of each Siprec the crash interrupted, so each Siprec's callbacks stay in
        order.
        """
        report = await self.store.reconcile_after_crash()
        await self.outbox.replay_pending()
        calls = {c.call_sid: c for c in report.calls}
        for siprec in report.siprecs:
            call = calls.get(siprec.call_sid) or await self.store.get_call(siprec.call_sid)
            info = CallInfo(account_sid=siprec.account_sid, call_sid=siprec.call_sid,
                            from_=call.from_uri if call else "", to=call.to_uri if call else "")
            await self._emit(siprec, info, "siprec-error", error=ENGINE_RESTARTED,
                             error_code=ENGINE_RESTARTED_CODE)
        if report.siprecs or report.calls:
            log.warning("restart: %d Siprecs and %d calls were interrupted",
                        len(report.siprecs), len(report.calls))
        if self.recordings is not None:
            await self.recordings.recover_after_crash(report)
        if report.dialogs and self.links is not None:
            # The recorders still hold those sessions open; they get a BYE in the
            # background, so that serving does not wait for slow or gone recorders.
            task = asyncio.ensure_future(self._hang_up_orphans(report))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self.config.media.call_idle_timeout > 0:
            self._idle_sweep = asyncio.ensure_future(
                self._sweep_idle_calls(self.config.media.call_idle_timeout))
        self.started = True

    async def _hang_up_orphans(self, report: CrashReport) -> None:
        assert self.links is not None
        siprecs = {s.sid: s for s in report.siprecs}
        calls = {c.call_sid: c for c in report.calls}
        hang_ups = []
        for sid, text in report.dialogs:
            siprec = siprecs.get(sid)
            if siprec is None:
                continue
            try:
                dialog = json.loads(text)
                connector = self.config.connectors_for(siprec.account_sid)[siprec.connector_name]
            except (ValueError, KeyError) as exc:
                log.warning("restart: Siprec %s cannot be hung up (%s)", sid, type(exc).__name__)
                continue
            call = calls.get(siprec.call_sid)
            start = SiprecStart(
                siprec_sid=sid, account_sid=siprec.account_sid, call_sid=siprec.call_sid,
                name=siprec.name, connector=connector, track=siprec.track,  # type: ignore[arg-type]
                parameters=siprec.parameters, caller=call.from_uri if call else "",
                callee=call.to_uri if call else "")
            hang_ups.append(self.links.hang_up(start, dialog))
        results = await asyncio.gather(*hang_ups, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                log.warning("restart: hanging up a recorder session failed: %s", result)
        log.warning("restart: sent BYE for %d recorder sessions left open", len(hang_ups))

    async def close(self, timeout: float = 5.0) -> None:
        """End every call (their Siprecs stop with callbacks), then flush callbacks."""
        if self._closed:
            return
        self._closed = True
        if self._idle_sweep is not None:
            self._idle_sweep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._idle_sweep
        # All calls at once: one whose recorder has not answered yet (an INVITE with no
        # provisional may not be CANCELled, so its stop waits the links' stop timeout) must
        # not hold up the BYEs of every other call until the daemon's shutdown bound
        # abandons them.
        ends = [asyncio.ensure_future(self._end_quietly(live.handle.account_sid, call_sid))
                for call_sid, live in list(self._calls.items()) if live.handle is not None]
        ends.extend(self._idle_ends)  # calls the sweep is ending: wait for those too
        if ends:
            await asyncio.wait(ends, timeout=timeout)
        chains = [s.chain for s in self._siprecs.values() if s.chain is not None]
        if chains:
            await asyncio.wait(chains, timeout=timeout)
        if self.links is not None:
            with contextlib.suppress(Exception):
                await self.links.close(timeout)
        if self.recordings is not None:
            with contextlib.suppress(Exception):
                await self.recordings.close()
        await self.outbox.close(timeout)
        for queue in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    async def _end_quietly(self, account_sid: str, call_sid: str) -> None:
        with contextlib.suppress(Exception):
            await self.end_call(account_sid, call_sid)

    # -- auth ---------------------------------------------------------------------------

    def authenticate(self, account_sid: str, token: str) -> bool:
        """Constant-time check of HTTP Basic credentials (same work for unknown accounts)."""
        expected = self.config.auth_token_for(account_sid)
        ok = hmac.compare_digest((expected or self._dummy_token).encode("utf-8", "replace"),
                                 token.encode("utf-8", "replace"))
        return ok and expected is not None

    # -- events to subscribers ------------------------------------------------------------

    def subscribe(self, maxsize: int = 1000) -> asyncio.Queue[ServiceEvent | None]:
        """A queue of every event; a full queue drops for that subscriber only (counted by
        the subscriber seeing a ``None`` gap is not needed: slow subscribers just miss)."""
        queue: asyncio.Queue[ServiceEvent | None] = asyncio.Queue(maxsize)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[ServiceEvent | None]) -> None:
        self._subscribers.discard(queue)

    def _publish(self, event: ServiceEvent) -> None:
        for queue in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(event)

    # -- calls --------------------------------------------------------------------------

    def _live_call(self, account_sid: str, call_sid: str) -> _LiveCall:
        """The account's registered call, or 404 (also while its registration is running).
        A request naming the call counts as activity for the idle timeout."""
        live = self._calls.get(call_sid)
        if live is None or live.handle is None or live.account_sid != account_sid:
            raise errors.not_found("resource")
        live.last_activity = time.monotonic()
        return live

    def _touch(self, account_sid: str, call_sid: str) -> None:
        """Count a request about the call (a Siprec or Recording of it) as activity."""
        live = self._calls.get(call_sid)
        if live is not None and live.account_sid == account_sid:
            live.last_activity = time.monotonic()

    def get_call_handle(self, account_sid: str, call_sid: str) -> CallHandle:
        handle = self._live_call(account_sid, call_sid).handle
        assert handle is not None  # _live_call only returns registered calls
        return handle

    # -- quotas -------------------------------------------------------------------------

    def _usage(self, account_sid: str) -> tuple[_Usage, int]:
        """The account's live calls, Siprecs and media ports, and the ports of all accounts.

        Counted from the live state on each check (a few thousand objects at most), so the
        numbers can never drift from what is really held.
        """
        mine = _Usage()
        total = 0
        for live in self._calls.values():
            total += CALL_PORTS
            if live.account_sid == account_sid:
                mine.calls += 1
                mine.ports += CALL_PORTS
        for state in self._siprecs.values():
            if state.final_sent:
                continue
            ports = siprec_ports(state.track)
            total += ports
            if state.account_sid == account_sid:
                mine.siprecs += 1
                mine.ports += ports
        return mine, total

    def _check_quota(self, account_sid: str, *, calls: int = 0, siprecs: int = 0,
                     ports: int = 0) -> None:
        """Raise 429 if the account may not take this much more. The caller must reserve
        what it checked before its next await, or concurrent requests could overshoot."""
        account = self.config.account(account_sid)
        if account is None:  # not a configured account: authentication refused it already
            raise errors.authenticate()
        usage, total = self._usage(account_sid)
        limit = "max_calls"
        try:
            if calls:
                check_live_limit("calls", limit, usage.calls, account.max_calls, calls)
            limit = "max_siprecs"
            if siprecs:
                check_live_limit("Siprecs", limit, usage.siprecs, account.max_siprecs, siprecs)
            limit = "port_reserve"
            if ports:
                self._ports.check(held_by_account=usage.ports, held_total=total, wanted=ports)
        except ApiError as exc:
            self._quota_refused(account_sid, limit, exc)
            raise

    def _quota_refused(self, account_sid: str, limit: str, exc: ApiError) -> None:
        """Count a 429; log it at most once a minute per account and limit (a client
        retrying in a loop must not flood the log)."""
        self.quota_rejections[limit] = self.quota_rejections.get(limit, 0) + 1
        now = time.monotonic()
        key = (account_sid, limit)
        if now - self._quota_logged.get(key, -60.0) >= 60.0:
            self._quota_logged[key] = now
            log.warning("account %s reached its limit: %s", account_sid, exc.message)

    async def register_call(self, account_sid: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /v1/Calls``: validate, allocate ingress ports, store. Returns the call view."""
        if self._closed:
            raise ApiError(errors.ENGINE_UNAVAILABLE, "the service is shutting down")
        call_sid = body.get("call_sid")
        if not is_sid(call_sid, CALL):
            raise ApiError(errors.INVALID_SID,
                           "call_sid must be 'CA' followed by 32 hexadecimal digits")
        assert isinstance(call_sid, str)
        body_account = body.get("account_sid", account_sid)
        if body_account != account_sid:
            # The body may only name the authenticated account; no hint about others.
            raise ApiError(errors.INVALID_PARAMETER,
                           "account_sid must be the account you authenticated as")
        from_ = _participant(body.get("from", ""), "from")
        to = _participant(body.get("to", ""), "to")
        codec = parse_codec(body.get("codec"))
        dtmf = body.get("dtmf_payload_type", 101)
        if dtmf is not None and (isinstance(dtmf, bool) or not isinstance(dtmf, int)
                                 or not 0 <= dtmf <= 127):
            raise ApiError(errors.INVALID_PARAMETER,
                           "dtmf_payload_type must be an integer 0-127 or null")
        sources = _sources(body.get("sources"))
        media_source = None
        if "media_source" in body:
            if sources:
                raise ApiError(errors.INVALID_PARAMETER, "sources cannot be given with "
                               "media_source: each track is locked to rtpengine's address")
            media_source = self._media_source(body["media_source"])
        if call_sid in self._calls:
            raise ApiError(errors.CALL_ALREADY_REGISTERED,
                           "a call with this call_sid is already registered")
        existing = await self.store.get_call(call_sid)
        # SIDs are global: a call SID used before (by any account) is not reused. Checked
        # again after the await: a concurrent registration of this SID may have reserved it.
        if existing is not None or call_sid in self._calls:
            raise ApiError(errors.CALL_ALREADY_REGISTERED,
                           "a call with this call_sid is already registered")
        self._check_quota(account_sid, calls=1, ports=CALL_PORTS)
        live = _LiveCall(account_sid)  # reserved before awaiting; not found until registered
        self._calls[call_sid] = live
        if media_source is not None:
            # Everything else is valid: only now ask rtpengine (nothing flows from a probe).
            try:
                media = await media_source[1].probe()
                codec, dtmf = _learned(media, body, codec, dtmf)
            except MediaSourceError as exc:
                del self._calls[call_sid]
                raise api_error(exc) from None
            except BaseException:
                del self._calls[call_sid]
                raise
        try:
            engine_call = await asyncio.to_thread(
                self.engine.add_call, call_sid, clock_rate=codec.clock_rate,
                dtmf_payload_type=dtmf, latch=self.config.media.latch,
                relatch_after=self.config.media.relatch_after)
        except (EngineError, OSError) as exc:
            del self._calls[call_sid]
            log.warning("register %s: engine refused: %s", call_sid, exc)
            raise ApiError(errors.ENGINE_UNAVAILABLE,
                           "the media engine could not allocate the call's ports") from None
        try:
            # expect_source waits for the worker to apply it: off the loop, like add_call.
            for track, address in sources.items():
                await asyncio.to_thread(engine_call.expect_source, track, address)
            live.handle = CallHandle(call_sid=call_sid, account_sid=account_sid,
                                     engine_call=engine_call, from_=from_, to=to, codec=codec)
            await self.store.register_call(CallRecord(
                call_sid=call_sid, account_sid=account_sid, from_uri=from_, to_uri=to,
                codec=codec_json(codec)))
        except BaseException:
            del self._calls[call_sid]
            await asyncio.to_thread(engine_call.close)
            raise
        if media_source is not None:
            live.source = CallSource(media_source[0], media_source[1], media)
            live.source.start_liveness(
                lambda: self._source_wanted(call_sid),
                lambda exc: self._source_failed(account_sid, call_sid, exc),
                lambda: self._attach(live))
        self._publish(ServiceEvent(account_sid, "call-registered",
                                   {"CallSid": call_sid, "From": from_, "To": to}))
        return await self.call_view(account_sid, call_sid)

    async def update_call(self, account_sid: str, call_sid: str,
                          body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /v1/Calls/{CallSid}``: new From/To; recorders get partial metadata."""
        live = self._live_call(account_sid, call_sid)
        if "from" not in body and "to" not in body:
            raise ApiError(errors.MISSING_PARAMETER, "give from, to or both")
        new_from = _participant(body["from"], "from") if "from" in body else None
        new_to = _participant(body["to"], "to") if "to" in body else None
        async with live.lock:
            if live.ended or live.handle is None:
                raise errors.not_found("resource")
            # Read under the lock: a concurrent update of the other field must not be undone.
            handle = live.handle
            from_ = handle.from_ if new_from is None else new_from
            to = handle.to if new_to is None else new_to
            # The store first: if it fails, the call in memory still matches it.
            await self.store.update_call_participants(call_sid, from_uri=from_, to_uri=to)
            live.handle = handle.with_participants(from_, to)
            if self.links is not None and any(
                s.call_sid == call_sid and not s.final_sent for s in self._siprecs.values()
            ):
                try:
                    await self.links.update_participants(call_sid, from_, to)
                except Exception:
                    log.exception("update participants of %s failed", call_sid)
        self._publish(ServiceEvent(account_sid, "call-updated",
                                   {"CallSid": call_sid, "From": from_, "To": to}))
        return await self.call_view(account_sid, call_sid)

    async def call_event(self, account_sid: str, call_sid: str,
                         body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /v1/Calls/{CallSid}/Events``: hold/unhold of a track, a participant replaced
        (transfer), added or removed. Each live recorder session gets a re-INVITE with the
        event's partial metadata, after the session's earlier ones (docs/sip.md)."""
        live = self._live_call(account_sid, call_sid)
        if not isinstance(body, Mapping):
            raise ApiError(errors.INVALID_PARAMETER, "the body must be a JSON object")
        event = parse_call_event(body)  # the whole request, before anything changes
        async with live.lock:
            if live.ended or live.handle is None:
                raise errors.not_found("resource")
            handle = live.handle
            roster = handle.current_roster()
            try:
                roster.check(event)
            except CallEventError as exc:
                raise ApiError(errors.INVALID_PARAMETER, str(exc)) from None
            updated = handle.with_roster(roster.apply(event))
            if (updated.from_, updated.to) != (handle.from_, handle.to):
                # The store first: if it fails, the call in memory still matches it.
                await self.store.update_call_participants(
                    call_sid, from_uri=updated.from_, to_uri=updated.to)
            live.handle = updated
            sent: list[str] = []
            if self.links is not None and any(
                s.call_sid == call_sid and not s.final_sent for s in self._siprecs.values()
            ):
                try:
                    sent = await self.links.call_event(call_sid, event)
                except Exception:
                    log.exception("call event for %s failed", call_sid)
        data = {"CallSid": call_sid, "Event": body["event"]}
        if "track" in body:
            data["Track"] = body["track"]
        self._publish(ServiceEvent(account_sid, "call-event", data))
        return {"event": body["event"], "sent_to": sent,
                "call": await self.call_view(account_sid, call_sid)}

    async def call_view(self, account_sid: str, call_sid: str) -> dict[str, Any]:
        """The host API's view of a live call: ingress, counters, forks, Siprecs."""
        return await self._render_call(call_sid, self._live_call(account_sid, call_sid))

    async def _render_call(self, call_sid: str, live: _LiveCall) -> dict[str, Any]:
        handle = live.handle
        assert handle is not None  # only registered calls are rendered
        account_sid = handle.account_sid
        call = handle.engine_call
        siprecs = await self.store.list_siprecs(account_sid, call_sid)
        forks = []
        if not call.closed:
            for fork in call.forks:
                forks.append({
                    "id": fork.id, "track": fork.track.label, "ssrc": fork.ssrc,
                    "secure": fork.key is not None, "paused": fork.paused,
                    "local_address": _addr(fork.local_address),
                    "destination": _addr(fork.destination),
                    "counters": fork.counters(),
                })
        return {
            "call_sid": call_sid,
            "account_sid": account_sid,
            "from": handle.from_,
            "to": handle.to,
            "codec": codec_json(handle.codec),
            "status": "ended" if live.ended else "live",
            "ingress": {t.label: _addr(a) for t, a in call.ingress.items()},
            "counters": call.counters() if not call.closed else {},
            "forks": forks,
            **_roster_view(handle),
            "siprecs": [{**render_siprec(s), "track": s.track,
                         "connector_name": s.connector_name} for s in siprecs],
            **({"media_source": live.source.describe()} if live.source is not None else {}),
        }

    async def list_calls(self, account_sid: str) -> dict[str, Any]:
        # Listing is not activity on each call: a host polling the list must not keep
        # abandoned calls alive past the idle timeout.
        views = [await self._render_call(sid, live) for sid, live in list(self._calls.items())
                 if live.handle is not None and live.account_sid == account_sid]
        return {"calls": views}

    async def end_call(self, account_sid: str, call_sid: str) -> None:
        """``DELETE /v1/Calls/{CallSid}``: every Siprec stops (siprec-stopped), recordings
        finish, the ingress ports close."""
        live = self._live_call(account_sid, call_sid)
        async with live.lock:
            if live.ended:
                return
            live.ended = True
            active = await self.store.active_siprecs(call_sid)
            await asyncio.gather(*(self._stop_locked(live, s, "call ended") for s in active),
                                 return_exceptions=True)
            if self.recordings is not None:
                try:
                    await self.recordings.call_ended(call_sid)
                except Exception:
                    log.exception("recordings of %s did not finish cleanly", call_sid)
            if live.source is not None:
                await live.source.close()  # unsubscribe: rtpengine stops forking to us
            await asyncio.to_thread(live.handle.engine_call.close)
            await self.store.set_call_state(call_sid, "ended")
            self._calls.pop(call_sid, None)
        self._publish(ServiceEvent(account_sid, "call-ended", {"CallSid": call_sid}))

    async def _sweep_idle_calls(self, timeout: float) -> None:
        """End the calls idle for *timeout* seconds: no new ingress packets and no request
        naming them. A quarter of the timeout between sweeps (a call ends at most 25% late),
        at most 10 s. A sweep reads two counter sets per call (about 10 µs): it yields to
        the loop every _SWEEP_BATCH calls so thousands of calls never stall requests."""
        interval = min(max(timeout / 4, 0.05), 10.0)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for index, (call_sid, live) in enumerate(list(self._calls.items())):
                if index % _SWEEP_BATCH == _SWEEP_BATCH - 1:
                    await asyncio.sleep(0)
                if (live.handle is None or live.ended or live.ended_idle
                        or live.handle.engine_call.closed or live.source is not None):
                    continue  # a media source's liveness task ends the call with rtpengine's
                seen = _ingress_packets(live.handle.engine_call)
                if seen != live.ingress_seen:
                    live.ingress_seen = seen
                    live.last_activity = now
                elif now - live.last_activity >= timeout:
                    live.ended_idle = True
                    task = asyncio.ensure_future(
                        self._end_idle_call(live.account_sid, call_sid, now - live.last_activity))
                    self._idle_ends.add(task)
                    task.add_done_callback(self._idle_ends.discard)

    async def _end_idle_call(self, account_sid: str, call_sid: str, idle_for: float) -> None:
        log.info("call %s: no ingress media and no API activity for %.0f s: ending it",
                 call_sid, idle_for)
        try:
            await self.end_call(account_sid, call_sid)
        except ApiError:
            return  # ended by a request meanwhile
        except Exception:
            log.exception("ending idle call %s failed", call_sid)
            return
        self.idle_calls_ended += 1

    # -- media sources ------------------------------------------------------------------

    def _media_source(self, value: Any) -> tuple[MediaSourceConfig, RtpengineSource]:
        """The ``media_source`` object checked (shape, name, ids): nothing is sent yet."""
        request = parse_media_source(value)
        if self.media_sources is None:
            raise api_error(UnknownMediaSource(
                "media_source.name names no [[media_sources]] entry"))
        return self.media_sources.source_for(request)

    async def _attach(self, live: _LiveCall) -> None:
        """Have rtpengine fork both parties to the call's ingress (no-op when it does)."""
        assert live.source is not None and live.handle is not None
        call = live.handle.engine_call

        async def lock_sources(media: SourceMedia) -> None:
            for track in EngineTrack:
                await asyncio.to_thread(call.expect_source, track, *media.track(track).source)

        await live.source.attach(call.ingress, lock_sources)

    def _source_wanted(self, call_sid: str) -> bool:
        """True while a Siprec or Recording of the call needs its media."""
        if any(s.call_sid == call_sid and not s.final_sent for s in self._siprecs.values()):
            return True
        live = self._calls.get(call_sid)
        if live is not None and live.recordings_starting:
            return True
        return self.recordings is not None and self.recordings.call_live_count(call_sid) > 0

    async def _release_source(self, live: _LiveCall) -> None:
        if live.source is not None and live.handle is not None:
            call_sid = live.handle.call_sid
            await live.source.release(lambda: self._source_wanted(call_sid))

    async def _source_failed(self, account_sid: str, call_sid: str,
                             exc: MediaSourceError) -> None:
        """A liveness outcome (docs/api.md): the call gone on rtpengine ends it like DELETE;
        otherwise each in-progress Siprec gets ``siprec-error`` with the code and stops,
        and after a restart the call ends too."""
        live = self._calls.get(call_sid)
        if live is None or live.ended:
            return
        log.warning("call %s: media source: %s (code %d)", call_sid, exc.message, exc.code)
        if not isinstance(exc, CallGone):
            await self._fail_siprecs(live, exc)
        if isinstance(exc, CallGone | SourceRestarted):
            await self._end_quietly(account_sid, call_sid)

    async def _fail_siprecs(self, live: _LiveCall, exc: MediaSourceError) -> None:
        assert live.handle is not None
        async with live.lock:
            if live.ended:
                return
            active = await self.store.active_siprecs(live.handle.call_sid)
            for record in active:  # siprec-error first: it is the Siprec's terminal callback
                await self._post(LinkEvent(siprec_sid=record.sid, kind="error",
                                           error_code=exc.code, error_message=exc.message))
            if self.links is not None and active:
                await asyncio.gather(*(asyncio.wait_for(self.links.stop(r.sid, "media source"),
                                                        STOP_TIMEOUT) for r in active),
                                     return_exceptions=True)

    # -- Siprec -------------------------------------------------------------------------

    def connector(self, account_sid: str, name: str | None, field_name: str) -> Connector:
        wanted = name or DEFAULT_CONNECTOR
        found = self.config.connectors_for(account_sid).get(wanted)
        if found is None:
            if name is None:
                raise ApiError(errors.INVALID_CONNECTOR_NAME,
                               f"{field_name} is required: this account has no connector "
                               f"named {DEFAULT_CONNECTOR!r}")
            raise ApiError(errors.INVALID_CONNECTOR_NAME,
                           f"{field_name} does not name a connector of this account")
        return found

    async def create_siprec(self, account_sid: str, call_sid: str, form: Any) -> dict[str, Any]:
        request = parse_siprec_create(form, self.outbox.dispatcher.egress)
        live = self._live_call(account_sid, call_sid)
        async with live.lock:
            record = await self._start_locked(live, request, "ConnectorName")
        return render_siprec(record)

    async def _start_locked(self, live: _LiveCall, request: SiprecRequest,
                            connector_field: str) -> SiprecRecord:
        """Check the stateful rules, start the session, store the resource (lock held)."""
        if live.ended or live.handle.engine_call.closed:
            raise ApiError(errors.CALL_NOT_LIVE, "the call has ended")
        if self.links is None:
            raise ApiError(errors.ENGINE_UNAVAILABLE, "recorder sessions are not available")
        handle = live.handle
        connector = self.connector(handle.account_sid, request.connector_name, connector_field)
        if request.name is not None and await self.store.get_siprec(
                handle.account_sid, handle.call_sid, request.name) is not None:
            raise ApiError(errors.DUPLICATE_NAME,
                           f"a Siprec named {request.name!r} already exists on this call")
        active = await self.store.active_siprecs(handle.call_sid)
        check_stream_budget([s.track for s in active], request.track)  # type: ignore[misc]
        # No await from here to the reservation in self._siprecs below.
        self._check_quota(handle.account_sid, siprecs=1, ports=siprec_ports(request.track))
        sid = new_sid(SIPREC)
        state = _Siprec(sid=sid, account_sid=handle.account_sid, call_sid=handle.call_sid,
                        name=request.name, track=request.track, url=request.status_callback,
                        method=request.status_callback_method)
        # Events the links emit while start() runs are chained behind this gate, so none is
        # handled before the resource exists in the store.
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        state.chain = asyncio.ensure_future(gate)
        self._siprecs[sid] = state
        if live.source is not None:
            # The first Siprec or Recording subscribes: rtpengine starts forking to us.
            try:
                await self._attach(live)
            except BaseException:
                self._siprecs.pop(sid, None)
                gate.cancel()
                raise
        record = SiprecRecord(
            sid=sid, account_sid=handle.account_sid, call_sid=handle.call_sid,
            name=request.name, connector_name=connector.unique_name, track=request.track,
            status="in-progress", status_callback=request.status_callback,
            status_callback_method=request.status_callback_method,
            parameters=request.parameters)
        try:
            await self.store.create_siprec(record)
        except NameTaken:
            self._siprecs.pop(sid, None)
            gate.cancel()
            await self._release_source(live)
            raise ApiError(errors.DUPLICATE_NAME,
                           f"a Siprec named {request.name!r} already exists on this call"
                           ) from None
        start = SiprecStart(
            siprec_sid=sid, account_sid=handle.account_sid, call_sid=handle.call_sid,
            name=request.name, connector=connector, track=request.track,
            parameters=request.parameters, caller=handle.from_, callee=handle.to,
            codec=handle.codec, roster=handle.roster)
        try:
            await self.links.start(handle.engine_call, start)
        except LinkError as exc:
            # Nothing reached the recorder: answer the client, keep the record as stopped
            # with the reason (its name stays reserved, as for every Siprec of the call).
            state.final_sent = True
            gate.set_result(None)
            self._siprecs.pop(sid, None)
            code = errors.REGISTRY.get(exc.code, errors.SESSION_NOT_STARTED)
            await self.store.set_siprec_status(sid, "stopped", error_code=exc.code,
                                               error_message=str(exc))
            await self._release_source(live)
            raise ApiError(code, f"the recording session could not be started: {exc}",
                           status=code.status if code.status >= 400 else 503) from None
        except BaseException:
            state.final_sent = True
            gate.set_result(None)
            self._siprecs.pop(sid, None)
            await self.store.set_siprec_status(sid, "stopped", error_code=errors.INTERNAL.code,
                                               error_message="internal error")
            await self._release_source(live)
            raise
        gate.set_result(None)
        return record

    async def update_siprec(self, account_sid: str, call_sid: str, sid_or_name: str,
                            form: Any) -> dict[str, Any]:
        update = parse_siprec_update(form)
        self._touch(account_sid, call_sid)
        record = await self.store.get_siprec(account_sid, call_sid, sid_or_name)
        if record is None:
            raise errors.not_found("resource")
        if update.status != "stopped":
            return await self._pause_or_resume(record, update.status == "paused")
        if record.status == "stopped":
            return render_siprec(record)  # idempotent
        live = self._calls.get(call_sid)
        if live is None or live.handle is None:
            # In progress in the store but not live here: only possible transiently
            # (reconciliation marks such Siprecs stopped at start).
            updated = await self.store.set_siprec_status(record.sid, "stopped")
            return render_siprec(updated or record)
        async with live.lock:
            updated = await self._stop_locked(live, record, "stopped")
        return render_siprec(updated)

    async def pause_siprec(self, account_sid: str, call_sid: str,
                           sid_or_name: str) -> dict[str, Any]:
        """Pause a Siprec (the Python and control-socket twin of ``Status=paused``)."""
        return await self.update_siprec(account_sid, call_sid, sid_or_name,
                                        {"Status": "paused"})

    async def resume_siprec(self, account_sid: str, call_sid: str,
                            sid_or_name: str) -> dict[str, Any]:
        """Resume a paused Siprec (the twin of ``Status=in-progress``)."""
        return await self.update_siprec(account_sid, call_sid, sid_or_name,
                                        {"Status": "in-progress"})

    async def _pause_or_resume(self, record: SiprecRecord, pause: bool) -> dict[str, Any]:
        """``Status=paused`` / ``in-progress``: the forks stop (or start again) and the
        recorder gets a re-INVITE (``a=inactive`` / ``a=sendonly``); then ``siprec-paused``
        / ``siprec-resumed``. Asking for the current status changes nothing (a retry)."""
        target = "paused" if pause else "in-progress"
        live = self._calls.get(record.call_sid)
        state = self._siprecs.get(record.sid)
        if (record.status == "stopped" or live is None or live.handle is None
                or state is None or state.final_sent):
            raise ApiError(errors.INVALID_STATUS,
                           "The Siprec is stopped: it can no longer be paused or resumed")
        async with live.lock:
            current = await self.store.get_siprec(record.account_sid, record.call_sid,
                                                  record.sid) or record
            if current.status == "stopped" or state.final_sent:
                raise ApiError(errors.INVALID_STATUS,
                               "The Siprec is stopped: it can no longer be paused or resumed")
            if current.status == target:
                return render_siprec(current)  # idempotent: no re-INVITE, no callback
            if self.links is not None:
                change = self.links.pause if pause else self.links.resume
                try:
                    await asyncio.wait_for(change(record.sid), STOP_TIMEOUT)
                except Exception:
                    # The local state still follows the request (a pause must not leak
                    # media because the worker was slow to confirm): logged, not failed.
                    log.exception("%s Siprec %s did not finish cleanly",
                                  "pausing" if pause else "resuming", record.sid)
            updated = await self.store.set_siprec_live_status(record.sid, target) or current
            if updated.status == target:
                state.paused = pause
                await self._post(LinkEvent(siprec_sid=record.sid,
                                           kind="paused" if pause else "resumed"))
        return render_siprec(updated)

    async def _stop_locked(self, live: _LiveCall, record: SiprecRecord,
                           reason: str) -> SiprecRecord:
        """Mark stopped, stop the session (bounded), then report siprec-stopped once."""
        updated = await self.store.set_siprec_status(record.sid, "stopped") or record
        if self.links is not None:
            try:
                await asyncio.wait_for(self.links.stop(record.sid, reason), STOP_TIMEOUT)
            except Exception:
                log.exception("stopping Siprec %s did not finish cleanly", record.sid)
        # If the links already reported stopped/error this is a no-op; otherwise this is the
        # one siprec-stopped the client gets.
        await self._post(LinkEvent(siprec_sid=record.sid, kind="stopped"))
        return updated

    async def fetch_siprec(self, account_sid: str, call_sid: str,
                           sid_or_name: str) -> dict[str, Any]:
        self._touch(account_sid, call_sid)
        record = await self.store.get_siprec(account_sid, call_sid, sid_or_name)
        if record is None:
            raise errors.not_found("resource")
        # mediafork's extension of the resource (docs/api.md): fields the platform's clients
        # ignore, on this fetch only.
        return {**render_siprec(record), "error": await self._siprec_error(record),
                "streams": self.links.stream_counters(record.sid) if self.links else []}

    async def _siprec_error(self, record: SiprecRecord) -> dict[str, Any] | None:
        """The Siprec's last error: code and message from the resource, the SIP details
        from its stored ``siprec-error`` callback (none for a start refused before any
        recorder answered). Never credentials: the callback parameters carry none."""
        if record.error_code is None:
            return None
        params: dict[str, str] = {}
        for event in await self.store.events_for(record.sid):
            if event.event == "siprec-error":
                params = dict(event.params)
        status = params.get("SiprecErrorSipStatus")
        return {
            "code": record.error_code,
            "message": record.error_message,
            "sip_status": int(status) if status and status.isdigit() else None,
            "reason": params.get("SiprecErrorReason"),
            "phase": params.get("SiprecErrorPhase"),
            "recorder": params.get("SiprecRecorder"),
            "previous_recorder": params.get("SiprecPreviousRecorder"),
        }

    async def list_siprecs(self, account_sid: str, call_sid: str,
                           query: Mapping[str, str]) -> dict[str, Any]:
        # The account's own live or stored call only: another account's live call must be
        # the same 404 as a call that does not exist (it used to list as an empty page).
        await self._recording_call_known(account_sid, call_sid)
        records = await self.store.list_siprecs(account_sid, call_sid)
        return list_page("siprec", records, render_siprec,
                         siprec_list_uri(account_sid, call_sid), page_request(dict(query)))

    async def _stored_call(self, account_sid: str, call_sid: str) -> CallRecord | None:
        call = await self.store.get_call(call_sid)
        return call if call is not None and call.account_sid == account_sid else None

    # -- TwiML --------------------------------------------------------------------------

    async def run_twiml(self, account_sid: str, call_sid: str, document: str) -> dict[str, Any]:
        """Parse and check the whole document, then apply its actions in order."""
        program = parse_twiml(document, self.outbox.dispatcher.egress)
        live = self._live_call(account_sid, call_sid)
        async with live.lock:
            if live.ended or live.handle.engine_call.closed:
                raise ApiError(errors.CALL_NOT_LIVE, "the call has ended")
            existing = await self.store.list_siprecs(account_sid, call_sid)
            check_program(program, [ActiveSiprec(s.name, s.track, s.status != "stopped")
                                    for s in existing])  # type: ignore[arg-type]
            for action in program.actions:
                if isinstance(action, StartSiprec):
                    self.connector(account_sid, action.request.connector_name, "connectorName")
            if program.actions and self.links is None:
                raise ApiError(errors.ENGINE_UNAVAILABLE, "recorder sessions are not available")
            self._check_program_quota(account_sid, program.actions, existing)
            started: list[str] = []
            stopped: list[str] = []
            for action in program.actions:
                if isinstance(action, StartSiprec):
                    record = await self._start_locked(live, action.request, "connectorName")
                    started.append(record.sid)
                else:
                    target = await self.store.get_siprec(account_sid, call_sid, action.name)
                    if target is not None and target.status != "stopped":
                        await self._stop_locked(live, target, "stopped")
                        stopped.append(target.sid)
        if program.ignored:
            log.info("TwiML for %s: ignored verbs %s", call_sid, ", ".join(program.ignored))
        handle = live.handle
        now = utcnow()
        # The platform answers with the Call resource; these are the fields a client reads.
        return {
            "sid": call_sid, "account_sid": account_sid, "from": handle.from_,
            "to": handle.to, "status": "in-progress", "api_version": "2010-04-01",
            "date_updated": rfc2822(now),
            "uri": f"/2010-04-01/Accounts/{account_sid}/Calls/{call_sid}.json",
            "siprec_started": started, "siprec_stopped": stopped,
            "ignored_verbs": list(program.ignored),
        }

    def _check_program_quota(self, account_sid: str, actions: Any,
                             existing: list[SiprecRecord]) -> None:
        """The whole program's Siprecs against the account's limits, before any action runs
        (each start checks again). Siprecs the program stops first make room."""
        starts = [a.request for a in actions if isinstance(a, StartSiprec)]
        running = {s.name: s for s in existing if s.status != "stopped"}
        stopped = [running[a.name] for a in actions
                   if isinstance(a, StopSiprec) and a.name in running]
        siprecs = len(starts) - len(stopped)
        ports = (sum(siprec_ports(r.track) for r in starts)
                 - sum(siprec_ports(s.track) for s in stopped))  # type: ignore[arg-type]
        if siprecs > 0 or ports > 0:
            self._check_quota(account_sid, siprecs=max(siprecs, 0), ports=max(ports, 0))

    # -- link events --------------------------------------------------------------------

    def on_link_event(self, event: LinkEvent) -> None:
        """The :data:`LinkEventSink` to give to the RecorderLinks (call on the loop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            log.error("link event for %s delivered outside the event loop", event.siprec_sid)
            return
        task = loop.create_task(self._post(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, event: LinkEvent) -> None:
        """Run *event*'s handler on its Siprec's chain and wait for it."""
        state = self._siprecs.get(event.siprec_sid)
        if state is None:
            log.info("event %s for unknown Siprec %s ignored", event.kind, event.siprec_sid)
            return
        previous = state.chain
        task = asyncio.get_running_loop().create_task(self._handle_after(previous, event))
        state.chain = task
        await asyncio.shield(task)

    async def _handle_after(self, previous: asyncio.Future[Any] | None,
                            event: LinkEvent) -> None:
        if previous is not None:
            with contextlib.suppress(BaseException):
                await previous
        try:
            await self._handle(event)
        except Exception:
            log.exception("handling %s event of Siprec %s failed", event.kind, event.siprec_sid)

    async def _handle(self, event: LinkEvent) -> None:
        state = self._siprecs.get(event.siprec_sid)
        if state is None or state.final_sent:
            return
        # Every line logged on the way, the callbacks' delivery task included (it inherits
        # the context), names the Siprec and its call.
        with log_fields(account_sid=state.account_sid, call_sid=state.call_sid,
                        siprec_sid=state.sid):
            await self._handle_state(state, event)

    async def _handle_state(self, state: _Siprec, event: LinkEvent) -> None:
        if event.kind in ("paused", "resumed"):
            record = await self.store.get_siprec(state.account_sid, state.call_sid, state.sid)
            if record is not None:
                await self._emit(record, self._call_info(state), f"siprec-{event.kind}")
            return
        if event.kind == "started":
            if state.started_sent:
                return
            state.started_sent = True
            if event.dialog is not None:
                # Kept until the Siprec stops: after a crash, the next process BYEs it.
                await self.store.save_siprec_dialog(state.sid, json.dumps(event.dialog))
            record = await self.store.get_siprec(state.account_sid, state.call_sid, state.sid)
            if record is not None:
                await self._emit(record, self._call_info(state), "siprec-started")
            return
        if event.kind == "failover":
            await self._failed_over(state, event)
            return
        state.final_sent = True
        if event.kind == "stopped":
            record = await self.store.set_siprec_status(state.sid, "stopped")
            if record is not None:
                await self._emit(record, self._call_info(state), "siprec-stopped")
        else:
            code = event.error_code if event.error_code is not None else errors.INTERNAL.code
            message = event.error_message or "recording session failed"
            record = await self.store.set_siprec_status(state.sid, "stopped", error_code=code,
                                                        error_message=message)
            if record is not None:
                await self._emit(record, self._call_info(state), "siprec-error",
                                 error=message, error_code=code,
                                 detail=ErrorDetail(sip_status=event.sip_status,
                                                    reason=event.reason_header,
                                                    phase=event.phase,
                                                    recorder=event.recorder,
                                                    previous_recorder=event.previous_recorder))
        # The session is over: nothing more will be reported for it.
        self._siprecs.pop(state.sid, None)
        live = self._calls.get(state.call_sid)
        if live is not None:
            await self._release_source(live)  # the last one: rtpengine stops forking

    async def _failed_over(self, state: _Siprec, event: LinkEvent) -> None:
        """Another recorder took over a lost session: keep its dialog (a crash BYEs that
        one now) and send ``siprec-failover``; the Siprec stays in progress."""
        if event.dialog is not None:
            await self.store.save_siprec_dialog(state.sid, json.dumps(event.dialog))
        record = await self.store.get_siprec(state.account_sid, state.call_sid, state.sid)
        if record is not None:
            await self._emit(record, self._call_info(state), "siprec-failover",
                             failover=FailoverDetail(
                                 recorder=event.recorder or "",
                                 previous_recorder=event.previous_recorder or "",
                                 reason=event.error_message or "recording session lost",
                                 count=event.failover_count or 1,
                                 sip_status=event.sip_status, phase=event.phase))

    def _call_info(self, state: _Siprec) -> CallInfo:
        live = self._calls.get(state.call_sid)
        handle = live.handle if live is not None else None
        return CallInfo(account_sid=state.account_sid, call_sid=state.call_sid,
                        from_=handle.from_ if handle else "", to=handle.to if handle else "")

    async def _emit(self, record: SiprecRecord, call: CallInfo, event: str, *,
                    error: str | None = None, error_code: int | None = None,
                    detail: ErrorDetail | None = None,
                    failover: FailoverDetail | None = None) -> None:
        params = siprec_params(call=call, siprec_sid=record.sid, siprec_name=record.name,
                               event=event, timestamp=utcnow(),  # type: ignore[arg-type]
                               error=error, error_code=error_code, detail=detail,
                               failover=failover)
        await self.outbox.emit(resource_sid=record.sid, account_sid=record.account_sid,
                               event=event, url=record.status_callback,
                               method=record.status_callback_method,  # type: ignore[arg-type]
                               params=params)

    # -- Recordings (delegated) ---------------------------------------------------------

    def _recordings(self) -> RecordingManagerLike:
        if self.recordings is None:
            raise ApiError(errors.ENGINE_UNAVAILABLE, "local recording is not available")
        return self.recordings

    async def create_recording(self, account_sid: str, call_sid: str,
                               request: RecordingRequest) -> dict[str, Any]:
        manager = self._recordings()
        live = self._live_call(account_sid, call_sid)
        handle = live.handle
        assert handle is not None  # _live_call only returns registered calls
        if live.ended or handle.engine_call.closed:
            raise ApiError(errors.CALL_NOT_LIVE, "the call has ended")
        account = self.config.account(account_sid)
        max_live = account.max_recordings if account else None
        try:
            if live.source is None:
                return await manager.create(account_sid=account_sid, call=handle,
                                            request=request, max_live=max_live)
            # Validate first; then subscribe (the first Siprec or Recording does), then start.
            manager.check(account_sid=account_sid, call=handle, request=request,
                          max_live=max_live)
            live.recordings_starting += 1
            try:
                async with live.lock:
                    if live.ended:
                        raise ApiError(errors.CALL_NOT_LIVE, "the call has ended")
                    await self._attach(live)
                return await manager.create(account_sid=account_sid, call=handle,
                                            request=request, max_live=max_live)
            finally:
                live.recordings_starting -= 1
                await self._release_source(live)  # a no-op while the recording is live
        except ApiError as exc:
            if exc.error is errors.QUOTA_EXCEEDED:
                self._quota_refused(account_sid, "max_recordings", exc)
            raise

    async def _recording_call_known(self, account_sid: str, call_sid: str) -> None:
        live = self._calls.get(call_sid)
        if live is not None and live.handle is not None and live.account_sid == account_sid:
            live.last_activity = time.monotonic()
            return
        if await self._stored_call(account_sid, call_sid) is None:
            raise errors.not_found("resource")

    async def update_recording(self, account_sid: str, call_sid: str, sid: str,
                               update: RecordingUpdate) -> dict[str, Any]:
        manager = self._recordings()
        await self._recording_call_known(account_sid, call_sid)
        return await manager.update(account_sid=account_sid, call_sid=call_sid, sid=sid,
                                    update=update)

    async def fetch_recording(self, account_sid: str, call_sid: str,
                              sid: str) -> dict[str, Any]:
        manager = self._recordings()
        await self._recording_call_known(account_sid, call_sid)
        return await manager.fetch(account_sid=account_sid, call_sid=call_sid, sid=sid)

    async def list_recordings(self, account_sid: str, call_sid: str,
                              query: Mapping[str, str]) -> dict[str, Any]:
        manager = self._recordings()
        await self._recording_call_known(account_sid, call_sid)
        return await manager.list(account_sid=account_sid, call_sid=call_sid, query=dict(query))

    async def delete_recording(self, account_sid: str, call_sid: str, sid: str) -> None:
        manager = self._recordings()
        await self._recording_call_known(account_sid, call_sid)
        await manager.delete(account_sid=account_sid, call_sid=call_sid, sid=sid)

    # -- the account-level Recordings resource and the Call resource -------------------------

    async def list_account_recordings(self, account_sid: str,
                                      query: Mapping[str, str]) -> dict[str, Any]:
        return await self._recordings().list_account(account_sid=account_sid, query=query)

    async def recording_call(self, account_sid: str, sid: str) -> str:
        """The CallSid of the account's recording *sid*, for the account-level routes."""
        return await self._recordings().call_of(account_sid=account_sid, sid=sid)

    async def fetch_call(self, account_sid: str, call_sid: str) -> dict[str, Any]:
        """A call this account registered (live or ended), as the platform's Call resource."""
        record = await self._stored_call(account_sid, call_sid)
        if record is None:
            raise errors.not_found("resource")
        return render_call(record)

    async def recording_wav(self, account_sid: str, call_sid: str, sid: str) -> Any:
        """The finished WAV file's path; 404 until the recording is completed."""
        manager = self._recordings()
        await self._recording_call_known(account_sid, call_sid)
        path = await manager.wav_path(account_sid=account_sid, call_sid=call_sid, sid=sid)
        if path is None:
            raise errors.not_found("resource")
        return path


def _ingress_packets(call: Any) -> int:
    """Packets the call's tracks accepted, garbage excluded: a stranger's packets (refused by
    the source check) or junk must not keep an abandoned call alive."""
    return sum(c["received"] - c["malformed"] for c in call.counters().values())


def _learned(media: SourceMedia, body: Mapping[str, Any], codec: CallCodec,
             dtmf: int | None) -> tuple[CallCodec, int | None]:
    """The codec and DTMF type of a call registered with ``media_source``: rtpengine's, and
    a ``codec`` the request gave must name the same (NoUsableCodec otherwise)."""
    offered = media.inbound.codec
    if body.get("codec") is not None and (codec.name.upper() != offered.name.upper()
                                          or codec.clock_rate != offered.clock_rate):
        raise NoUsableCodec(f"codec {codec.name}/{codec.clock_rate} is not what rtpengine "
                            f"sends ({offered.name}/{offered.clock_rate})")
    learned = CallCodec(name=offered.name, payload_type=offered.payload_type,
                        clock_rate=offered.clock_rate, channels=offered.channels,
                        fmtp=offered.fmtp)
    return learned, (dtmf if "dtmf_payload_type" in body else media.dtmf_payload_type)


def _addr(address: tuple[str, int] | None) -> dict[str, Any] | None:
    return None if address is None else {"address": address[0], "port": address[1]}


def _roster_view(handle: CallHandle) -> dict[str, Any]:
    """The call's participants (after call events) and held tracks, for the call's view."""
    roster = handle.current_roster()
    return {
        "participants": [{"aor": p.aor, "name": p.name, "track": track}
                         for p, track in roster.members()],
        "held": sorted(roster.held),
    }


def _participant(value: Any, name: str) -> str:
    return check_text(value, name, _MAX_PARTICIPANT)


def _sources(value: Any) -> dict[EngineTrack, str]:
    import ipaddress

    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ApiError(errors.INVALID_PARAMETER,
                       "sources must be an object: {\"inbound\": IP, \"outbound\": IP}")
    result: dict[EngineTrack, str] = {}
    for key, address in value.items():
        track = {"inbound": EngineTrack.INBOUND, "outbound": EngineTrack.OUTBOUND}.get(key)
        if track is None:
            raise ApiError(errors.INVALID_PARAMETER, "sources keys must be inbound or outbound")
        try:
            result[track] = str(ipaddress.ip_address(address))
        except (ValueError, TypeError):
            raise ApiError(errors.INVALID_PARAMETER,
                           f"sources.{key} must be an IP address") from None
    return result
