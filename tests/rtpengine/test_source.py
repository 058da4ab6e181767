"""The rtpengine media source against the real rtpengine: a two-leg call relayed by it, each
party sending its own tone, mediafork attached by reference, SRTP forks decrypted with
pylibsrtp; and every failure the source reports."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import numpy as np
import pytest
from pylibsrtp import Policy, Session

from mediafork.engine import Engine, SrtpKey, Track, is_rtcp
from mediafork.mediasource import (
    CallGone,
    NgBadReply,
    NgErrorReply,
    NgTimeout,
    SourceRestarted,
    SubscriptionLost,
    UnknownCall,
    UnknownTag,
)
from mediafork.mediasource.ng import NgTiming
from mediafork.mediasource.rtpengine import RtpengineEndpoint, RtpengineSource
from mediafork.recording.g711 import ulaw_decode

from .conftest import run
from .harness import TwoLegCall, free_udp_port, ng_request

A_HZ, B_HZ = 440.0, 1250.0  # the caller's (inbound) and the callee's (outbound) tones
FAST = NgTiming(timeout=1.0, retransmit=0.2, max_interval=0.4)


@pytest.fixture
def engine() -> Iterator[Engine]:
    e = Engine(port_range=(28000, 28999))
    yield e
    e.close()


@pytest.fixture
def call(rtpengine) -> Iterator[TwoLegCall]:
    c = TwoLegCall(rtpengine.ng, f"rtpe-{time.monotonic_ns()}@127.0.0.1")
    yield c
    c.close()


@pytest.fixture
def sinks() -> Iterator[dict[Track, socket.socket]]:
    out = {}
    for track in Track:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        out[track] = s
    yield out
    for s in out.values():
        s.close()


def drain(sock: socket.socket, seconds: float) -> list[bytes]:
    """Everything that arrives on ``sock`` for ``seconds`` (RTP only)."""
    out = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            packet = sock.recv(4096)
        except TimeoutError:
            break
        if not is_rtcp(packet):
            out.append(packet)
    return out


def peak_hz(packets: list[bytes], key: SrtpKey) -> float:
    rx = Session(Policy(key=key.master, ssrc_type=Policy.SSRC_ANY_INBOUND,
                        srtp_profile=key.profile.pylibsrtp_profile))
    audio = np.concatenate([ulaw_decode(rx.unprotect(p)[12:]) for p in packets])
    spectrum = np.abs(np.fft.rfft(audio.astype(np.float64) * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / 8000)[int(np.argmax(spectrum))])


def our_tags(ng: tuple[str, int], call_id: str) -> set[str]:
    """Our participants on rtpengine that still subscribe to someone (an unsubscribed
    participant stays listed, with no subscriptions)."""
    reply = ng_request(ng, {"command": "query", "call-id": call_id})
    return {tag for tag, info in reply.get("tags", {}).items()
            if tag.startswith("mediafork-") and info.get("subscriptions")}


def test_each_track_carries_its_party_and_detach_stops_the_flow(rtpengine, call, engine, sinks):
    async def scenario() -> None:
        endpoint = await RtpengineEndpoint.connect("rtpengine1", rtpengine.ng, timing=FAST)
        try:
            source = RtpengineSource(endpoint, call.call_id, "ta", "tb")
            media = await source.probe()
            assert (media.inbound.codec.name, media.inbound.codec.payload_type) == ("PCMU", 0)
            assert media.dtmf_payload_type == 101 and media.clock_rate == 8000
            assert not source.attached and our_tags(rtpengine.ng, call.call_id) == set()

            mf_call = engine.add_call("CA" + "1" * 32, clock_rate=media.clock_rate,
                                      dtmf_payload_type=media.dtmf_payload_type)
            keys = {t: SrtpKey.generate() for t in Track}
            for t in Track:
                mf_call.add_fork(t, key=keys[t], destination=sinks[t].getsockname())
            call.start_tones(A_HZ, B_HZ, a_dtmf_every=10)
            attached = await source.attach(mf_call.ingress)
            assert source.attached and attached.outbound.codec.name == "PCMU"
            # rtpengine sends each stream from the port its SDP names (symmetric RTP), so
            # the ingress can be locked to it.
            for t in Track:
                mf_call.expect_source(t, *attached.track(t).source)
            await source.check()

            got = {t: drain(sinks[t], 1.2) for t in Track}
            for t in Track:
                assert len(got[t]) >= 30, (t, len(got[t]))
            assert abs(peak_hz(got[Track.INBOUND], keys[Track.INBOUND]) - A_HZ) < 15
            assert abs(peak_hz(got[Track.OUTBOUND], keys[Track.OUTBOUND]) - B_HZ) < 15
            counters = mf_call.counters()
            assert counters["inbound"]["source_rejected"] == 0
            # The telephone-event type learned from rtpengine's offer is the one filtered.
            assert counters["inbound"]["filtered_dtmf"] >= 3
            assert counters["outbound"]["filtered_dtmf"] == 0

            await source.detach()
            assert not source.attached and our_tags(rtpengine.ng, call.call_id) == set()
            for t in Track:
                drain(sinks[t], 0.15)  # what was in flight
            before = {t: mf_call.counters()[t.label]["received"] for t in Track}
            time.sleep(0.6)  # the parties keep talking
            after = {t: mf_call.counters()[t.label]["received"] for t in Track}
            assert after == before, "rtpengine still sends after unsubscribe"
            assert all(drain(sinks[t], 0.05) == [] for t in Track)
        finally:
            call.stop_tones()
            endpoint.close()

    run(scenario())


def test_an_srtp_caller_reaches_mediafork_as_plain_rtp(rtpengine, engine, sinks):
    """The caller talks SRTP to rtpengine; mediafork's subscription asks for RTP/AVP, so its
    ingress gets plain RTP (decrypted by rtpengine) and the fork carries the caller's tone."""
    call = TwoLegCall(rtpengine.ng, "srtp-caller", caller_srtp=True)

    async def scenario() -> None:
        endpoint = await RtpengineEndpoint.connect("rtpengine1", rtpengine.ng, timing=FAST)
        try:
            source = RtpengineSource(endpoint, call.call_id, "ta", "tb")
            mf_call = engine.add_call("CA" + "2" * 32)
            key = SrtpKey.generate()
            mf_call.add_fork(Track.INBOUND, key=key,
                             destination=sinks[Track.INBOUND].getsockname())
            call.start_tones(A_HZ, B_HZ)
            await source.attach(mf_call.ingress)
            got = drain(sinks[Track.INBOUND], 1.0)
            assert len(got) >= 25
            assert abs(peak_hz(got, key) - A_HZ) < 15
            assert mf_call.counters()["inbound"]["malformed"] == 0
            await source.detach()
        finally:
            call.stop_tones()
            endpoint.close()

    try:
        run(scenario())
    finally:
        call.close()


