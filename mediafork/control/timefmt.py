"""Timestamp formats used on the wire.

Resources carry RFC 2822 dates in GMT (``Thu, 30 Jul 2015 20:00:00 +0000``), exactly as the
reference examples show. Status-callback ``Timestamp`` parameters use ISO 8601 UTC with
milliseconds (``2015-07-30T20:00:00.000Z``): the seeds do not give the format, and this is
the form used by the platform's sibling ``<Stream>`` status callbacks and by other
Twilio-compatible SIPREC implementations. Both live here so that changing one is one edit.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def _as_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("naive datetime: mediafork only handles aware UTC datetimes")
    return moment.astimezone(UTC)


def rfc2822(moment: datetime) -> str:
    """``Thu, 30 Jul 2015 20:00:00 +0000`` (the platform writes +0000, not GMT)."""
    return format_datetime(_as_utc(moment).replace(microsecond=0))


def iso8601(moment: datetime) -> str:
    """``2015-07-30T20:00:00.000Z``."""
    utc = _as_utc(moment)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
