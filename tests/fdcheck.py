"""Open-descriptor accounting for tests that start a daemon.

Every harness that starts a daemon takes a :class:`DescriptorCheck` before the daemon starts
and calls :meth:`DescriptorCheck.assert_released` once it has shut down: the process must not
hold more descriptors than before. Resources are released when they are given up, never by
the garbage collector, so there is deliberately no garbage collection here: a socket that only
a collection would close is a leak and fails the test.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

__all__ = ["ONE_SHOT_HEADERS", "DescriptorCheck", "open_descriptors"]

ONE_SHOT_HEADERS = {"Connection": "close"}
"""For one-shot ``requests`` calls in tests that count descriptors. With urllib3 2 the
connection of ``requests.get()`` stays open as long as its Response object lives (closing the
session does not close it), and a test frame kept by an exception's traceback (``pytest.raises``
keeps one) holds its Responses until garbage collection. With ``Connection: close`` no
connection outlives its request."""


def open_descriptors() -> dict[int, str]:
    """This process's descriptors and what each points at (``socket:[…]``, a path…)."""
    found: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the listing's own descriptor, closed by now
            continue
    return found


@functools.cache
def _open_process_lifetime_descriptors() -> None:
    """Open, once, what the process legitimately keeps for its whole life, so that a check
    that happens to come first does not count it as a leak.

    libuv (under uvloop) creates a process-wide signal lock pipe, two descriptors
    (``uv__signal_global_init``), with the first loop and never closes it.
    """
    import uvloop

    uvloop.new_event_loop().close()


class DescriptorCheck:
    """``check = DescriptorCheck("daemon")`` before start; ``check.assert_released()`` after
    shutdown."""

    def __init__(self, what: str) -> None:
        _open_process_lifetime_descriptors()
        self.what = what
        self.before = open_descriptors()

    def assert_released(self) -> None:
        now = open_descriptors()
        if len(now) > len(self.before):
            sockets = _socket_addresses()
            new = {fd: sockets.get(target, target) for fd, target in sorted(now.items())
                   if self.before.get(fd) != target}
            raise AssertionError(
                f"{self.what}: {len(now) - len(self.before)} more descriptors open after "
                f"shutdown than before start ({len(self.before)} -> {len(now)}); "
                f"new or changed: {new}")


def _socket_addresses() -> dict[str, str]:
    """``socket:[inode]`` -> "udp 127.0.0.1:30002 -> 0.0.0.0:0" for the failure message: which
    component a leaked socket belongs to is plain from its port."""
    found: dict[str, str] = {}
    for kind in ("tcp", "udp", "tcp6", "udp6"):
        try:
            lines = Path(f"/proc/self/net/{kind}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            found[f"socket:[{fields[9]}]"] = (f"{kind} {_address(fields[1])} -> "
                                              f"{_address(fields[2])}")
    return found


def _address(text: str) -> str:
    host, port = text.split(":")
    if len(host) == 8:  # IPv4, little-endian hex
        host = ".".join(str(int(host[i:i + 2], 16)) for i in (6, 4, 2, 0))
    return f"{host}:{int(port, 16)}"
