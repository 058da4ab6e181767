"""The operations docs stay consistent with the code: the systemd unit with the shutdown
bound, the config reference with every key the parser accepts."""

from __future__ import annotations

import inspect
import re

import mediafork.daemon.config
import mediafork.sip.profile
from mediafork.daemon.process import Daemon

from .harness import TREE

UNIT = TREE / "docs" / "systemd" / "mediafork.service"
GUIDE = TREE / "docs" / "operations.md"


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
                       "Restart": "on-failure", "RestartPreventExitStatus": "2",
                       "Type": "notify", "NotifyAccess": "main"}.items():
        assert unit.get(key) == [value], key
    assert unit["ReadWritePaths"] == ["/var/lib/mediafork"]
    assert int(unit["LimitNOFILE"][0]) >= 65536
    bound = inspect.signature(Daemon).parameters["shutdown_timeout"].default
    # systemd must not SIGKILL a daemon that is still saying BYE within its own bound.
    assert int(unit["TimeoutStopSec"][0]) >= 2 * bound
    # The watchdog pings every WatchdogSec/2; a shorter WatchdogSec than a few seconds
    # would kill a daemon that is merely busy.
    assert int(unit["WatchdogSec"][0]) >= 10
    [exec_start] = unit["ExecStart"]
    assert " serve --config " in exec_start and "--log-format json" in exec_start


def _accepted_keys() -> set[str]:
    """Every key name the parser allows: the sets handed to its table readers, plus the
    top-level tables."""
    source = inspect.getsource(mediafork.daemon.config)
    keys = set(mediafork.daemon.config._TOP_LEVEL)
    keys |= mediafork.sip.profile._KEYS  # [connectors.sip], parsed in its own module
    # The allowed set is the first brace literal of quoted names after `_Reader(`; the
    # table path before it may be an f-string with braces of its own.
    for allowed in re.findall(r'_Reader\(.{0,80}?\{(\s*"[^}]*)\}', source, re.S):
        keys |= set(re.findall(r'"([a-z_]+)"', allowed))
    return keys


def test_config_reference_names_every_accepted_key() -> None:
    guide = GUIDE.read_text()
    keys = _accepted_keys()
    assert {"listen", "port_range", "sid", "auth_token_encrypted", "name", "default",
            "credentials_encrypted", "key_env", "max_attempts", "metadata_content_type"} <= keys  # the extraction itself works
    # A key is documented as `key`, `table.key`, or a table heading `[key]` / `[[key]]`.
    missing = sorted(k for k in keys if not re.search(
        rf"`(?:[a-z_.]+\.)?{k}`|`\[{k}\]`|`\[\[{k}\]\]`|^#+ `\[+{k}\]+`", guide, re.M))
    assert not missing, f"docs/operations.md does not document {missing}"
