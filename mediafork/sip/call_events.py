"""Call events the host reports (hold, transfer, conference) and their RFC 7865 partial metadata.

Sans-I/O: a :class:`Roster` is who is in the recorded call and which tracks are on hold; an
event is checked against it (:meth:`Roster.check`), applied (:meth:`Roster.apply`), and turned
into the ``partial`` document one recording session sends (:func:`partial_metadata`).

The model (docs/sip.md, "Call events"): the call's From party sends the ``inbound`` track and
its To party the ``outbound`` track; a participant added (a conference leg, a supervisor) is
heard on one track and hears the other. Holding a track means it carries nobody's speech: who
sent it no longer ``<send>``s its streams and who heard it no longer ``<recv>``s them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal, Protocol

from .metadata import MetaParticipant, build_partial_update

__all__ = [
    "TRACKS",
    "CallEvent",
    "CallEventError",
    "Hold",
    "ParticipantAdded",
    "ParticipantRemoved",
    "ParticipantReplaced",
    "Roster",
    "partial_metadata",
]

Track = Literal["inbound", "outbound"]
TRACKS: tuple[Track, Track] = ("inbound", "outbound")


class Named(Protocol):
    """A participant: ``mediafork.sip.session.Participant`` (AoR and display name)."""

    @property
    def aor(self) -> str: ...

    @property
    def name(self) -> str | None: ...


class CallEventError(ValueError):
    """The event does not fit the call (unknown participant, duplicate AoR...)."""


@dataclass(frozen=True)
class Hold:
    """``track`` went on hold (``held``) or came back (not ``held``)."""

    track: Track
    held: bool = True


@dataclass(frozen=True)
class ParticipantReplaced:
    """The party on ``track``'s side is now ``participant`` (a transfer)."""

    track: Track
    participant: Named


@dataclass(frozen=True)
class ParticipantAdded:
    """``participant`` joined, heard on ``track`` (a conference leg, a supervisor)."""

    track: Track
    participant: Named


@dataclass(frozen=True)
class ParticipantRemoved:
    """An added participant left (the two sides are replaced, never removed)."""

    aor: str


CallEvent = Hold | ParticipantReplaced | ParticipantAdded | ParticipantRemoved


def _other(track: Track) -> Track:
    return "outbound" if track == "inbound" else "inbound"


@dataclass(frozen=True)
class Roster:
    """Who is in the call, on which track, and which tracks are on hold."""

    caller: Named
    callee: Named
    extra: tuple[tuple[Named, Track], ...] = ()
    held: frozenset[str] = frozenset()

    def members(self) -> list[tuple[Named, Track]]:
        return [(self.caller, "inbound"), (self.callee, "outbound"), *self.extra]

    def side(self, track: Track) -> Named:
        return self.caller if track == "inbound" else self.callee

    def check(self, event: CallEvent) -> None:
        """Raise :class:`CallEventError` if ``event`` cannot apply; changes nothing."""
        aors = {p.aor for p, _ in self.members()}
        if isinstance(event, ParticipantReplaced):
            if event.participant.aor != self.side(event.track).aor and (
                event.participant.aor in aors
            ):
                raise CallEventError(f"{event.participant.aor} is already in the call")
        elif isinstance(event, ParticipantAdded):
            if event.participant.aor in aors:
                raise CallEventError(f"{event.participant.aor} is already in the call")
        elif isinstance(event, ParticipantRemoved):
            if event.aor in (self.caller.aor, self.callee.aor):
                raise CallEventError(
                    f"{event.aor} is a side of the call: replace it (participant-replaced)"
                )
            if event.aor not in aors:
                raise CallEventError(f"{event.aor} is not an added participant of the call")

    def apply(self, event: CallEvent) -> Roster:
        """The roster after ``event`` (call :meth:`check` first)."""
        if isinstance(event, Hold):
            held = self.held | {event.track} if event.held else self.held - {event.track}
            return replace(self, held=frozenset(held))
        if isinstance(event, ParticipantReplaced):
            if event.track == "inbound":
                return replace(self, caller=event.participant)
            return replace(self, callee=event.participant)
        if isinstance(event, ParticipantAdded):
            return replace(self, extra=(*self.extra, (event.participant, event.track)))
        return replace(self, extra=tuple(m for m in self.extra if m[0].aor != event.aor))

    def meta(self, labels: Mapping[str, Sequence[str]]) -> list[MetaParticipant]:
        """Every member with the stream labels it sends and receives now."""
        return [self.meta_of(p, track, labels) for p, track in self.members()]

    def meta_of(self, p: Named, track: Track, labels: Mapping[str, Sequence[str]]) -> MetaParticipant:
        send = () if track in self.held else tuple(labels.get(track, ()))
        heard = _other(track)
        recv = () if heard in self.held else tuple(labels.get(heard, ()))
        return MetaParticipant(p.aor, p.name, send, recv)


def partial_metadata(
    event: CallEvent,
    before: Roster,
    after: Roster,
    *,
    labels: Mapping[str, Sequence[str]],
    seed: str,
    sip_session_ids: list[str],
    when: datetime,
) -> bytes | None:
    """The partial document telling an SRS about ``event``; None when nothing changed for it
    (a hold of a held track, a replacement by the same party)."""

    def build(
        described: Sequence[MetaParticipant] = (),
        associated: Sequence[str] = (),
        disassociated: Sequence[str] = (),
        stream_assocs: Sequence[MetaParticipant] = (),
    ) -> bytes:
        return build_partial_update(
            seed=seed, sip_session_ids=sip_session_ids, when=when, described=described,
            associated=associated, disassociated=disassociated, stream_assocs=stream_assocs,
        )

    if isinstance(event, Hold):
        if before.held == after.held:
            return None
        # Everyone sends or hears each track: every participantstreamassoc changes.
        return build(stream_assocs=after.meta(labels))
    if isinstance(event, ParticipantReplaced):
        old, new = before.side(event.track), after.side(event.track)
        if old.aor == new.aor:
            if old.name == new.name:
                return None
            # Same party, new display name: a new nameID only.
            return build(described=[after.meta_of(new, event.track, labels)])
        meta = after.meta_of(new, event.track, labels)
        return build(
            described=[meta], disassociated=[old.aor], associated=[new.aor], stream_assocs=[meta]
        )
    if isinstance(event, ParticipantAdded):
        meta = after.meta_of(event.participant, event.track, labels)
        return build(described=[meta], associated=[meta.aor], stream_assocs=[meta])
    return build(disassociated=[event.aor])
