"""Interoperability with mediafork's own SRC: the sans-I/O RecordingSession against the recorder.

The asyncio transport of the SRC is not used here (it is tested on its own); a few lines below
move the session's datagrams over a real UDP socket, so every SIP message crosses the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import struct
from typing import Any

from pylibsrtp import Policy, Session

from mediafork.recording.g711 import ulaw_encode
from mediafork.sip import (
    Codec,
    Ended,
    Established,
    ForkedStream,
    MediaUpdated,
    Participant,
    Paused,
    RecordingSession,
    SessionConfig,
    parse_message,
)
from mediafork.srs import ReferenceRecorder

from .srcclient import tone


class _Wire(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.inbox: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.inbox.put_nowait((data, addr))


class Driver:
    """Runs one RecordingSession over a UDP socket and collects its events."""

    def __init__(self, session: RecordingSession, wire: _Wire) -> None:
        self.session = session
        self.wire = wire
        self.events: list[Any] = []
        self._task = asyncio.create_task(self._run())

    def flush(self) -> None:
        for out in self.session.messages_to_send():
            self.wire.transport.sendto(out.message.to_bytes(),
                                       (out.destination.host, out.destination.port))
        while (event := self.session.next_event()) is not None:
            self.events.append(event)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            deadline = self.session.get_timer()
            timeout = 0.05 if deadline is None else max(0.0, min(0.05, deadline - loop.time()))
            with contextlib.suppress(asyncio.TimeoutError):
                data, addr = await asyncio.wait_for(self.wire.inbox.get(), timeout)
                msg = parse_message(data)
                if msg.call_id == self.session.call_id:
                    self.session.handle_message(msg, loop.time(), source=(addr[0], addr[1]))
            self.session.handle_timer(loop.time())
            self.flush()

    async def wait_event(self, kind: type, timeout: float = 5.0) -> Any:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for event in self.events:
                if isinstance(event, kind):
                    return event
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"no {kind.__name__}; got {self.events}")
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.wire.transport.close()


async def _src(recorder: ReferenceRecorder, **options: Any) -> tuple[Driver, bytes]:
    loop = asyncio.get_running_loop()
    _, wire = await loop.create_datagram_endpoint(_Wire, local_addr=("127.0.0.1", 0))
    port = wire.transport.get_extra_info("sockname")[1]
    key = secrets.token_bytes(30)
    codec = Codec("PCMU", 0, 8000)
    config = SessionConfig(
        srs_uri=recorder.uri(),
        local_address="127.0.0.1",
        local_port=port,
        streams=(ForkedStream("inbound", "inbound", 41000, codec, key_80=key),
                 ForkedStream("outbound", "outbound", 41002, codec, key_80=key)),
        call_id="CAfeedface",
        caller=Participant("sip:+15551230000@pbx.example", "Caller"),
        callee=Participant("sip:+15559870000@pbx.example"),
        custom_parameters=(("CustomerId", "42"),),
        session_expires=None,
        **options,
    )
    session = RecordingSession(config)
    driver = Driver(session, wire)
    session.start(loop.time())
    driver.flush()
    return driver, key


def test_mediafork_session_is_recorded_paused_and_stopped(run, tmp_path):
    async def scenario() -> None:
        recorder = await ReferenceRecorder(
            port=0, out_dir=tmp_path, credentials_header=("X-Auth-Token", "tok"),
            require_auth=("mf", "pw"),
        ).start()
        driver, key = await _src(recorder, credentials_header="X-Auth-Token",
                                 credentials_value="tok", digest_username="mf",
                                 digest_password="pw")
        loop = asyncio.get_running_loop()
        try:
            established = await driver.wait_event(Established)
            assert [s.label for s in established.streams] == ["inbound", "outbound"]
            assert all(s.suite == "AES_CM_128_HMAC_SHA1_80" for s in established.streams)
            protect = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND,
                                     srtp_profile=Policy.SRTP_PROFILE_AES128_CM_SHA1_80))
            audio = ulaw_encode(tone(440.0, 0.5))
            for n, dest in enumerate(established.streams):
                for i in range(25):
                    rtp = struct.pack("!BBHII", 0x80, 0, i, 160 * i, 0xABC0 + n)
                    driver.wire.transport.sendto(
                        protect.protect(rtp + audio[160 * i:160 * (i + 1)]),
                        (dest.address, dest.port))
            session = recorder.sessions[-1]
            await recorder.wait_for(lambda r: session.summary()["totals"]["packets"] == 50)

            driver.session.pause(loop.time())
            driver.flush()
            await driver.wait_event(Paused)
            assert all(s["paused"] for s in session.summary()["streams"])

            driver.session.stop(loop.time())
            driver.flush()
            ended = await driver.wait_event(Ended)
            assert ended.by_remote is False
            await recorder.wait_for(lambda r: session.state == "ended")
        finally:
            await driver.close()
            await recorder.stop()
        summary = session.summary()
        assert summary["ended_by"] == "src" and summary["warnings"] == []
        assert summary["parameters"] == {"CustomerId": "42"}
        assert summary["metadata"]["sip_session_ids"] == ["CAfeedface"]
        assert summary["reinvites"] == 1
        caller = next(p for p in summary["participants"]
                      if "sip:+15551230000@pbx.example" in p["aors"])
        assert caller["send"] == ["inbound"] and caller["recv"] == ["outbound"]
        assert [s["packets"] for s in summary["streams"]] == [25, 25]

    run(scenario())


def test_recorder_hangup_ends_mediafork_session(run, tmp_path):
    async def scenario() -> None:
        recorder = await ReferenceRecorder(port=0, out_dir=tmp_path, hangup_after=0.2).start()
        driver, _ = await _src(recorder)
        try:
            await driver.wait_event(Established)
            ended = await driver.wait_event(Ended)
            assert ended.by_remote is True
            session = recorder.sessions[-1]
            await recorder.wait_for(lambda r: session.bye_status == 200)
            assert session.ended_by == "srs"
        finally:
            await driver.close()
            await recorder.stop()

    run(scenario())


def test_recorder_error_answer_fails_mediafork_session(run, tmp_path):
    from mediafork.sip import Failed

    async def scenario() -> None:
        recorder = await ReferenceRecorder(port=0, out_dir=tmp_path, answer=503).start()
        driver, _ = await _src(recorder)
        try:
            failed = await driver.wait_event(Failed)
            assert failed.status == 503 and failed.phase == "setup"
        finally:
            await driver.close()
            await recorder.stop()

    run(scenario())


def test_recorder_reinvite_moves_mediafork_session_to_new_ports(run, tmp_path):
    async def scenario() -> None:
        recorder = await ReferenceRecorder(port=0, out_dir=tmp_path, reinvite_after=0.1).start()
        driver, key = await _src(recorder)
        protect = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND,
                                 srtp_profile=Policy.SRTP_PROFILE_AES128_CM_SHA1_80))
        audio = ulaw_encode(tone(440.0, 1.0))

        def send(dest: Any, first: int, count: int) -> None:
            for i in range(first, first + count):
                rtp = struct.pack("!BBHII", 0x80, 0, i, 160 * i, 0xABC0)
                driver.wire.transport.sendto(
                    protect.protect(rtp + audio[160 * i:160 * (i + 1)]), (dest.address, dest.port))

        try:
            established = await driver.wait_event(Established)
            session = recorder.sessions[-1]
            old_port = established.streams[0].port
            send(established.streams[0], 0, 25)
            updated = await driver.wait_event(MediaUpdated)
            assert updated.streams[0].port != old_port
            assert updated.streams[0].suite == "AES_CM_128_HMAC_SHA1_80"
            await recorder.wait_for(lambda r: session.srs_reinvites == 1)
            send(updated.streams[0], 25, 25)
            await recorder.wait_for(
                lambda r: session.summary()["streams"][0]["packets"] == 50)
            driver.session.stop(asyncio.get_running_loop().time())
            driver.flush()
            await driver.wait_event(Ended)
            await recorder.wait_for(lambda r: session.state == "ended")
        finally:
            await driver.close()
            await recorder.stop()
        stream = session.summary()["streams"][0]
        assert stream["port"] == updated.streams[0].port
        assert stream["lost"] == 0 and stream["wav_seconds"] == 1.0  # one WAV across the move
        assert session.summary()["warnings"] == []

    run(scenario())
