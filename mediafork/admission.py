"""Connection admission for the daemon's listeners: caps in total and per peer, sans-I/O.

Every listener that accepts connections from strangers (the HTTP API, the SIP TCP/TLS
listener, the control socket, the reference recorder's TCP/TLS listener) holds one
:class:`Admission`. The listener asks :meth:`Admission.admit` before it keeps a new
connection (over a cap: it closes the connection at once), calls :meth:`release` when the
connection goes, and :meth:`closed` when it closes one itself for a timeout. This module
only counts; the listeners own the sockets and the timers.

Default caps follow the process's descriptor limit (``RLIMIT_NOFILE``): half of it (at
least 128 descriptors) is kept in reserve for media sockets, the store and outbound
connections, and the rest is shared between the listeners (:data:`SHARES`). A flood of
connections therefore ends at a cap, counted, instead of at ``EMFILE`` where every
socket of the process fails. A single peer gets at most a quarter of a listener's cap, so
one address cannot take the whole listener.

While a listener sheds connections it writes one WARNING line per ``log_interval`` with the
counts, never a line per connection (a flood must not turn into a log flood).
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "REASONS",
    "SHARES",
    "Admission",
    "descriptor_limit",
    "listener_caps",
    "make_admission",
]

log = logging.getLogger("mediafork.admission")

REASONS = ("total_cap", "peer_cap", "header_timeout", "idle_timeout", "handshake_timeout")
"""Why a connection was refused or closed by a listener (the metric's ``reason`` label)."""

SHARES = {"api": 0.4, "sip": 0.3, "srs": 0.2, "control_socket": 0.1}
"""Each listener's share of the descriptors left after the reserve (they add up to 1, so
all listeners full at once still leave the reserve free)."""

_MIN_RESERVE = 128
_UNLIMITED = 1 << 20  # what RLIM_INFINITY is taken as: the kernel's usual nr_open


def descriptor_limit() -> int:
    """The process's soft limit on open descriptors."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return _UNLIMITED if soft == resource.RLIM_INFINITY else int(soft)


def listener_caps(listener: str, limit: int | None = None) -> tuple[int, int]:
    """Default (max_connections, max_connections_per_peer) of ``listener`` (a key of
    :data:`SHARES`) for a descriptor ``limit`` (default: this process's)."""
    limit = descriptor_limit() if limit is None else limit
    reserve = max(_MIN_RESERVE, limit // 2)
    budget = max(limit - reserve, 16)
    total = max(4, int(budget * SHARES[listener]))
    return total, max(2, total // 4)


@dataclass
class _Counts:
    rejected: dict[str, int]
    since_note: dict[str, int]


class Admission:
    """Open-connection bookkeeping of one listener.

    ``peer`` is whatever identifies a client (its IP address as text; None where there is
    none, e.g. a Unix socket: then only the total cap applies).
    """

    def __init__(
        self,
        listener: str,
        max_connections: int,
        max_per_peer: int | None = None,
        *,
        log_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_connections < 1 or (max_per_peer is not None and max_per_peer < 1):
            raise ValueError("connection caps must be at least 1")
        self.listener = listener
        self.max_connections = max_connections
        self.max_per_peer = max_per_peer
        self.log_interval = log_interval
        self._clock = clock
        self._per_peer: dict[str | None, int] = {}
        self.active = 0
        """Connections open now (admitted and not released)."""
        self._counts = _Counts({r: 0 for r in REASONS}, {r: 0 for r in REASONS})
        self._noted_at: float | None = None

    @property
    def rejected(self) -> dict[str, int]:
        """Connections refused or closed so far, by reason (monotonic: for metrics)."""
        return dict(self._counts.rejected)

    def admit(self, peer: str | None) -> str | None:
        """Take a slot for a new connection from ``peer``: None when admitted, else the
        reason (``total_cap`` or ``peer_cap``, already counted); the caller closes it."""
        if self.active >= self.max_connections:
            self._count("total_cap")
            return "total_cap"
        held = self._per_peer.get(peer, 0)
        if peer is not None and self.max_per_peer is not None and held >= self.max_per_peer:
            self._count("peer_cap")
            return "peer_cap"
        self._per_peer[peer] = held + 1
        self.active += 1
        return None

    def release(self, peer: str | None) -> None:
        """Give back the slot of an admitted connection that has gone (call it once)."""
        held = self._per_peer.get(peer, 0)
        if held <= 0:
            return
        if held == 1:
            del self._per_peer[peer]
        else:
            self._per_peer[peer] = held - 1
        self.active -= 1

    def closed(self, reason: str) -> None:
        """Count a connection the listener closed itself (``header_timeout``,
        ``idle_timeout``, ``handshake_timeout``); its slot is released separately."""
        self._count(reason)

    def _count(self, reason: str) -> None:
        self._counts.rejected[reason] += 1
        self._counts.since_note[reason] += 1
        if reason == "idle_timeout":
            return  # closing idle connections is hygiene, not a sign of a flood
        now = self._clock()
        if self._noted_at is not None and now - self._noted_at < self.log_interval:
            return
        self._noted_at = now
        counts = ", ".join(f"{r} {n}" for r, n in self._counts.since_note.items() if n)
        log.warning(
            "listener %s is shedding connections (%d open, cap %d; %s since the last note); "
            "the next note comes in %.0f s at the earliest",
            self.listener, self.active, self.max_connections, counts, self.log_interval,
        )
        self._counts.since_note = {r: 0 for r in REASONS}


def make_admission(listener: str, max_connections: int | None = None,
                   max_per_peer: int | None = None, *, per_peer: bool = True) -> Admission:
    """The :class:`Admission` of ``listener`` with configured caps where given (None:
    derived from the descriptor limit; a configured total alone gets a quarter of it per
    peer). ``per_peer=False`` for listeners without peer addresses (Unix sockets)."""
    total, peer = listener_caps(listener)
    if max_connections is not None:
        total, peer = max_connections, max(1, max_connections // 4)
    if not per_peer:
        return Admission(listener, total)
    return Admission(listener, total, max_per_peer if max_per_peer is not None else peer)
