"""JSON renderings of the Siprec and Recording resources, and list pages.

The field sets are exactly the reference OpenAPI's (tests validate against it): a client
generated from the platform's spec must parse them, so nothing internal (connector, custom
parameters, callback URL, file path) is ever added here. Those stay in the store.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlencode

from .events import API_VERSION
from .store import CallRecord, RecordingRecord, SiprecRecord
from .timefmt import rfc2822

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def siprec_uri(account_sid: str, call_sid: str, sid: str) -> str:
    return f"/{API_VERSION}/Accounts/{account_sid}/Calls/{call_sid}/Siprec/{sid}.json"


def recording_uri(account_sid: str, call_sid: str, sid: str, extension: str = "json") -> str:
    return f"/{API_VERSION}/Accounts/{account_sid}/Calls/{call_sid}/Recordings/{sid}.{extension}"


def render_siprec(siprec: SiprecRecord) -> dict[str, Any]:
    return {
        "sid": siprec.sid,
        "account_sid": siprec.account_sid,
        "call_sid": siprec.call_sid,
        "name": siprec.name,
        "status": siprec.status,
        "date_updated": rfc2822(siprec.date_updated),
        "uri": siprec_uri(siprec.account_sid, siprec.call_sid, siprec.sid),
    }


def render_recording(recording: RecordingRecord) -> dict[str, Any]:
    return {
        "sid": recording.sid,
        "account_sid": recording.account_sid,
        "call_sid": recording.call_sid,
        "conference_sid": None,
        "api_version": API_VERSION,
        "date_created": rfc2822(recording.date_created),
        "date_updated": rfc2822(recording.date_updated),
        "start_time": rfc2822(recording.start_time),
        # Whole seconds as a string once known, as the platform does; null until then.
        "duration": None if recording.duration is None else str(recording.duration),
        "status": recording.status,
        "channels": recording.channels,
        "source": recording.source,
        "track": recording.track,
        "error_code": recording.error_code,
        "price": None,
        "price_unit": recording.price_unit,
        "encryption_details": None,
        "uri": recording_uri(recording.account_sid, recording.call_sid, recording.sid),
    }


@dataclass(frozen=True)
class PageRequest:
    page: int = 0
    page_size: int = DEFAULT_PAGE_SIZE


def page_request(query: dict[str, str]) -> PageRequest:
    """``Page`` / ``PageSize`` from a query string; out-of-range values are clamped, as the
    platform does for PageSize, and junk falls back to the defaults (listing never fails)."""

    def number(key: str, default: int) -> int:
        try:
            return int(query.get(key, default))
        except (TypeError, ValueError):
            return default

    size = min(max(number("PageSize", DEFAULT_PAGE_SIZE), 1), MAX_PAGE_SIZE)
    return PageRequest(page=max(number("Page", 0), 0), page_size=size)


def list_page(
    key: str,
    items: Sequence[T],
    render: Callable[[T], dict[str, Any]],
    list_uri: str,
    request: PageRequest = PageRequest(),
) -> dict[str, Any]:
    """The platform's list envelope (``ListCallRecordingResponse``) around one page.

    Used for Recordings as in the reference, and for Siprec lists with ``key="siprec"`` in
    the same shape (the reference has no Siprec list to copy).
    """
    start = request.page * request.page_size
    chosen = items[start : start + request.page_size]

    def page_uri(page: int) -> str:
        return f"{list_uri}?{urlencode({'PageSize': request.page_size, 'Page': page})}"

    has_next = start + request.page_size < len(items)
    return {
        key: [render(item) for item in chosen],
        "start": start,
        "end": start + max(len(chosen) - 1, 0),
        "page": request.page,
        "page_size": request.page_size,
        "uri": page_uri(request.page),
        "first_page_uri": page_uri(0),
        "next_page_uri": page_uri(request.page + 1) if has_next else None,
        "previous_page_uri": page_uri(request.page - 1) if request.page > 0 else None,
    }


def siprec_list_uri(account_sid: str, call_sid: str) -> str:
    return f"/{API_VERSION}/Accounts/{account_sid}/Calls/{call_sid}/Siprec.json"


def account_recording_list_uri(account_sid: str) -> str:
    return f"/{API_VERSION}/Accounts/{account_sid}/Recordings.json"


def render_call(call: CallRecord) -> dict[str, Any]:
    """A registered call as the platform's Call resource. mediafork knows only what the host
    told it: the parties and when the call was registered and ended; what it cannot know
    (price, direction, caller name, ...) is null, as the platform leaves unknown fields."""
    base = f"/{API_VERSION}/Accounts/{call.account_sid}/Calls/{call.call_sid}"
    ended = call.state == "ended"
    duration = int((call.date_updated - call.date_created).total_seconds()) if ended else None
    return {
        "sid": call.call_sid,
        "account_sid": call.account_sid,
        "parent_call_sid": None,
        "date_created": rfc2822(call.date_created),
        "date_updated": rfc2822(call.date_updated),
        "from": call.from_uri,
        "from_formatted": call.from_uri,
        "to": call.to_uri,
        "to_formatted": call.to_uri,
        "phone_number_sid": None,
        "status": "completed" if ended else "in-progress",
        "start_time": rfc2822(call.date_created),
        "end_time": rfc2822(call.date_updated) if ended else None,
        "duration": None if duration is None else str(duration),
        "price": None,
        "price_unit": None,
        "direction": None,
        "answered_by": None,
        "api_version": API_VERSION,
        "forwarded_from": None,
        "group_sid": None,
        "caller_name": None,
        "queue_time": "0",
        "trunk_sid": None,
        "uri": f"{base}.json",
        "subresource_uris": {
            "siprec": f"{base}/Siprec.json",
            "recordings": f"{base}/Recordings.json",
        },
    }


def recording_list_uri(account_sid: str, call_sid: str) -> str:
    return f"/{API_VERSION}/Accounts/{account_sid}/Calls/{call_sid}/Recordings.json"
