"""The daemon's ``[[media_sources]]``: one open rtpengine endpoint per entry, the
``media_source`` object of ``POST /v1/Calls``, and one :class:`CallSource` per call that uses
it (probe at registration, attach on demand, detach when nobody records, liveness checks).

The endpoints are opened when the daemon starts and closed when it stops (:meth:`close`),
never left to the garbage collector. What a liveness outcome does to the call (end it, report
``siprec-error``) is the service's business: :class:`CallSource` only reports it through the
callbacks it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..control import errors
from ..control.errors import ApiError
from ..engine import Track
from ..mediasource import (
    CallGone,
    MediaSourceError,
    NgTimeout,
    SourceRestarted,
    SubscriptionLost,
    UnknownMediaSource,
)
from ..mediasource.ng import NgTiming
from ..mediasource.rtpengine import RtpengineEndpoint, RtpengineSource, SourceMedia
from .config import MediaSourceConfig

log = logging.getLogger("mediafork.daemon.media_sources")

__all__ = ["CallSource", "MediaSourceRequest", "MediaSources", "api_error",
           "parse_media_source"]

MISSED_CHECKS = 3
"""Liveness checks rtpengine may leave unanswered in a row before live Siprecs get 900060."""
_KEYS = ("name", "call_id", "inbound_tag", "outbound_tag")


def api_error(exc: MediaSourceError) -> ApiError:
    """The API error for a media-source failure: its documented code and HTTP status."""
    return ApiError(errors.REGISTRY[exc.code], exc.message, status=exc.http_status)


@dataclass(frozen=True)
class MediaSourceRequest:
    """The ``media_source`` object of ``POST /v1/Calls``, checked for shape only."""

    name: str
    call_id: str
    inbound_tag: str
    outbound_tag: str


def parse_media_source(value: Any) -> MediaSourceRequest:
    """Check the object's keys and types (400 / 900001, 900002); the values themselves are
    checked by :class:`RtpengineSource` (see :meth:`MediaSources.source_for`)."""
    if not isinstance(value, Mapping):
        raise ApiError(errors.INVALID_PARAMETER, "media_source must be an object with name, "
                       "call_id, inbound_tag and outbound_tag")
    unknown = sorted(str(k) for k in value if k not in _KEYS)
    if unknown:
        raise ApiError(errors.INVALID_PARAMETER,
                       f"media_source has unknown keys: {', '.join(unknown)}"[:200])
    for key in _KEYS:
        if key not in value:
            raise ApiError(errors.MISSING_PARAMETER, f"media_source.{key} is required")
        if not isinstance(value[key], str):
            raise ApiError(errors.INVALID_PARAMETER, f"media_source.{key} must be a string")
    return MediaSourceRequest(*(value[key] for key in _KEYS))


class MediaSources:
    """Every configured media source, by name. ``await MediaSources.open(configs)`` at
    start, ``close()`` at shutdown."""

    def __init__(self, entries: Mapping[str, tuple[MediaSourceConfig, RtpengineEndpoint]]
                 ) -> None:
        self._entries = dict(entries)
        self.closed = False

    @classmethod
    async def open(cls, configs: Iterable[MediaSourceConfig]) -> MediaSources:
        opened: dict[str, tuple[MediaSourceConfig, RtpengineEndpoint]] = {}
        try:
            for config in configs:
                endpoint = await RtpengineEndpoint.connect(
                    config.name, config.ng,
                    timing=NgTiming(timeout=config.timeout, retransmit=config.retransmit),
                    max_outstanding=config.max_outstanding)
                opened[config.name] = (config, endpoint)
        except BaseException:
            for _, endpoint in opened.values():
                endpoint.close()
            raise
        return cls(opened)

    def __len__(self) -> int:
        return len(self._entries)

    def source_for(self, request: MediaSourceRequest) -> tuple[MediaSourceConfig,
                                                                RtpengineSource]:
        """A new (unprobed) source for one call: 900068 for an unknown name, 900001 for a
        call-id or tag rtpengine could not be asked about. Sends nothing."""
        entry = self._entries.get(request.name)
        if entry is None or self.closed:
            raise api_error(UnknownMediaSource(
                "media_source.name names no [[media_sources]] entry"))
        config, endpoint = entry
        try:
            source = RtpengineSource(endpoint, request.call_id, request.inbound_tag,
                                     request.outbound_tag)
        except ValueError as exc:
            raise ApiError(errors.INVALID_PARAMETER, f"media_source: {exc}") from None
        return config, source

    def close(self) -> None:
        """Close every endpoint's socket (requests still waiting fail with NgClosed)."""
        self.closed = True
        for _, endpoint in self._entries.values():
            endpoint.close()


OnFailure = Callable[[MediaSourceError], Awaitable[None]]