def test_rtpengine_not_running_times_out(tmp_path):
    async def scenario() -> None:
        endpoint = await RtpengineEndpoint.connect("down", ("127.0.0.1", free_udp_port()),
                                                   timing=FAST)
        try:
            source = RtpengineSource(endpoint, "call", "ta", "tb")
            started = time.monotonic()
            with pytest.raises(NgTimeout) as caught:
                await source.probe()
            assert 0.9 < time.monotonic() - started < 2.0
            assert caught.value.code == 900060 and caught.value.http_status == 503
            assert endpoint.client.protocol_counters["retransmits"] >= 2
            assert endpoint.client.outstanding == 0
        finally:
            endpoint.close()

    run(scenario())


def test_unknown_call_id(rtpengine):
    async def scenario() -> None:
        endpoint = await RtpengineEndpoint.connect("rtpengine1", rtpengine.ng, timing=FAST)
        try:
            with pytest.raises(UnknownCall) as caught:
                await RtpengineSource(endpoint, "no-such-call", "ta", "tb").probe()
            assert caught.value.code == 900063 and "Unknown call" in caught.value.reason
        finally:
            endpoint.close()

    run(scenario())


def test_unknown_tag_leaves_no_subscription(rtpengine, call):
    async def scenario() -> None:
        endpoint = await RtpengineEndpoint.connect("rtpengine1", rtpengine.ng, timing=FAST)
        try:
            source = RtpengineSource(endpoint, call.call_id, "ta", "no-such-tag")
            with pytest.raises(UnknownTag) as caught:
                await source.probe()
            assert caught.value.code == 900064
            with pytest.raises(UnknownTag):
                await source.attach({Track.INBOUND: ("127.0.0.1", 9),
                                     Track.OUTBOUND: ("127.0.0.1", 11)})
            assert not source.attached
            assert our_tags(rtpengine.ng, call.call_id) == set()  # the inbound one was undone
        finally:
            endpoint.close()

    run(scenario())


def test_error_reply_out_of_ports(rtpengine_factory):
    """Four ports are what the two legs take: rtpengine cannot open a subscription and
    says so in an error reply."""
    daemon = rtpengine_factory(ports=4)
    call = TwoLegCall(daemon.ng, "out-of-ports")

    async def scenario() -> None:
        endpoint = await RtpengineEndpoint.connect("small", daemon.ng, timing=FAST)
        try:
            with pytest.raises(NgErrorReply) as caught:
                await RtpengineSource(endpoint, call.call_id, "ta", "tb").probe()
            error = caught.value
            assert type(error) is NgErrorReply and error.code == 900061
            assert error.reason == "Failed to request subscription"
            with pytest.raises(NgErrorReply, match="Unrecognized command"):
                await endpoint.client.request({"command": "no such command"})
        finally:
            endpoint.close()

    try:
        run(scenario())
    finally:
        call.close()


