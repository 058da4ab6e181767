"""Recorder health from out-of-dialog OPTIONS: up/down marks and the probe schedule.

Sans-I/O: :class:`RecorderHealth` is told which recorders exist, answers which are due for a
probe (at most one in flight per recorder), takes each probe's outcome and says when a
recorder's mark changed. :class:`~mediafork.sip.recorder_links.SipRecorderLinks` sends the
OPTIONS and orders set-up and failover targets with :meth:`RecorderHealth.order`.

What an OPTIONS outcome means (RFC 3261 §11: a UA answers OPTIONS as it would an INVITE, and
any final response shows that something is there to answer):

* alive: any final response (2xx, 3xx, 4xx such as 403/404/405, 501 and 6xx) — the recorder
  parsed the request and answered it;
* failed: no final response within the probe timeout, a transport error (ICMP port
  unreachable, connection refused or reset, TLS failure), 408, or a 5xx other than 501
  (500/503/504: the recorder, or the proxy in front of it, says it cannot serve now).

A recorder is marked down after ``down_after`` failed probes in a row and up again after one
alive answer. Recorders start up: a mark only ever comes from probes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["HealthConfig", "RecorderHealth", "RecorderKey", "probe_alive"]

RecorderKey = tuple[str, str, int]
"""(transport, host, port): where a recorder's SIP goes. It carries no credentials."""

T = TypeVar("T")


@dataclass(frozen=True)
class HealthConfig:
    """``[sip.health]``: see docs/operations.md."""

    interval: float = 30.0
    """Seconds between two probes of one recorder; 0 disables health checks."""
    timeout: float = 5.0
    """Seconds to wait for a final answer to one probe (UDP retransmits at T1 within it)."""
    down_after: int = 2
    """Failed probes in a row that mark a recorder down."""

    @property
    def enabled(self) -> bool:
        return self.interval > 0


def probe_alive(status: int | None) -> bool:
    """Whether an OPTIONS outcome shows the recorder alive (``None``: no answer at all)."""
    if status is None or status < 200 or status == 408:
        return False
    return not (500 <= status < 600 and status != 501)


@dataclass
class _State:
    up: bool = True
    failures: int = 0
    next_probe: float = 0.0
    in_flight: bool = False


class RecorderHealth:
    """Up/down marks and probe times of a set of recorders."""

    def __init__(self, config: HealthConfig) -> None:
        self.config = config
        self._states: dict[RecorderKey, _State] = {}

    def set_targets(self, keys: Iterable[RecorderKey], now: float) -> None:
        """The recorders to watch (after start or a reload): new ones are first probed one
        interval from now (up until then, as a recorder is before any probe), gone ones
        forgotten, known ones keep their mark and schedule."""
        wanted = set(keys)
        for key in list(self._states):
            if key not in wanted:
                del self._states[key]
        for key in wanted:
            self._states.setdefault(key, _State(next_probe=now + self.config.interval))

    def due(self, now: float) -> list[RecorderKey]:
        """Recorders to probe now; each is marked in flight until :meth:`result`."""
        if not self.config.enabled:
            return []
        out = []
        for key, state in self._states.items():
            if not state.in_flight and state.next_probe <= now:
                state.in_flight = True
                out.append(key)
        return sorted(out)

    def result(self, key: RecorderKey, status: int | None, now: float) -> bool | None:
        """Take one probe's outcome (``status`` None: no answer). Returns the new mark when
        it changed (True: up again, False: down), else None."""
        state = self._states.get(key)
        if state is None:  # removed by a reload while the probe was out
            return None
        state.in_flight = False
        state.next_probe = now + self.config.interval
        if probe_alive(status):
            state.failures = 0
            if not state.up:
                state.up = True
                return True
            return None
        state.failures += 1
        if state.up and state.failures >= self.config.down_after:
            state.up = False
            return False
        return None

    def next_deadline(self) -> float | None:
        """When the next probe is due (None: nothing to probe)."""
        if not self.config.enabled:
            return None
        times = [s.next_probe for s in self._states.values() if not s.in_flight]
        return min(times) if times else None

    def is_down(self, key: RecorderKey) -> bool:
        state = self._states.get(key)
        return state is not None and not state.up

    def states(self) -> dict[RecorderKey, bool]:
        """Every watched recorder -> up (True) or down."""
        return {key: state.up for key, state in self._states.items()}

    def order(self, items: Sequence[T], keys: Sequence[RecorderKey]) -> list[T]:
        """``items`` (recorders in the connector's order, ``keys`` their keys) with the
        down-marked ones moved to the end, keeping the order otherwise. Down ones are still
        tried last rather than dropped: a mark may be up to one interval stale, and a
        recording that tries one more recorder beats one that fails without trying."""
        up = [item for item, key in zip(items, keys, strict=True) if not self.is_down(key)]
        down = [item for item, key in zip(items, keys, strict=True) if self.is_down(key)]
        return up + down
