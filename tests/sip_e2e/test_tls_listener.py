"""Our SIP TLS listener: the Contact of a TLS dialog names a port that speaks TLS, and a
recorder that opens its own TLS connection there gets its in-dialog OPTIONS, re-INVITE and
BYE answered (a plain Python TLS client, and the reference recorder dialling our Contact)."""

from __future__ import annotations

import asyncio
import secrets
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mediafork.engine import Engine, Track
from mediafork.sip.message import Request, Response, StreamFramer
from mediafork.sip.uri import SipUri
from mediafork.srs.server import RecorderConfig, ReferenceRecorder
from mediafork.tlsutil import self_signed

from .harness import (
    SIPREC_SID,
    EventLog,
    Recorder,
    Wiretap,
    eventually,
    open_links,
    own_port_block,
    pump_media,
    run,
    start_request,
)
from .minisrs import MiniSrs
from .minisrs import self_signed as srs_self_signed


@pytest.fixture
def engine() -> Iterator[Engine]:
    """An engine on a port block of its own (a benchmark may hold the shared one)."""
    e = Engine(port_range=own_port_block())
    yield e
    e.close()


def _contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext, ssl.SSLContext, Path]:
    """(our server context, a recorder's client context trusting us, the SRS's server
    context, the SRS's certificate)."""
    cert, key = self_signed(tmp_path / "ours", "sip")
    ours = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ours.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))  # verifies us, name included
    srs_cert, srs_key = srs_self_signed(tmp_path / "srs")
    srs = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    srs.load_cert_chain(srs_cert, srs_key)
    return ours, client, srs, srs_cert


class _Peer:
    """A recorder's own TLS connection to our Contact: sends requests, reads responses."""

    def send(self, text: str, body: bytes = b"") -> None:
        head = text.replace("\n", "\r\n") + f"Content-Length: {len(body)}\r\n\r\n"
        self.writer.write(head.encode() + body)

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.framer = StreamFramer()
        self.pending: list[Response] = []
        port = writer.get_extra_info("sockname")[1]
        self.via = f"SIP/2.0/TLS 127.0.0.1:{port}"

    async def request(self, text: str, body: bytes = b"") -> Response:
        self.send(text, body)
        while True:
            final = [r for r in self.pending if r.status >= 200]
            if final:
                self.pending.clear()
                return final[0]
            data = await asyncio.wait_for(self.reader.read(65536), 5)
            assert data, "mediafork closed the connection"
            self.pending += [m for m in self.framer.feed(data) if isinstance(m, Response)]


def _in_dialog(invite: Request, contact: str, via: str, method: str, cseq: int,
               extra: str = "") -> str:
    ours = invite.headers.get("From")
    assert ours is not None
    return (f"{method} {contact} SIP/2.0\n"
            f"Via: {via};branch=z9hG4bK-{secrets.token_hex(6)}\n"
            f"From: <sip:srs@127.0.0.1>;tag=srs\nTo: {ours}\n"
            f"Call-ID: {invite.call_id}\nCSeq: {cseq} {method}\nMax-Forwards: 70\n{extra}")


