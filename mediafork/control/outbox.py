"""The callback outbox: every event is stored before it is sent, and its outcome after.

This is the glue between :mod:`.store` and :mod:`.callbacks` that makes "nothing silently
lost" hold across restarts: an event is written as ``pending`` first, enqueued with its row
id, and marked ``delivered`` / ``failed`` / ``dropped`` when the dispatcher reports. Events
still queued when the process stops (``close`` gave up, or a crash) stay ``pending`` and
:meth:`Outbox.replay_pending` sends them at the next start, in their original order.

Delivery is therefore at-least-once across restarts: an event whose 2xx arrived just before
a crash, but whose ``delivered`` mark did not reach the disk, is sent again. Receivers that
care can de-duplicate on (SiprecSid, SiprecEvent).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from .callbacks import CallbackDispatcher, TokenLookup, UndeliveredReason
from .events import CallbackEvent
from .forms import Method
from .store import AsyncStore, DeliveryState, EventRecord

log = logging.getLogger("mediafork.callbacks")

_FINAL_STATE: dict[UndeliveredReason, DeliveryState | None] = {
    "failed": "failed",
    "no-token": "failed",
    "dropped": "dropped",
    "closed": None,  # stays pending: replayed at the next start
}


class Outbox:
    """Persist-then-send for status callbacks. Use from the event loop that owns *store*."""

    def __init__(self, store: AsyncStore, auth_token_for: TokenLookup,
                 **dispatcher_options: Any) -> None:
        self._store = store
        self._writes: set[asyncio.Task[None]] = set()
        self.dispatcher = CallbackDispatcher(
            auth_token_for,
            on_delivered=self._delivered,
            on_undelivered=self._undelivered,
            **dispatcher_options,
        )

    def __repr__(self) -> str:
        return f"Outbox({self.dispatcher!r})"

    async def emit(self, *, resource_sid: str, account_sid: str, event: str,
                   url: str | None, method: Method,
                   params: Sequence[tuple[str, str]]) -> EventRecord:
        """Store the event, then queue it if the resource has a callback URL.

        Events without a URL are still stored (state ``no-callback``): they are the
        resource's history.
        """
        record: EventRecord = await self._store.add_event(
            resource_sid=resource_sid, account_sid=account_sid, event=event, url=url,
            method=method if url else None, params=params,
            delivery_state="pending" if url else "no-callback",
        )
        if url:
            self.dispatcher.enqueue(self._to_callback(record))
        return record

    async def replay_pending(self) -> int:
        """Queue every stored ``pending`` event (call once at start); returns how many."""
        records: list[EventRecord] = await self._store.pending_events()
        for record in records:
            if record.url and record.method:
                self.dispatcher.enqueue(self._to_callback(record))
        if records:
            log.info("replaying %d undelivered status callbacks", len(records))
        return len(records)

    async def redeliver(self, account_sid: str, ids: Sequence[int] | None = None) -> int:
        """Send the account's given-up events again (all, or those in *ids*), with a fresh
        retry horizon; returns how many were queued. Other accounts' events are never
        touched, whatever *ids* says."""
        records: list[EventRecord] = await self._store.requeue_events(account_sid, ids)
        for record in records:
            if record.method:
                self.dispatcher.enqueue(self._to_callback(record, fresh=True))
        if records:
            log.info("redelivering %d status callbacks of %s", len(records), account_sid)
        return len(records)

    @staticmethod
    def _to_callback(record: EventRecord, *, fresh: bool = False) -> CallbackEvent:
        assert record.url is not None and record.method in ("GET", "POST")
        return CallbackEvent(
            resource_sid=record.resource_sid, account_sid=record.account_sid, url=record.url,
            method=record.method,  # type: ignore[arg-type]
            params=record.params, event_id=record.id,
            # The retry horizon runs from the event's creation, across restarts; a
            # redelivery someone asked for gets a horizon of its own.
            created_at=None if fresh else record.date_created.timestamp(),
        )

    def _write_state(self, event: CallbackEvent, state: DeliveryState) -> None:
        if event.event_id is None:
            return
        # Hooks are synchronous and run on the loop: hand the write to the store's thread
        # and keep the task so close() can wait for it.
        task = asyncio.get_running_loop().create_task(
            self._store.set_event_state(event.event_id, state)
        )
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    def _delivered(self, event: CallbackEvent) -> None:
        self._write_state(event, "delivered")

    def _undelivered(self, event: CallbackEvent, reason: UndeliveredReason) -> None:
        state = _FINAL_STATE[reason]
        if state is not None:
            self._write_state(event, state)

    async def close(self, timeout: float = 5.0) -> None:
        """Flush what can be sent within *timeout*, then wait for the state writes."""
        await self.dispatcher.close(timeout)
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
