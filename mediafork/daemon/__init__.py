"""The sidecar daemon (``mediafork serve``): everything only the daemon needs.

- :mod:`.process`: :class:`Daemon` and :func:`serve`, which wire the engine, the SIP
  recorder links, the store and the HTTP/control-socket listeners together;
- :mod:`.service`: the control service behind the REST API and the control socket;
- :mod:`.config`: the TOML configuration and the embedded defaults;
- :mod:`.metrics`, :mod:`.logs`, :mod:`.status`: what an operator sees;
- :mod:`.demo`: ``mediafork demo`` (``scripts/demo``).

Embedding uses :mod:`mediafork.engine` instead and never imports this package.
``Daemon`` and ``serve`` are exported lazily so that ``mediafork.daemon.config``
imports without the compiled data plane or aiohttp.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Daemon", "serve"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import process

        return getattr(process, name)
    raise AttributeError(f"module 'mediafork.daemon' has no attribute {name!r}")
