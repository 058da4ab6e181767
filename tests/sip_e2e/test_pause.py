"""Pause and resume against sipp recorders that refuse the re-INVITE, with RTP read on the
wire: what leaves the forks follows the API, not the recorder's answer, and the sequence
numbers continue across a pause (the packets held back are not loss).

A refused re-INVITE leaves the session as it was (RFC 3261 §14.1): a refused pause keeps the
forks paused anyway (media the user wanted withheld must not leave); a refused resume sends
again anyway (the user asked to record; a recorder still at a=inactive drops it)."""

from __future__ import annotations

import asyncio
import secrets
import struct
from collections.abc import Callable

from mediafork.engine import Engine, Track

from .harness import (
    SIPREC_SID,
    EventLog,
    Recorder,
    Sipp,
    Wiretap,
    eventually,
    open_links,
    pump_media,
    run,
    sdp_of,
    start_request,
)
from .test_sipp import answer_keys


def _seqs(packets: list[tuple[bytes, tuple[str, int]]]) -> list[int]:
    return [struct.unpack_from("!H", p, 2)[0] for p, _ in packets]


def _timestamps(packets: list[tuple[bytes, tuple[str, int]]]) -> list[int]:
    return [struct.unpack_from("!I", p, 4)[0] for p, _ in packets]


def _offers(tap: Wiretap) -> list[list[str]]:
    """The directions of each INVITE we sent, in CSeq order (UDP retransmissions once)."""
    invites = {m.cseq: m for m in tap.sent("INVITE")}
    return [[s.direction for s in sdp_of(m).media] for _, m in sorted(invites.items())]


def _refused(tap: Wiretap, count: int) -> Callable[[], bool]:
    def check() -> bool:
        return sum(1 for d, *_, m in tap.records
                   if d == "in" and getattr(m, "status", 0) == 488) >= count
    return check


def test_a_refused_pause_keeps_the_forks_paused(
    engine: Engine, recorders: Callable[..., Recorder], sipp: Callable[..., Sipp]
) -> None:
    rec1, rec2 = recorders(), recorders()
    srs = sipp("srs_refuse_pause", keys=answer_keys(rec1, rec2, secure=False))

    async def main() -> None:
        events, tap = EventLog(), Wiretap()
        links = await open_links(events, tap)
        call = engine.add_call("CA" + secrets.token_hex(16), ingress=False)
        await links.start(call, start_request(srs.uri))
        await events.wait_for("started")
        await pump_media(call, Track.INBOUND, 3, start_seq=1)
        before = await rec1.receive(3)
        assert len(before) == 3

        await links.pause(SIPREC_SID)
        await eventually(_refused(tap, 1))
        await asyncio.sleep(0.05)  # the session takes the refusal in
        # Refused, and still nothing leaves: held back locally whatever the recorder says.
        await pump_media(call, Track.INBOUND, 5, start_seq=4)
        assert await rec1.receive(1, timeout=0.3) == []
        assert all(f.paused for f in links.forks(SIPREC_SID))
        skipped = sum(f.counters()["skipped"] for f in links.forks(SIPREC_SID))
        assert skipped >= 5

        # Resuming needs no re-INVITE (the recorder never left sendonly): media flows at once.
        await links.resume(SIPREC_SID)
        await eventually(lambda: not any(f.paused for f in links.forks(SIPREC_SID)))
        await pump_media(call, Track.INBOUND, 3, start_seq=9)
        after = await rec1.receive(3)
        assert len(after) == 3
        # The five held-back packets left no hole in the sequence numbers; the timestamps
        # carry the held time (6 packets of 160 samples from the last one before).
        seqs = _seqs(before + after)
        assert [(b - a) & 0xFFFF for a, b in zip(seqs, seqs[1:], strict=False)] == [1] * 5
        stamps = _timestamps(before + after)
        assert [(b - a) & 0xFFFFFFFF for a, b in zip(stamps, stamps[1:], strict=False)] == [
            160, 160, 960, 160, 160]
        assert _offers(tap) == [["sendonly"] * 2, ["inactive"] * 2]
        await links.stop(SIPREC_SID)
        assert events.kinds() == ["started", "stopped"]  # a refusal is not an error
        assert await srs.wait() == 0, srs.messages()
        await links.close(1.0)

    run(main())


def test_a_refused_resume_sends_again(
    engine: Engine, recorders: Callable[..., Recorder], sipp: Callable[..., Sipp]
) -> None:
    rec1, rec2 = recorders(), recorders()
    srs = sipp("srs_refuse_resume", keys=answer_keys(rec1, rec2, secure=False))

    async def main() -> None:
        events, tap = EventLog(), Wiretap()
        links = await open_links(events, tap)
        call = engine.add_call("CA" + secrets.token_hex(16), ingress=False)
        await links.start(call, start_request(srs.uri))
        await events.wait_for("started")
        await pump_media(call, Track.OUTBOUND, 2, start_seq=1)
        before = await rec2.receive(2)
        assert len(before) == 2

        await links.pause(SIPREC_SID)
        await pump_media(call, Track.OUTBOUND, 4, start_seq=3)
        assert await rec2.receive(1, timeout=0.3) == []
        await links.resume(SIPREC_SID)
        await eventually(_refused(tap, 1))
        await eventually(lambda: not any(f.paused for f in links.forks(SIPREC_SID)))
        await pump_media(call, Track.OUTBOUND, 2, start_seq=7)
        after = await rec2.receive(2)
        assert len(after) == 2
        seqs = _seqs(before + after)
        assert [(b - a) & 0xFFFF for a, b in zip(seqs, seqs[1:], strict=False)] == [1] * 3
        assert _offers(tap) == [["sendonly"] * 2, ["inactive"] * 2, ["sendonly"] * 2]
        await links.stop(SIPREC_SID)
        assert events.kinds() == ["started", "stopped"]
        assert await srs.wait() == 0, srs.messages()
        await links.close(1.0)

    run(main())


def test_a_pause_before_the_answer_waits_for_it(
    engine: Engine, recorders: Callable[..., Recorder], sipp: Callable[..., Sipp]
) -> None:
    """Paused while the INVITE is unanswered: nothing is ever sent, and the a=inactive
    re-INVITE follows the 2xx."""
    rec1, rec2 = recorders(), recorders()
    srs = sipp("srs_late_answer", fill={"ANSWER_MS": "300"},
               keys=answer_keys(rec1, rec2, secure=False))

    async def main() -> None:
        events, tap = EventLog(), Wiretap()
        links = await open_links(events, tap)
        call = engine.add_call("CA" + secrets.token_hex(16), ingress=False)
        await links.start(call, start_request(srs.uri))
        await links.pause(SIPREC_SID)
        assert events.kinds() == []  # not answered yet
        await events.wait_for("started")
        await pump_media(call, Track.INBOUND, 5)
        await pump_media(call, Track.OUTBOUND, 5)
        assert await rec1.receive(1, timeout=0.3) == []
        assert await rec2.receive(1, timeout=0.05) == []
        await eventually(lambda: len({m.cseq for m in tap.sent("INVITE")}) == 2)
        assert _offers(tap) == [["sendonly"] * 2, ["inactive"] * 2]
        await links.stop(SIPREC_SID)
        assert events.kinds() == ["started", "stopped"]
        assert await srs.wait() == 0, srs.messages()
        await links.close(1.0)

    run(main())
