"""What a configuration reload changes, decided before anything is touched.

:func:`plan_reload` compares the running configuration with a newly loaded (and therefore
already fully validated) one and sorts every difference into what the daemon applies live
(accounts, connectors, edges, callback settings, log level) and what only a restart can
change (listen addresses, storage, media ports and workers, the SIP port and TLS files, the
control socket). It is pure: the daemon applies the plan, and a refused reload never gets
this far (``load_config`` raised first).

Secrets are compared but never reported: the plan names accounts by SID and connectors by
account and unique name, and says "credentials changed" without a value.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .config import Config

__all__ = ["ReloadPlan", "plan_reload"]

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class ReloadPlan:
    """Differences between two configurations, by what they mean for a running daemon."""

    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    restart_required: tuple[str, ...] = field(default=())
    """Keys whose new value takes effect only after a restart (the old one stays in force)."""

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or self.removed or self.restart_required)

    def summary(self) -> str:
        parts = []
        for label, items in (("added", self.added), ("changed", self.changed),
                             ("removed", self.removed)):
            if items:
                parts.append(f"{label}: {', '.join(items)}")
        if self.restart_required:
            parts.append("needs a restart (kept as before): "
                         + ", ".join(self.restart_required))
        return "; ".join(parts) or "no changes"


def _diff(kind: str, old: Mapping[K, Any], new: Mapping[K, Any], name: Any
          ) -> tuple[list[str], list[str], list[str]]:
    added = [f"{kind} {name(k)}" for k in new if k not in old]
    removed = [f"{kind} {name(k)}" for k in old if k not in new]
    changed = [f"{kind} {name(k)}" for k in new if k in old and new[k] != old[k]]
    return added, changed, removed


def _by(items: Iterable[Any], key: Any) -> dict[Any, Any]:
    return {key(item): item for item in items}


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    """Sort the differences between *old* and *new* (both already validated)."""
    added: list[str] = []
    changed: list[str] = []
    removed: list[str] = []
    for kind, key, name, old_items, new_items in (
        ("account", lambda a: a.sid, lambda k: k, old.accounts, new.accounts),
        ("connector", lambda c: (c.account_sid, c.unique_name),
         lambda k: f"{k[1]!r} of {k[0]}", old.connectors, new.connectors),
        ("edge", lambda e: e.name, lambda k: k, old.edges, new.edges),
    ):
        a, c, r = _diff(kind, _by(old_items, key), _by(new_items, key), name)
        added += a
        changed += c
        removed += r
    if old.callbacks != new.callbacks:
        changed.append("callbacks")
    if old.log_level != new.log_level:
        changed.append("log level")
    restart = []
    for label, before, after in (
        ("api", old.api, new.api),
        ("storage", old.storage, new.storage),
        ("media", old.media, new.media),
        ("sip", old.sip, new.sip),
        ("control_socket", old.control_socket, new.control_socket),
        ("control_socket limits", old.control_socket_limits, new.control_socket_limits),
        ("media_sources", old.media_sources, new.media_sources),
    ):
        if before != after:
            restart.append(label)
    return ReloadPlan(tuple(added), tuple(changed), tuple(removed), tuple(restart))
