"""Connector SIP profiles end to end: sipp as the recorder checks the INVITE's headers and
offer (static headers, parameters as headers with free-text names, Session-Expires, the
a=crypto lines in the configured order, RTP/AVP), answers with one suite, and the forked
media is decrypted with pylibsrtp for that suite."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import Callable
from pathlib import Path

import pytest
import xmlschema
from pylibsrtp import Policy, Session

from mediafork.engine import Engine, Track
from mediafork.recorder_api import SiprecStart
from mediafork.sip.metadata import EXT_NS, parse_metadata
from mediafork.sip.profile import EXTENSION_NS, parse_profile
from mediafork.sip.sdp import KEY_LENGTHS, SUITE_32, SUITE_80, SUITE_GCM_128, SUITE_GCM_256

from .harness import (
    SIPREC_SID,
    EventLog,
    Recorder,
    Sipp,
    Wiretap,
    crypto_line,
    eventually,
    metadata_of,
    open_links,
    pump_media,
    run,
    sdp_of,
    start_request,
)

SCHEMA = xmlschema.XMLSchema(str(Path(__file__).parent.parent / "sip" / "data" / "rfc7865.xsd"))
POLICIES = {
    SUITE_80: Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    SUITE_32: Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    SUITE_GCM_128: Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    SUITE_GCM_256: Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
}
LONG_NAME = "Ä" + "n" * 126 + " "
"""A 128-character parameter name with a non-ASCII first and a space last."""
LONG_HEADER = "X-%C3%84" + "n" * 126 + "%20"
TENANT = "tenant-token-5d1c"


def _request(srs: str, table: dict[str, object], secure: bool) -> SiprecStart:
    base = start_request(srs, credentials=None)
    profile = parse_profile(table, "connectors[0].sip", secure=secure)
    connector = dataclasses.replace(base.connector, profile=profile)
    return dataclasses.replace(base, connector=connector, parameters=(
        ("Agent Name", "Zoë Müller"), (LONG_NAME, "50% off"), ("queue", "sales"),
        ("Tenant", "spoofed")))


def _checks(patterns: list[str]) -> dict[str, str]:
    lines = [f'      <ereg regexp="{p}" search_in="msg" check_it="true" assign_to="c{i}"/>'
             for i, p in enumerate(patterns)]
    return {"CHECKS": "\n".join(lines), "REFS": "".join(f",c{i}" for i in range(len(patterns)))}


def _answer(rec1: Recorder, rec2: Recorder, tag: int | None, suite: str | None) -> dict[str, str]:
    line = (crypto_line(tag, suite, bytes(KEY_LENGTHS[suite])) if tag and suite
            else "a=ptime:20")
    return {"rec_ip": "127.0.0.1", "rec_port1": str(rec1.port), "rec_port2": str(rec2.port),
            "rec_proto": "RTP/SAVP" if suite else "RTP/AVP", "crypto1": line, "crypto2": line}


ORDER = (SUITE_GCM_256, SUITE_32, SUITE_GCM_128, SUITE_80)


@pytest.mark.parametrize("suite", ORDER)
def test_profile_headers_and_the_answered_suite_decrypt(
    engine: Engine, recorders: Callable[..., Recorder], sipp: Callable[..., Sipp], suite: str
) -> None:
    tag = ORDER.index(suite) + 1
    rec1, rec2 = recorders(), recorders()
    checks = [
        f"X-Tenant: {TENANT}",
        "X-Agent%20Name: Zo%C3%AB M%C3%BCller",
        f"{LONG_HEADER}: 50%25 off",
        "X-queue: sales",
        "Session-Expires: 600",
        *[f"a=crypto:{i} {s} inline:" for i, s in enumerate(ORDER, start=1)],
        "m=audio [0-9]+ RTP/SAVP 0",
    ]
    srs = sipp("srs_profile", keys=_answer(rec1, rec2, tag, suite), fill=_checks(checks))
    table = {"headers": {"X-Tenant": TENANT}, "parameters_as": "both", "session_expires": 600,
             "group_name": "Floor 3", "srtp_suites": list(ORDER),
             "extension_xml": ['<site xmlns="urn:example:site">Paris</site>', "<note>n</note>"]}

    async def main() -> None:
        events, tap = EventLog(), Wiretap()
        links = await open_links(events, tap)
        call = engine.add_call("CA" + secrets.token_hex(16), ingress=False)
        await links.start(call, _request(f"{srs.uri};secure=true;transport=udp", table, True))
        await events.wait_for("started")
        invite = tap.sent("INVITE")[0]  # UDP: a retransmission may follow
        offer = sdp_of(invite)
        assert all([(c.tag, c.suite) for c in m.cryptos] == list(enumerate(ORDER, start=1))
                   for m in offer.media)
        metadata = metadata_of(invite)
        SCHEMA.validate(metadata.decode())
        assert parse_metadata(metadata).custom["Agent Name"] == "Zoë Müller"  # "both"
        assert b"<mf:group-name>Floor 3</mf:group-name>" in metadata
        assert f'xmlns:mf="{EXT_NS}"'.encode() in metadata
        assert EXTENSION_NS.encode() in metadata and b"urn:example:site" in metadata

        sent = await pump_media(call, Track.INBOUND, 10)
        got = await rec1.receive(10)
        key = next(c.key for c in offer.media[0].cryptos if c.tag == tag)
        rx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND,
                            srtp_profile=POLICIES[suite]))
        clear = [rx.unprotect(p) for p, _ in got]
        assert len(clear) == 10 and [p[12:] for p in clear] == [p[12:] for p in sent]

        await links.stop(SIPREC_SID)
        assert events.kinds() == ["started", "stopped"]
        assert await srs.wait() == 0, srs.messages()
        # A parameter never replaces a static (or credentials) header of the same name.
        assert invite.headers.get_all("X-Tenant") == [TENANT]
        # Static headers on every request; parameter headers on the INVITE only.
        for method in ("INVITE", "ACK", "BYE"):
            sent_request = tap.sent(method)[0]
            assert sent_request.headers.get("X-Tenant") == TENANT, method
            assert (sent_request.headers.get("X-queue") == "sales") == (method == "INVITE")
        await links.close(1.0)
        call.close()

    run(main())


def test_parameters_only_as_headers_and_plain_rtp_avp(
    engine: Engine, recorders: Callable[..., Recorder], sipp: Callable[..., Sipp]
) -> None:
    rec1, rec2 = recorders(), recorders()
    checks = ["X-P-Agent%20Name: Zo%C3%AB M%C3%BCller", "m=audio [0-9]+ RTP/AVP 0"]
    srs = sipp("srs_profile", keys=_answer(rec1, rec2, None, None), fill=_checks(checks))
    table = {"parameters_as": "headers", "parameter_header_prefix": "X-P-",
             "transport_profile": "RTP/AVP", "session_expires": 0, "keepalive_interval": 1}

    async def main() -> None:
        events, tap = EventLog(), Wiretap()
        links = await open_links(events, tap)
        call = engine.add_call("CA" + secrets.token_hex(16), ingress=False)
        await links.start(call, _request(f"{srs.uri};transport=udp", table, False))
        await events.wait_for("started")
        invite = tap.sent("INVITE")[0]  # UDP: a retransmission may follow
        assert b"a=crypto" not in invite.body
        assert invite.headers.get("Session-Expires") is None  # session_expires = 0: none
        # No session timer: in-dialog OPTIONS at the profile's interval (the links' is 30 s).
        await eventually(lambda: bool(tap.sent("OPTIONS")), timeout=3.0)
        assert parse_metadata(metadata_of(invite)).custom == {}  # headers only
        sent = await pump_media(call, Track.OUTBOUND, 5)
        got = await rec2.receive(5)
        # Plain RTP: the payloads bit for bit (the fork has its own SSRC and sequence).
        assert [p[12:] for p, _ in got] == [p[12:] for p in sent]
        assert all(p[1] & 0x7F == 0 for p, _ in got)
        await links.stop(SIPREC_SID)
        assert await srs.wait() == 0, srs.messages()
        await links.close(1.0)
        call.close()

    run(main())


def test_a_check_that_does_not_match_fails_the_scenario(
    engine: Engine, recorders: Callable[..., Recorder], sipp: Callable[..., Sipp]
) -> None:
    """The header checks above can fail: without the profile, sipp refuses the INVITE."""
    rec1, rec2 = recorders(), recorders()
    srs = sipp("srs_profile", keys=_answer(rec1, rec2, None, None),
               fill=_checks([f"X-Tenant: {TENANT}"]), timeout=3.0)

    async def main() -> None:
        events = EventLog()
        links = await open_links(events, setup_timeout=2.0)
        call = engine.add_call("CA" + secrets.token_hex(16), ingress=False)
        await links.start(call, _request(f"{srs.uri};transport=udp", {}, False))
        assert await srs.wait() != 0
        await links.stop(SIPREC_SID)
        await links.close(1.0)
        call.close()

    run(main())


def test_profile_setup_timeout_cancels_and_tries_the_standby(
    engine: Engine, recorders: Callable[..., Recorder], sipp: Callable[..., Sipp]
) -> None:
    """setup_timeout from the profile (1 s) wins over the links' default (60 s)."""
    rec1, rec2 = recorders(), recorders()
    silent = sipp("srs_ringing")
    standby = sipp("srs_answer", keys=_answer(rec1, rec2, None, None))

    async def main() -> None:
        events, tap = EventLog(), Wiretap()
        links = await open_links(events, tap, setup_timeout=60.0)
        call = engine.add_call("CA" + secrets.token_hex(16), ingress=False)
        request = _request(f"{silent.uri};transport=udp", {"setup_timeout": 1}, False)
        request = dataclasses.replace(request, connector=dataclasses.replace(
            request.connector, standby_srs=(f"{standby.uri};transport=udp",)))
        started = asyncio.get_running_loop().time()
        await links.start(call, request)
        await events.wait_for("started", timeout=5.0)
        assert asyncio.get_running_loop().time() - started < 3.0
        assert tap.sent("CANCEL"), "the ringing INVITE was not cancelled"
        await links.stop(SIPREC_SID)
        assert await standby.wait() == 0, standby.messages()
        await links.close(1.0)
        call.close()

    run(main())
