"""systemd's service notification protocol (sd_notify(3)), for ``Type=notify`` units.

The protocol is one datagram of ``KEY=VALUE`` lines to the unix socket named by
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). Outside systemd the
variable is unset and every call here does nothing. Written by hand rather than through
libsystemd bindings: those need the C library and headers at install time, for twenty
lines of socket code.

:class:`Watchdog` pings ``WATCHDOG=1`` at half of ``$WATCHDOG_USEC`` while the event loop
runs *and* every media worker's loop advances, so systemd restarts a daemon whose control
plane or data plane has hung.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Mapping, Sequence

log = logging.getLogger("mediafork.daemon.systemd")

__all__ = ["Watchdog", "notify", "watchdog_interval"]


def _address(environ: Mapping[str, str]) -> str | bytes | None:
    path = environ.get("NOTIFY_SOCKET", "")
    if not path:
        return None
    if path.startswith("@"):  # abstract namespace: a leading NUL byte
        return b"\0" + path[1:].encode()
    return path if path.startswith("/") else None


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send *message* (``READY=1``, ``STOPPING=1``, ``WATCHDOG=1``, ``STATUS=…``); returns
    whether a notification socket was there to take it. Never raises: a supervisor that
    went away must not take the daemon down with it."""
    address = _address(os.environ if environ is None else environ)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), address)
        return True
    except OSError as exc:
        log.warning("systemd notification failed: %s", exc)
        return False


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between pings (half of ``$WATCHDOG_USEC``), or None when no watchdog is set
    for this process (unset, malformed, or ``$WATCHDOG_PID`` naming another process)."""
    env = os.environ if environ is None else environ
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6


class Watchdog:
    """Pings systemd every *interval* seconds while the media workers' loop counters advance.

    *worker_loops* returns each worker's loop counter; a worker loops at least once per timer
    period (tens of milliseconds) even without traffic, so a counter that stands still for a
    whole interval means that worker is stuck, and the ping is withheld: systemd then kills
    and restarts the daemon after ``WatchdogSec``. The event loop being stuck withholds the
    ping by itself."""

    def __init__(self, interval: float, worker_loops: Callable[[], Sequence[int]],
                 environ: Mapping[str, str] | None = None) -> None:
        self.interval = interval
        self._worker_loops = worker_loops
        self._environ = environ
        self._task: asyncio.Task[None] | None = None
        self.pings = 0
        self.withheld = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="watchdog")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        previous = list(self._worker_loops())
        while True:
            await asyncio.sleep(self.interval)
            current = list(self._worker_loops())
            stuck = [i for i, (a, b) in enumerate(zip(previous, current, strict=True))
                     if b == a]
            previous = current
            if stuck:
                self.withheld += 1
                log.error("media worker %s made no progress for %.1f s: withholding the "
                          "systemd watchdog ping", ", ".join(map(str, stuck)), self.interval)
                continue
            if notify("WATCHDOG=1", self._environ):
                self.pings += 1