def test_a_recorder_opens_its_own_tls_connection_to_our_contact(
    engine: Engine, recorders: Callable[..., Recorder], tmp_path: Path
) -> None:
    rec1, rec2, rec3 = recorders(), recorders(), recorders()
    ours, client, srs_ctx, srs_cert = _contexts(tmp_path)

    async def main() -> None:
        srs = await MiniSrs(transport="tls", tls=srs_ctx,
                            media=[("127.0.0.1", rec1.port), ("127.0.0.1", rec2.port)]).start()
        events, tap = EventLog(), Wiretap()
        links = await open_links(events, tap, tls_ca_file=str(srs_cert),
                                 tls_server_context=ours)
        call = engine.add_call("CA" + secrets.token_hex(16), ingress=False)
        await links.start(call, start_request(f"sip:srs@127.0.0.1:{srs.port};transport=tls"))
        await events.wait_for("started")
        (invite,) = tap.sent_once("INVITE")
        contact = SipUri.parse((invite.headers.get("Contact") or "").split("<")[1].split(">")[0])
        tls_port = links.tls_port("default")
        assert contact.transport == "tls" and contact.port == tls_port
        assert tls_port != links.sip_port("default")
        assert invite.top_via.port == tls_port

        reader, writer = await asyncio.open_connection(
            contact.host, contact.port, ssl=client, server_hostname="127.0.0.1")
        peer = _Peer(reader, writer)
        target = str(contact)
        options = await peer.request(_in_dialog(invite, target, peer.via, "OPTIONS", 7))
        assert options.status == 200 and "INVITE" in (options.headers.get("Allow") or "")

        # re-INVITE: stream 1 moves to rec3; the answer comes back on this connection.
        sdp = ("v=0\r\no=srs 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
               f"m=audio {rec3.port} RTP/AVP 0\r\na=label:1\r\na=recvonly\r\n"
               f"m=audio {rec2.port} RTP/AVP 0\r\na=label:2\r\na=recvonly\r\n").encode()
        ok = await peer.request(_in_dialog(
            invite, target, peer.via, "INVITE", 8,
            f"Contact: <sip:srs@127.0.0.1:{srs.port};transport=tls>\n"
            "Content-Type: application/sdp\n"), sdp)
        assert ok.status == 200 and b"m=audio" in ok.body
        peer.send(_in_dialog(invite, target, peer.via, "ACK", 8))
        rec1.drain()
        sent = await pump_media(call, Track.INBOUND, 5, start_seq=100)
        got = await rec3.receive(5)
        assert [p[12:] for p, _ in got] == [p[12:] for p in sent]

        bye = await peer.request(_in_dialog(invite, target, peer.via, "BYE", 9))
        assert bye.status == 200
        stopped = await events.wait_for("stopped")
        assert stopped.by_remote
        # None of it went to the SRS's own listener.
        assert [m.method for _, m in srs.received if isinstance(m, Request)] == [
            "INVITE", "ACK"]
        writer.close()
        await links.close(1.0)
        await srs.close()

    run(main())


def test_without_a_tls_listener_the_contact_names_the_tcp_one(
    engine: Engine, recorders: Callable[..., Recorder], tmp_path: Path
) -> None:
    rec1, rec2 = recorders(), recorders()
    _, _, srs_ctx, srs_cert = _contexts(tmp_path)

    async def main() -> None:
        srs = await MiniSrs(transport="tls", tls=srs_ctx,
                            media=[("127.0.0.1", rec1.port), ("127.0.0.1", rec2.port)]).start()
        events, tap = EventLog(), Wiretap()
        links = await open_links(events, tap, tls_ca_file=str(srs_cert))
        assert links.tls_port("default") is None
        call = engine.add_call("CA" + secrets.token_hex(16), ingress=False)
        await links.start(call, start_request(f"sip:srs@127.0.0.1:{srs.port};transport=tls"))
        await events.wait_for("started")
        (invite,) = tap.sent_once("INVITE")
        contact = invite.headers.get("Contact") or ""
        assert f":{links.sip_port('default')};transport=tcp>" in contact
        await links.stop(SIPREC_SID)
        await links.close(1.0)
        await srs.close()

    run(main())


def test_the_reference_recorder_dials_our_contact_for_reinvite_and_bye(
    engine: Engine, recorders: Callable[..., Recorder], tmp_path: Path
) -> None:
    ours, _, _, _ = _contexts(tmp_path)
    cert, key = srs_self_signed(tmp_path / "ref")

    async def main() -> None:
        recorder = ReferenceRecorder(RecorderConfig(
            port=0, tcp=True, tls_cert=str(cert), tls_key=str(key), out_dir=tmp_path / "out",
            media_ports=own_port_block(), dial_contact=True, reinvite_after=0.2,
            hangup_after=0.8))
        await recorder.start()
        events = EventLog()
        links = await open_links(events, tls_ca_file=str(cert), tls_server_context=ours)
        call = engine.add_call("CA" + secrets.token_hex(16), ingress=False)
        await links.start(call, start_request(recorder.uri("tls")))
        await events.wait_for("started")
        stopped = await events.wait_for("stopped", timeout=5.0)
        assert stopped.by_remote
        # The re-INVITE and the BYE went over the connection the recorder opened to us.
        assert recorder.dialled == 1
        (session,) = recorder.sessions
        await eventually(lambda: session.bye_status == 200)
        assert session.srs_reinvites == 1 and not session.warnings
        await links.close(1.0)
        await recorder.stop()

    run(main())
