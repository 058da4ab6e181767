"""A small SRS in Python for what sipp cannot do here: TLS (the Debian sipp is built
without it), seeing the source address of every SIP message, and answering OPTIONS
with a delay that depends on who asks (edge selection by round-trip)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mediafork import tlsutil
from mediafork.sip.dialog import build_response
from mediafork.sip.message import Message, Request, StreamFramer, parse_message
from mediafork.sip.sdp import KEY_LENGTHS, SessionDescription

from .harness import sdp_of

SRS_KEY = bytes(range(30))


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost / 127.0.0.1 (it is its own CA)."""
    return tlsutil.self_signed(directory, "srs", "127.0.0.1", days=1, extra_hosts=("localhost",))


@dataclass
class MiniSrs:
    """Answers OPTIONS 200, INVITE 200 with an SDP answer to ``media`` (one (ip, port) per
    stream), ACK silently, BYE 200. ``options_delay`` maps a source IP to a delay."""

    ip: str = "127.0.0.1"
    transport: str = "udp"
    media: list[tuple[str, int]] = field(default_factory=list)
    tls: ssl.SSLContext | None = None
    options_delay: dict[str, float] = field(default_factory=dict)
    answer_bye: bool = True
    mute: bool = False
    """Receive (and record) everything, answer nothing: a hung recorder."""
    crypto_index: int = 0
    """Which offered a=crypto line of each stream the answer accepts (the first by default)."""
    invite_delay: float = 0.0
    """Seconds before the 200 to an INVITE (a recorder slow to set up)."""
    demand_header: tuple[str, str] | None = None
    """(name, value) every request must carry; requests without it get no answer at all
    (a recorder behind an SBC that drops foreign traffic)."""
    received: list[tuple[tuple[str, int], Message]] = field(default_factory=list)
    port: int = 0
    _udp: asyncio.DatagramTransport | None = None
    _server: asyncio.AbstractServer | None = None

    @property
    def uri(self) -> str:
        return f"sip:srs@{self.ip}:{self.port}"

    def requests(self, method: str) -> list[tuple[tuple[str, int], Request]]:
        return [
            (src, m) for src, m in self.received if isinstance(m, Request) and m.method == method
        ]

    async def start(self) -> MiniSrs:
        loop = asyncio.get_running_loop()
        if self.transport == "udp":
            srs = self

            class Udp(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                    srs._handle(parse_message(data), addr, lambda b: srs._sendto(b, addr))

            transport, _ = await loop.create_datagram_endpoint(Udp, local_addr=(self.ip, 0))
            self._udp = transport  # type: ignore[assignment]
            self.port = transport.get_extra_info("sockname")[1]
        else:
            self._server = await asyncio.start_server(self._stream, self.ip, 0, ssl=self.tls)
            self.port = self._server.sockets[0].getsockname()[1]
        return self

    def _sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self._udp is not None
        self._udp.sendto(data, addr)

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = StreamFramer()
        peer = writer.get_extra_info("peername")[:2]
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                for message in framer.feed(data):
                    self._handle(message, peer, writer.write)
        writer.close()

    def _handle(self, message: Message, source: tuple[str, int], send: object) -> None:
        self.received.append((source, message))
        if self.mute or not isinstance(message, Request) or message.method == "ACK":
            return
        if self.demand_header and message.headers.get(self.demand_header[0]) != \
                self.demand_header[1]:
            return
        reply = send  # type: ignore[assignment]
        if message.method == "OPTIONS":
            delay = self.options_delay.get(source[0], 0.0)
            response = build_response(message, 200, to_tag="srs").to_bytes()
            asyncio.get_running_loop().call_later(delay, reply, response)  # type: ignore[arg-type]
        elif message.method == "INVITE" and self.invite_delay:
            asyncio.get_running_loop().call_later(self.invite_delay, reply,  # type: ignore[arg-type]
                                                  self._answer(message))
        elif message.method == "INVITE":
            reply(self._answer(message))  # type: ignore[operator]
        elif message.method == "BYE" and not self.answer_bye:
            return
        else:
            reply(build_response(message, 200, to_tag="srs").to_bytes())  # type: ignore[operator]

    def _answer(self, invite: Request) -> bytes:
        offer = sdp_of(invite)
        lines = ["v=0", f"o=srs 1 1 IN IP4 {self.ip}", "s=-", f"c=IN IP4 {self.ip}", "t=0 0"]
        for i, media in enumerate(offer.media):
            address, port = self.media[i] if i < len(self.media) else (self.ip, 0)
            lines.append(f"m=audio {port} {media.proto} {' '.join(media.formats)}")
            lines.append(f"c=IN IP4 {address}")
            lines.append(f"a=label:{media.label}")
            lines.append("a=recvonly")
            for crypto in media.cryptos[self.crypto_index:self.crypto_index + 1]:
                key = base64.b64encode(bytes(range(KEY_LENGTHS.get(crypto.suite, 30)))).decode()
                lines.append(f"a=crypto:{crypto.tag} {crypto.suite} inline:{key}")
        body = ("\r\n".join(lines) + "\r\n").encode()
        SessionDescription.parse(body)
        contact = f"<sip:srs@{self.ip}:{self.port};transport={self.transport}>"
        return build_response(
            invite,
            200,
            to_tag="srs",
            headers=[("Contact", contact), ("Content-Type", "application/sdp")],
            body=body,
        ).to_bytes()

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)


async def mini_srs_on(*sinks: Any, **options: Any) -> MiniSrs:
    """A started MiniSrs whose answer sends each stream to one of ``sinks`` (objects with a
    ``port`` on 127.0.0.1, such as the ``recorders`` fixture's), in stream order."""
    return await MiniSrs(media=[("127.0.0.1", sink.port) for sink in sinks], **options).start()
