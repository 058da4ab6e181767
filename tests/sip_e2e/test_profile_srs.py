"""Connector SRTP suites against the reference recorder: it takes the first offered suite
it supports, so a profile listing one suite first must be answered with it, and the
recorder (libsrtp) must decrypt every payload bit-exact, AEAD GCM included."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from mediafork.engine import Engine
from mediafork.recorder_api import CallCodec
from mediafork.sip.profile import parse_profile
from mediafork.sip.sdp import SUITE_32, SUITE_80, SUITE_GCM_128, SUITE_GCM_256
from mediafork.srs.server import RecorderConfig, ReferenceRecorder

from .harness import (
    SIPREC_SID,
    EventLog,
    Wiretap,
    eventually,
    open_links,
    own_port_block,
    run,
    sdp_of,
    start_request,
)
from .test_codecs import _send

SUITES = (SUITE_GCM_256, SUITE_GCM_128, SUITE_32, SUITE_80)


@pytest.fixture
def engine() -> Iterator[Engine]:
    e = Engine(port_range=own_port_block())
    yield e
    e.close()


def _payloads(path: Path) -> list[bytes]:
    data, kept = path.read_bytes(), []
    while data:
        length = int.from_bytes(data[:2], "big")
        kept.append(data[2:2 + length])
        data = data[2 + length:]
    return kept


@pytest.mark.parametrize("suite", SUITES)
def test_reference_recorder_decrypts_the_profile_suite(suite: str, engine: Engine,
                                                       tmp_path: Path) -> None:
    order = [suite, *[s for s in SUITES if s != suite]]

    async def main() -> None:
        recorder = ReferenceRecorder(RecorderConfig(
            port=0, out_dir=tmp_path / "out", media_ports=own_port_block(), keep_payloads=True))
        await recorder.start()
        events, tap = EventLog(), Wiretap()
        links = await open_links(events, tap)
        call = engine.add_call("CA" + secrets.token_hex(16), ingress=False)
        base = start_request(f"{recorder.uri()};secure=true;transport=udp",
                             track="inbound_track")
        profile = parse_profile({"srtp_suites": order}, "connectors[0].sip", secure=True)
        request = dataclasses.replace(base, codec=CallCodec(), connector=dataclasses.replace(
            base.connector, profile=profile))
        await links.start(call, request)
        await events.wait_for("started")
        invite = tap.sent("INVITE")[0]  # UDP: a retransmission may follow
        assert [c.suite for c in sdp_of(invite).media[0].cryptos] == order
        ok = next(m for d, *_, m in tap.records
                  if d == "in" and getattr(m, "status", None) == 200 and m.cseq[1] == "INVITE")
        assert [c.suite for c in sdp_of(ok).media[0].cryptos] == [suite]

        sent = await _send(call, CallCodec(), 160)
        (session,) = recorder.sessions
        (receiver,) = [r for r in session.receivers if r is not None]
        await eventually(lambda: receiver.stats.packets == len(sent))
        await links.stop(SIPREC_SID)
        await eventually(lambda: session.state == "ended")
        assert receiver.payloads_path is not None
        assert _payloads(receiver.payloads_path) == sent
        await links.close(1.0)
        await recorder.stop()

    run(main())
