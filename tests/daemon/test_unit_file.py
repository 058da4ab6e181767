"""docs/systemd/mediafork.service stays consistent with the daemon it runs."""

from __future__ import annotations

import inspect
import re

from mediafork.daemon import Daemon

from .harness import TREE

UNIT = TREE / "docs" / "systemd" / "mediafork.service"


def _directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        match = re.fullmatch(r"([A-Za-z]+)=(.*)", line.strip())
        if match:
            found.setdefault(match.group(1), []).append(match.group(2))
    return found


def test_unit_is_hardened_and_stops_within_the_shutdown_bound() -> None:
    unit = _directives()
    for key, value in {"User": "mediafork", "NoNewPrivileges": "yes",
                       "ProtectSystem": "strict", "KillSignal": "SIGTERM",
                       "Restart": "on-failure", "RestartPreventExitStatus": "2"}.items():
        assert unit.get(key) == [value], key
    assert unit["ReadWritePaths"] == ["/var/lib/mediafork"]
    assert int(unit["LimitNOFILE"][0]) >= 65536
    bound = inspect.signature(Daemon).parameters["shutdown_timeout"].default
    # systemd must not SIGKILL a daemon that is still saying BYE within its own bound.
    assert int(unit["TimeoutStopSec"][0]) >= 2 * bound
    [exec_start] = unit["ExecStart"]
    assert " serve --config " in exec_start and "--log-format json" in exec_start
