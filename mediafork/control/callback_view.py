"""What an account can see of its status callbacks, and ask to have sent again.

The host API's ``GET /v1/Callbacks`` and ``POST /v1/Callbacks/Redeliver`` (and
``mediafork callbacks``) sit on these two functions. Only the account's own events are
listed or redelivered. URLs are shown without credentials or query (where applications put
tokens); parameters and signatures are never shown.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import errors
from .errors import ApiError
from .outbox import Outbox
from .signature import redact_url
from .store import AsyncStore, DeliveryState, EventRecord
from .timefmt import iso8601

STATES: tuple[DeliveryState, ...] = ("pending", "delivered", "failed", "dropped")
GIVEN_UP: tuple[DeliveryState, ...] = ("failed", "dropped")
MAX_PAGE = 1000
MAX_IDS = 1000


def _item(record: EventRecord) -> dict[str, Any]:
    return {"id": record.id, "resource_sid": record.resource_sid, "event": record.event,
            "url": redact_url(record.url) if record.url else None, "method": record.method,
            "delivery_state": record.delivery_state,
            "date_created": iso8601(record.date_created),
            "date_updated": iso8601(record.date_updated)}


def parse_states(text: str | None) -> tuple[DeliveryState, ...]:
    """``State=failed,dropped`` (default: the given-up states)."""
    if not text:
        return GIVEN_UP
    chosen = tuple(dict.fromkeys(s.strip() for s in text.split(",")))
    unknown = [s for s in chosen if s not in STATES]
    if unknown or not chosen:
        raise ApiError(errors.INVALID_PARAMETER,
                       f"State must be a comma-separated list of {', '.join(STATES)}")
    return chosen  # type: ignore[return-value]


def parse_page_size(text: str | None) -> int:
    if text is None:
        return 50
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise ApiError(errors.INVALID_PARAMETER, f"PageSize must be an integer 1-{MAX_PAGE}")
    return int(text)


async def list_callbacks(store: AsyncStore, account_sid: str,
                         states: tuple[DeliveryState, ...], limit: int) -> dict[str, Any]:
    records = await store.account_events(account_sid, states, limit)
    counts = await store.count_events(account_sid)
    return {"callbacks": [_item(r) for r in records],
            "counts": {state: counts.get(state, 0) for state in STATES}}


def parse_redeliver(body: Mapping[str, Any]) -> list[int] | None:
    """``{"ids": [1, 2]}`` or ``{}`` (every given-up event of the account)."""
    unknown = set(body) - {"ids"}
    if unknown:
        raise ApiError(errors.INVALID_PARAMETER, f"unknown field {sorted(unknown)[0]!r}")
    ids = body.get("ids")
    if ids is None:
        return None
    if (not isinstance(ids, list) or len(ids) > MAX_IDS
            or not all(isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in ids)):
        raise ApiError(errors.INVALID_PARAMETER,
                       f"ids must be a list of at most {MAX_IDS} positive integers")
    return ids


async def redeliver(outbox: Outbox, account_sid: str, ids: list[int] | None) -> dict[str, Any]:
    return {"redelivered": await outbox.redeliver(account_sid, ids)}