def test_call_deleted_on_rtpengine_is_detected(rtpengine, call):
    async def scenario() -> None:
        endpoint = await RtpengineEndpoint.connect("rtpengine1", rtpengine.ng, timing=FAST)
        try:
            source = RtpengineSource(endpoint, call.call_id, "ta", "tb")
            await source.attach({Track.INBOUND: ("127.0.0.1", 9),
                                 Track.OUTBOUND: ("127.0.0.1", 11)})
            await source.check()
            assert call.delete()["result"] == "ok"
            with pytest.raises(CallGone) as caught:
                await source.check()
            assert caught.value.code == 900066
            await source.detach()  # nothing left on rtpengine: still returns
        finally:
            endpoint.close()

    run(scenario())


def test_lost_subscription_is_detected(rtpengine, call):
    async def scenario() -> None:
        endpoint = await RtpengineEndpoint.connect("rtpengine1", rtpengine.ng, timing=FAST)
        try:
            source = RtpengineSource(endpoint, call.call_id, "ta", "tb")
            await source.attach({Track.INBOUND: ("127.0.0.1", 9),
                                 Track.OUTBOUND: ("127.0.0.1", 11)})
            ng_request(rtpengine.ng, {"command": "unsubscribe", "call-id": call.call_id,
                                      "to-tag": source.subscription_tags[Track.OUTBOUND]})
            with pytest.raises(SubscriptionLost) as caught:
                await source.check()
            assert caught.value.code == 900067 and "outbound" in str(caught.value)
        finally:
            endpoint.close()

    run(scenario())


def test_restarted_rtpengine_is_detected(rtpengine, call):
    async def scenario() -> None:
        endpoint = await RtpengineEndpoint.connect("rtpengine1", rtpengine.ng, timing=FAST)
        try:
            source = RtpengineSource(endpoint, call.call_id, "ta", "tb")
            await source.attach({Track.INBOUND: ("127.0.0.1", 9),
                                 Track.OUTBOUND: ("127.0.0.1", 11)})
            assert not await endpoint.heartbeat()
            rtpengine.stop()
            with pytest.raises(NgTimeout):  # down: no answer
                await source.check()
            # A start time that differs from the first by more than the tolerance.
            time.sleep(max(0.0, rtpengine.started_at + 2.2 - time.time()))
            rtpengine.start()
            with pytest.raises(SourceRestarted) as caught:
                await source.check()
            assert caught.value.code == 900065 and not source.attached
            assert not await endpoint.heartbeat()  # the new start is now the known one
        finally:
            endpoint.close()

    run(scenario())


def test_call_timed_out_on_rtpengine_is_detected(rtpengine_factory):
    """No media for rtpengine's --timeout: rtpengine drops the call by itself."""
    daemon = rtpengine_factory(extra=("--timeout=1", "--silent-timeout=1",
                                      "--final-timeout=3"))
    call = TwoLegCall(daemon.ng, "idle-call")

    async def scenario() -> None:
        endpoint = await RtpengineEndpoint.connect("rtpengine1", daemon.ng, timing=FAST)
        try:
            source = RtpengineSource(endpoint, call.call_id, "ta", "tb")
            await source.attach({Track.INBOUND: ("127.0.0.1", 9),
                                 Track.OUTBOUND: ("127.0.0.1", 11)})
            deadline = time.monotonic() + 8
            while True:
                try:
                    await source.check()
                except CallGone as exc:
                    assert exc.code == 900066
                    break
                assert time.monotonic() < deadline, "rtpengine never timed the call out"
                await asyncio.sleep(0.5)
        finally:
            endpoint.close()

    try:
        run(scenario(), timeout=15)
    finally:
        call.close()


def test_delete_with_a_delay_is_seen_once_the_delay_has_passed(rtpengine, call):
    async def scenario() -> None:
        endpoint = await RtpengineEndpoint.connect("rtpengine1", rtpengine.ng, timing=FAST)
        try:
            source = RtpengineSource(endpoint, call.call_id, "ta", "tb")
            await source.attach({Track.INBOUND: ("127.0.0.1", 9),
                                 Track.OUTBOUND: ("127.0.0.1", 11)})
            reply = ng_request(rtpengine.ng, {"command": "delete", "call-id": call.call_id,
                                              "from-tag": "ta", "delete delay": 2})
            assert reply["result"] == "ok"
            await source.check()  # still there during the delay
            deadline = time.monotonic() + 6
            with pytest.raises(CallGone):
                while time.monotonic() < deadline:
                    await source.check()
                    await asyncio.sleep(0.25)
        finally:
            endpoint.close()

    run(scenario())


def test_ok_without_sdp_is_a_bad_reply(rtpengine, call):
    """Naming a subscription's tag as a party: the real rtpengine answers ok with no SDP."""
    ng_request(rtpengine.ng, {"command": "subscribe request", "call-id": call.call_id,
                              "from-tag": "ta", "to-tag": "someone-elses-subscription"})

    async def scenario() -> None:
        endpoint = await RtpengineEndpoint.connect("rtpengine1", rtpengine.ng, timing=FAST)
        try:
            source = RtpengineSource(endpoint, call.call_id, "someone-elses-subscription", "tb")
            with pytest.raises(NgBadReply) as caught:
                await source.probe()
            assert caught.value.code == 900062 and "no SDP" in str(caught.value)
        finally:
            endpoint.close()

    run(scenario())
