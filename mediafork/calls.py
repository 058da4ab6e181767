"""A registered call as the control plane sees it.

Shared by the control service (mediafork.daemon.service) and the Recordings manager
(mediafork.recording.manager): the engine's Call plus what the host told us
about the call when it registered it (account, participants, codec).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .control.call_event_form import participant_of
from .engine import Call
from .recorder_api import CallCodec
from .sip.call_events import Roster

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
    roster: Roster | None = None
    """Who is in the call and which tracks are held, once the host reported a call event
    (None: just From and To); recorder sessions started later begin from it."""

    def with_participants(self, from_: str, to: str) -> CallHandle:
        roster = self.roster
        if roster is not None:
            # New From/To replace the sides (names unknown); added parties and holds stay.
            roster = replace(roster, caller=participant_of(from_), callee=participant_of(to))
        return replace(self, from_=from_, to=to, roster=roster)

    def current_roster(self) -> Roster:
        """The call's roster (built from From and To until an event changed it)."""
        if self.roster is not None:
            return self.roster
        return Roster(participant_of(self.from_), participant_of(self.to))

    def with_roster(self, roster: Roster) -> CallHandle:
        """After a call event: a transfer changes From or To as well (a Siprec started later,
        the call's view and its store row name the new party)."""
        from_ = self.from_
        if roster.caller.aor != participant_of(from_).aor:
            from_ = roster.caller.aor
        to = self.to
        if roster.callee.aor != participant_of(to).aor:
            to = roster.callee.aor
        return replace(self, roster=roster, from_=from_, to=to)
