"""Per-account limits on live resources, and the media-port reserve (sans-I/O).

The ControlService counts what each account holds (it owns the calls and the Siprecs; the
RecordingManager counts recordings) and asks these functions *before* it changes anything. A
refusal is :data:`~mediafork.control.errors.QUOTA_EXCEEDED` (HTTP 429) and nothing has changed.
Limits are on live resources, not totals: ending a call or stopping a Siprec frees room at once.

Media ports are shared by every account, so a per-account count alone would still let one
account (or a few) take the whole ``[media] port_range`` and leave the others with the
engine's 503. The reserve keeps the last ``port_reserve`` ports for accounts that are within
their fair share (the range divided by the number of configured accounts): an account may take
ports that leave fewer than ``port_reserve`` free only while it stays within its fair share.
With a single account the fair share is the whole range, so the reserve never refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import QUOTA_EXCEEDED, ApiError
from .forms import Track, forked_streams

__all__ = [
    "CALL_PORTS",
    "DEFAULT_MAX_CALLS",
    "DEFAULT_MAX_RECORDINGS",
    "DEFAULT_MAX_SIPRECS",
    "FORKED_STREAM_PORTS",
    "PortReserve",
    "check_live_limit",
    "siprec_ports",
]

DEFAULT_MAX_CALLS = 2000
DEFAULT_MAX_SIPRECS = 8000
"""Four per call at the default ``max_calls`` (four single-track Siprecs fill a call)."""
DEFAULT_MAX_RECORDINGS = 2000

CALL_PORTS = 4
"""Port numbers of the media range one call takes: ingress sockets on the even ports p and p+2;
the allocator hands out even ports only, so p+1 and p+3 go with them."""
FORKED_STREAM_PORTS = 2
"""An RTP/RTCP pair per forked stream."""


def siprec_ports(track: Track) -> int:
    """Port numbers a Siprec on *track* takes (both_tracks: two forked streams)."""
    return forked_streams(track) * FORKED_STREAM_PORTS


def check_live_limit(what: str, key: str, live: int, limit: int, adding: int = 1) -> None:
    """Refuse (429) when *adding* more *what* would take the account over *limit*.

    *key* is the config key that sets the limit, named in the message so an operator knows
    what to raise; the numbers are the account's own.
    """
    if live + adding > limit:
        raise ApiError(QUOTA_EXCEEDED,
                       f"this account may have at most {limit} live {what} ({key}) and has "
                       f"{live}: end one first")


@dataclass(frozen=True)
class PortReserve:
    """The rule described in the module docstring, for one daemon's media range."""

    capacity: int
    """Port numbers in ``[media] port_range``."""
    reserve: int
    """``[media] port_reserve``: ports kept for accounts within their fair share."""
    accounts: int
    """Configured accounts (the fair share divides the range between them)."""

    @property
    def fair_share(self) -> int:
        return self.capacity // max(1, self.accounts)

    def check(self, *, held_by_account: int, held_total: int, wanted: int) -> None:
        """Refuse (429) taking *wanted* ports when that would dig into the reserve and take
        the account beyond its fair share. *held_total* counts every account's ports."""
        free_after = self.capacity - held_total - wanted
        if free_after < self.reserve and held_by_account + wanted > self.fair_share:
            raise ApiError(QUOTA_EXCEEDED,
                           f"this account holds {held_by_account} of the {self.capacity} media "
                           f"ports (its fair share is {self.fair_share}); the last "
                           f"{self.reserve} are kept for other accounts (port_reserve)")
