"""A minimal asyncio SIPREC client for driving the reference recorder in tests.

It builds real SIPREC INVITEs with the project's own SDP/metadata builders (so the recorder is
tested against what mediafork sends), speaks UDP, TCP or TLS, and can send SRTP media and
collect the recorder's receiver reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import ssl
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from pylibsrtp import Policy, Session

from mediafork.recording.g711 import ulaw_encode
from mediafork.sip.headers import Headers
from mediafork.sip.message import (
    BodyPart,
    Message,
    Request,
    Response,
    StreamFramer,
    build_multipart,
    parse_message,
)
from mediafork.sip.metadata import CONTENT_TYPE, MetaParticipant, MetaStream, build_metadata
from mediafork.sip.sdp import Codec, OfferStream, build_offer
from mediafork.sip.transaction import new_branch

PCMU = Codec("PCMU", 0, 8000)
CALLER = "sip:+15551230000@pbx.example"
CALLEE = "sip:+15559870000@pbx.example"


def tone(freq: float, seconds: float, rate: int = 8000, amplitude: float = 8000.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def peak_frequency(samples: np.ndarray, rate: int = 8000) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


class _Udp(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait((data, addr))


@dataclass
class MediaLeg:
    """The SRC side of one offered stream: its sockets, keys and what came back."""

    label: str
    key: bytes | None
    rtp: _Udp
    rtcp: _Udp
    port: int
    answer_port: int | None = None
    answer_key: bytes | None = None
    answer_suite: str | None = None
    ssrc: int = field(default_factory=lambda: secrets.randbits(32))

    async def send_tone(self, address: str, freq: float, packets: int, *, start_seq: int = 1000,
                        start_ts: int = 5000, skip: frozenset[int] = frozenset(),
                        pace: float = 0.0) -> None:
        """Send ``packets`` 20 ms PCMU packets of a tone (SRTP if keyed), skipping indexes."""
        audio = ulaw_encode(tone(freq, packets * 0.02))
        session = (
            Session(Policy(key=self.key, ssrc_type=Policy.SSRC_ANY_OUTBOUND,
                           srtp_profile=Policy.SRTP_PROFILE_AES128_CM_SHA1_80))
            if self.key else None
        )
        assert self.rtp.transport is not None and self.answer_port is not None
        for i in range(packets):
            if i in skip:
                continue
            header = struct.pack("!BBHII", 0x80, 0, (start_seq + i) & 0xFFFF,
                                 (start_ts + 160 * i) & 0xFFFFFFFF, self.ssrc)
            packet = header + audio[160 * i: 160 * (i + 1)]
            if session is not None:
                packet = session.protect(packet)
            self.rtp.transport.sendto(packet, (address, self.answer_port))
            if pace:
                await asyncio.sleep(pace)
            elif i % 10 == 9:
                await asyncio.sleep(0.001)  # let the recorder drain its socket

    def close(self) -> None:
        for proto in (self.rtp, self.rtcp):
            if proto.transport is not None:
                proto.transport.close()


class SrcClient:
    """One SIP connection (UDP socket or TCP/TLS stream) towards the recorder."""

    def __init__(self, transport: str, remote: tuple[str, int],
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.transport = transport.upper()
        self.remote = remote
        self.ssl_context = ssl_context
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.local: tuple[str, int] = ("127.0.0.1", 0)
        self._udp: _Udp | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self.legs: list[MediaLeg] = []
        self.contact_addr: tuple[str, int] | None = None
        """Advertise this Contact instead of the socket's own address."""

    async def open(self) -> SrcClient:
        loop = asyncio.get_running_loop()
        if self.transport == "UDP":
            _, self._udp = await loop.create_datagram_endpoint(_Udp, local_addr=("127.0.0.1", 0))
            assert self._udp.transport is not None
            self.local = self._udp.transport.get_extra_info("sockname")[:2]
            self._reader_task = asyncio.create_task(self._read_udp())
        else:
            reader, self._writer = await asyncio.open_connection(
                *self.remote, ssl=self.ssl_context,
                server_hostname="127.0.0.1" if self.ssl_context else None,
            )
            self.local = self._writer.get_extra_info("sockname")[:2]
            self._reader_task = asyncio.create_task(self._read_stream(reader))
        return self

    async def _read_udp(self) -> None:
        assert self._udp is not None
        while True:
            data, _ = await self._udp.queue.get()
            with contextlib.suppress(Exception):
                self.inbox.put_nowait(parse_message(data))

    async def _read_stream(self, reader: asyncio.StreamReader) -> None:
        framer = StreamFramer()
        while data := await reader.read(65536):
            for msg in framer.feed(data):
                self.inbox.put_nowait(msg)

    def send(self, msg: Message | bytes) -> None:
        data = msg if isinstance(msg, bytes) else msg.to_bytes()
        if self._udp is not None:
            assert self._udp.transport is not None
            self._udp.transport.sendto(data, self.remote)
        else:
            assert self._writer is not None
            self._writer.write(data)

    async def next_message(self, timeout: float = 5.0) -> Message:
        return await asyncio.wait_for(self.inbox.get(), timeout)

    async def final_response(self, timeout: float = 5.0) -> Response:
        while True:
            msg = await self.next_message(timeout)
            if isinstance(msg, Response) and msg.status >= 200:
                return msg

    async def next_request(self, timeout: float = 5.0) -> Request:
        while True:
            msg = await self.next_message(timeout)
            if isinstance(msg, Request):
                return msg

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
        if self._udp is not None and self._udp.transport is not None:
            self._udp.transport.close()
        if self._writer is not None:
            self._writer.close()
        for leg in self.legs:
            leg.close()

    # --- building requests -------------------------------------------------------------------

    def via(self) -> str:
        return f"SIP/2.0/{self.transport} {self.local[0]}:{self.local[1]};branch={new_branch()}"

    def contact(self) -> str:
        host, port = self.contact_addr or self.local
        return f"<sip:src@{host}:{port};transport={self.transport.lower()}>"

    async def add_legs(self, labels: list[str], secure: bool) -> list[OfferStream]:
        """Bind an RTP/RTCP socket pair per label (the offered port) and describe the offer."""
        loop = asyncio.get_running_loop()
        streams = []
        for label in labels:
            for _ in range(50):
                _, rtp = await loop.create_datagram_endpoint(_Udp, local_addr=("127.0.0.1", 0))
                assert rtp.transport is not None
                port = rtp.transport.get_extra_info("sockname")[1]
                try:
                    _, rtcp = await loop.create_datagram_endpoint(
                        _Udp, local_addr=("127.0.0.1", port + 1))
                    break
                except OSError:
                    rtp.transport.close()
            else:  # pragma: no cover - the machine is out of ports
                raise OSError("no RTP/RTCP port pair")
            key = secrets.token_bytes(30) if secure else None
            self.legs.append(MediaLeg(label, key, rtp, rtcp, port))
            streams.append(OfferStream(label, port, PCMU, key_80=key))
        return streams

    def invite(self, request_uri: str, streams: list[OfferStream], *,
               call_id: str | None = None, custom: dict[str, str] | None = None,
               extra: list[tuple[str, str]] | None = None, cseq: int = 1,
               from_tag: str = "src-tag") -> Request:
        sdp = build_offer(streams, "127.0.0.1", 1234, 1)
        seed = secrets.token_hex(4)
        labels = [s.label for s in streams]
        metadata = build_metadata(
            seed=seed, datamode="complete", sip_session_ids=["CA-test"],
            participants=[
                MetaParticipant(CALLER, "Caller", send=tuple(labels[:1]),
                                recv=tuple(labels[1:2])),
                MetaParticipant(CALLEE, None, send=tuple(labels[1:2]), recv=tuple(labels[:1])),
            ],
            streams=[MetaStream(label) for label in labels],
            associate_time=datetime.now(UTC), custom=custom,
        )
        ctype, body = build_multipart([
            BodyPart(Headers([("Content-Type", "application/sdp")]), sdp.to_bytes()),
            BodyPart(Headers([("Content-Type", CONTENT_TYPE),
                              ("Content-Disposition", "recording-session")]), metadata),
        ], "mediafork-boundary")
        headers = Headers()
        headers.add("Via", self.via())
        headers.add("Max-Forwards", "70")
        headers.add("From", f"<sip:src@{self.local[0]}>;tag={from_tag}")
        headers.add("To", f"<{request_uri}>")
        headers.add("Call-ID", call_id or f"{secrets.token_hex(8)}@127.0.0.1")
        headers.add("CSeq", f"{cseq} INVITE")
        headers.add("Contact", f"{self.contact()};+sip.src")
        headers.add("Require", "siprec")
        headers.add("Accept", "application/sdp, application/rs-metadata+xml")
        headers.add("Content-Type", ctype)
        for name, value in extra or []:
            headers.add(name, value)
        return Request("INVITE", request_uri, headers, body)

    def in_dialog(self, method: str, invite: Request, ok: Response, cseq: int,
                  body: bytes = b"", content_type: str | None = None,
                  branch: str | None = None) -> Request:
        headers = Headers()
        via = self.via() if branch is None else self.via().rsplit(";branch=", 1)[0] + \
            f";branch={branch}"
        headers.add("Via", via)
        headers.add("Max-Forwards", "70")
        headers.add("From", invite.headers.get("From") or "")
        headers.add("To", ok.headers.get("To") or "")
        headers.add("Call-ID", invite.call_id)
        headers.add("CSeq", f"{cseq} {method}")
        headers.add("Contact", f"{self.contact()};+sip.src")
        if content_type:
            headers.add("Content-Type", content_type)
        target = str(ok.contacts[0].uri) if ok.contacts else invite.uri
        return Request(method, target, headers, body)

    def ack(self, invite: Request, ok: Response) -> Request:
        return self.in_dialog("ACK", invite, ok, invite.cseq[0])

    def answer_to(self, request: Request, status: int = 200) -> Response:
        from mediafork.sip.dialog import build_response

        return build_response(request, status)


def read_answer_into_legs(client: SrcClient, ok: Response) -> None:
    """Note the recorder's answered ports and keys on each leg (by m-line position)."""
    from mediafork.sip.sdp import SessionDescription

    sdp = SessionDescription.parse(ok.body)
    for leg, media in zip(client.legs, sdp.media, strict=False):
        leg.answer_port = media.port or None
        cryptos = media.cryptos
        if cryptos:
            leg.answer_key, leg.answer_suite = cryptos[0].key, cryptos[0].suite
