"""Call events (hold, transfer, participant added) reach a sipp SRS as re-INVITEs with
partial metadata: one at a time, in order, each XSD-valid with the right elements."""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Callable
from pathlib import Path

import xmlschema

from mediafork.engine import Engine
from mediafork.sip.call_events import Hold, ParticipantAdded, ParticipantReplaced
from mediafork.sip.message import Request, parse_message
from mediafork.sip.metadata import make_id, parse_metadata
from mediafork.sip.session import Participant

from .harness import (
    CALL_SID,
    SIPREC_SID,
    EventLog,
    Recorder,
    Sipp,
    Wiretap,
    eventually,
    metadata_of,
    open_links,
    run,
    start_request,
)
from .test_sipp import answer_keys

SCHEMA = xmlschema.XMLSchema(str(Path(__file__).parent.parent / "sip" / "data" / "rfc7865.xsd"))
CALLER = "sip:+15551230000@pbx.example"
CALLEE = "tel:+15559870000"  # start_request's bare number, as metadata carries it
CAROL = Participant("sip:carol@transfer.example", "Carol <after transfer>")
SUPERVISOR = Participant("sip:sup@example.com", "Supervisor")


def received_invites(log: str) -> list[Request]:
    """The INVITEs sipp's -trace_msg log says it received, in order."""
    out = []
    for chunk in re.split(r"\n-{10,}[^\n]*\n", log):
        head, sep, message = chunk.partition("message received")
        if not sep:
            continue
        text = message.split("\n", 1)[1].lstrip("\n").split("\n\n\n")[0]
        raw = text.replace("\r\n", "\n").replace("\n", "\r\n").encode()
        if raw.startswith(b"INVITE "):
            msg = parse_message(raw)
            assert isinstance(msg, Request)
            out.append(msg)
    return out


def test_call_events_are_sent_in_order_one_reinvite_at_a_time(
    engine: Engine, recorders: Callable[..., Recorder], sipp: Callable[..., Sipp]
) -> None:
    rec1, rec2 = recorders(), recorders()
    srs = sipp("srs_events", fill={"DELAY_MS": "600"}, keys=answer_keys(rec1, rec2))

    async def main() -> None:
        events, tap = EventLog(), Wiretap()
        links = await open_links(events, tap)
        call = engine.add_call("CA" + secrets.token_hex(16), ingress=False)
        await links.start(call, start_request(f"{srs.uri};secure=true;transport=udp"))
        await events.wait_for("started")
        assert await links.call_event(CALL_SID, Hold("inbound")) == [SIPREC_SID]
        assert await links.call_event(CALL_SID, ParticipantReplaced("outbound", CAROL)) == [
            SIPREC_SID
        ]
        assert await links.call_event(CALL_SID, ParticipantAdded("inbound", SUPERVISOR)) == [
            SIPREC_SID
        ]
        assert await links.call_event("CA" + "00" * 16, Hold("inbound")) == []  # other call
        await asyncio.sleep(0.3)  # the SRS holds the first one: the others wait
        assert len(tap.sent("INVITE")) == 2
        # A session started again for this Siprec (failover) would begin from here.
        roster = links._links[SIPREC_SID].request.roster
        assert roster is not None and roster.held == {"inbound"}
        assert roster.callee == CAROL and [p for p, _ in roster.extra] == [SUPERVISOR]
        await eventually(lambda: len(tap.sent("INVITE")) == 4, timeout=5.0)
        await eventually(lambda: len(tap.sent("ACK")) == 4)
        await links.stop(SIPREC_SID)
        assert events.kinds() == ["started", "stopped"]
        assert await srs.wait() == 0, srs.messages()
        await links.close(1.0)
        call.close()

        invites = received_invites(srs.messages())
        assert len(invites) == 4, srs.messages()[-3000:]
        assert [i.cseq[0] for i in invites] == sorted(i.cseq[0] for i in invites)
        docs = [metadata_of(i) for i in invites[1:]]
        for doc in docs:
            SCHEMA.validate(doc.decode())
        seed = parse_metadata(metadata_of(invites[0]))
        (session_id,) = seed.session_ids
        hold, transfer, added = (parse_metadata(d) for d in docs)
        assert {hold.datamode, transfer.datamode, added.datamode} == {"partial"}
        assert hold.session_ids == transfer.session_ids == added.session_ids == [session_id]

        def pid(meta_seed: object, aor: str) -> str:
            # Identifiers are those of the complete document: find by AoR there or here.
            for p in seed.participants.values():
                if aor in p.aors:
                    return p.participant_id
            raise AssertionError(aor)

        label = {sid: lab for sid, lab in seed.streams.items()}
        # 1. hold of inbound: the caller sends nothing, the callee hears nothing.
        caller, callee = hold.participants[pid(seed, CALLER)], hold.participants[pid(seed, CALLEE)]
        assert ([label[s] for s in caller.send], [label[s] for s in caller.recv]) == ([], ["2"])
        assert ([label[s] for s in callee.send], [label[s] for s in callee.recv]) == (["2"], [])
        assert not hold.disassociated and not caller.aors
        # 2. transfer of the outbound side: the callee leaves, Carol joins, sends "2".
        assert transfer.disassociated == [pid(seed, CALLEE)]
        [carol] = [p for p in transfer.participants.values() if p.aors]
        assert carol.aors == [CAROL.aor] and carol.names == [CAROL.name]
        assert [label[s] for s in carol.send] == ["2"] and carol.recv == []  # inbound held
        assert b"<after transfer>" not in docs[1]
        # 3. a supervisor added on the inbound track: held, so it sends nothing yet.
        [sup] = [p for p in added.participants.values() if p.aors]
        assert sup.aors == [SUPERVISOR.aor] and sup.send == []
        assert [label[s] for s in sup.recv] == ["2"]
        assert sup.participant_id not in seed.participants
        assert make_id  # identifiers are stable hashes (checked in tests/sip)

    run(main())