class CallSource:
    """One call's media source: forks on demand and a bounded liveness task.

    * :meth:`attach` / :meth:`release` are serialised by one lock, so a Siprec starting while
      the last one stops never leaves the call subscribed with nobody recording, nor
      unsubscribed under a running Siprec;
    * :meth:`start_liveness` runs :meth:`RtpengineSource.check` every ``check_interval``
      (each check bounded by three NG timeouts) until :meth:`close`; a failure goes to
      ``on_failure`` (the service ends the call or reports ``siprec-error``); the task also
      detaches when ``wanted()`` says nobody records any more (a Recording that finished by
      itself).
    """

    def __init__(self, config: MediaSourceConfig, source: RtpengineSource,
                 media: SourceMedia) -> None:
        self.config = config
        self.source = source
        self.media = media
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.closed = False
        self.missed = 0
        """Liveness checks in a row rtpengine did not answer."""
        self.failing = False
        """A lost subscription is being reported to the call's Siprecs."""

    @property
    def attached(self) -> bool:
        return self.source.attached

    def describe(self) -> dict[str, Any]:
        """The ``media_source`` object of the call's view (no secrets: rtpengine's ids)."""
        return {"name": self.config.name, "call_id": self.source.call_id,
                "inbound_tag": self.source.tags[Track.INBOUND],
                "outbound_tag": self.source.tags[Track.OUTBOUND],
                "attached": self.attached}

    async def attach(self, ingress: Mapping[Track, tuple[str, int]],
                     lock_sources: Callable[[SourceMedia], Awaitable[None]]) -> None:
        """Subscribe (when not already) and lock each track to where rtpengine sends it
        from. Raises ApiError with the media-source code; nothing stays subscribed then."""
        async with self._lock:
            if self.closed:
                raise ApiError(errors.CALL_NOT_LIVE, "the call has ended")
            if self.failing:
                raise api_error(SubscriptionLost(
                    f"rtpengine lost the subscriptions of call {self.source.call_id}; "
                    "they are being reported: start again"))
            if self.source.attached:
                return
            try:
                self.media = await self.source.attach(ingress)
                await lock_sources(self.media)
            except MediaSourceError as exc:
                await self.source.detach()
                raise api_error(exc) from None
            except BaseException:
                await self.source.detach()
                raise

    async def release(self, wanted: Callable[[], bool]) -> None:
        """Unsubscribe when ``wanted()`` (checked under the lock) says nobody records."""
        async with self._lock:
            if self.source.attached and not wanted():
                await self.source.detach()

    def start_liveness(self, wanted: Callable[[], bool], on_failure: OnFailure,
                       reattach: Callable[[], Awaitable[None]]) -> None:
        """``reattach``: subscribe again (after a lost subscription was reported, when a
        Recording still needs the media)."""
        if self._task is None and not self.closed:
            self._task = asyncio.ensure_future(self._liveness(wanted, on_failure, reattach))

    async def _liveness(self, wanted: Callable[[], bool], on_failure: OnFailure,
                        reattach: Callable[[], Awaitable[None]]) -> None:
        interval = self.config.check_interval
        # A check is two queries, plus a statistics request when one is not found.
        bound = max(3 * self.config.timeout, 0.1)
        while not self.closed:
            await asyncio.sleep(interval)
            await self.release(wanted)
            try:
                async with self._lock:
                    try:
                        await asyncio.wait_for(self.source.check(), bound)
                    except SubscriptionLost:
                        # Under the same lock as the check: no Siprec can attach to the
                        # half-subscribed call before it is reported (attach() refuses
                        # while ``failing``), then it subscribes afresh.
                        self.failing = True
                        await self.source.detach()  # the other track's subscription too
                        raise
            except (NgTimeout, TimeoutError):
                self.missed += 1
                if self.missed == MISSED_CHECKS:
                    await on_failure(NgTimeout(
                        f"rtpengine {self.config.name} did not answer {MISSED_CHECKS} "
                        f"liveness checks of call {self.source.call_id}"))
                continue
            except (CallGone, SourceRestarted) as exc:
                await on_failure(exc)
                return  # the call ends: nothing more to check
            except SubscriptionLost as exc:
                try:
                    await on_failure(exc)  # the Siprecs get siprec-error and stop
                finally:
                    self.failing = False
                if wanted() and not self.closed:  # a Recording goes on: fork to it again
                    try:
                        await reattach()
                    except ApiError as again:
                        log.warning("media source %s: call %s could not subscribe again: %s",
                                    self.config.name, self.source.call_id, again.message)
                continue
            except MediaSourceError as exc:
                log.warning("media source %s: liveness check of call %s failed: %s",
                            self.config.name, self.source.call_id, exc.message)
                continue
            self.missed = 0

    async def close(self) -> None:
        """Stop the liveness task and unsubscribe (idempotent; never raises)."""
        self.closed = True
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        async with self._lock:
            await self.source.detach()
