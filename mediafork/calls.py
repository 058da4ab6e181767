"""A registered call as the control plane sees it.

Shared by the control service (mediafork.daemon.service) and the Recordings manager
(mediafork.recording.manager): the engine's Call plus what the host told us
about the call when it registered it (account, participants, codec).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .engine import Call
from .recorder_api import CallCodec

__all__ = ["CallHandle"]


@dataclass(frozen=True)
class CallHandle:
    """One live call registered by the host (``POST /v1/Calls`` or the control socket).

    Frozen so that it can be handed to other components without them mutating
    the service's view; participant updates replace the handle (``with_participants``).
    """

    call_sid: str
    account_sid: str
    engine_call: Call
    from_: str
    to: str
    codec: CallCodec = CallCodec()

    def with_participants(self, from_: str, to: str) -> CallHandle:
        return replace(self, from_=from_, to=to)
