"""mediafork: a SIPREC media-forking engine.

The public embedding API lives in :mod:`mediafork.engine` and is re-exported here
lazily, so that pure-Python parts (SIP, TwiML, audio) import without the compiled
data plane being built.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_ENGINE_EXPORTS = {
    "Engine",
    "Call",
    "Fork",
    "SrtpProfile",
    "SrtpKey",
    "Track",
    "EngineError",
}


def __getattr__(name: str) -> Any:
    if name in _ENGINE_EXPORTS:
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'mediafork' has no attribute {name!r}")


__all__ = sorted(_ENGINE_EXPORTS) + ["__version__"]
