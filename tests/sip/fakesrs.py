"""A tiny sans-I/O Session Recording Server for tests, and a wire that connects it to a
RecordingSession through real serialization (every message is turned into bytes and parsed
again), driven by a fake clock."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field

from mediafork.sip.dialog import build_response
from mediafork.sip.digest import DigestVerifier
from mediafork.sip.headers import Headers
from mediafork.sip.message import Message, Request, Response, parse_message, parse_multipart
from mediafork.sip.sdp import SessionDescription
from mediafork.sip.session import RecordingSession

Action = int | tuple[int, dict[str, str]] | None
"""A scripted answer: a status, a status with extra headers, or None (stay silent)."""


@dataclass
class FakeSrs:
    host: str
    port: int = 5060
    invite_script: list[Action] = field(default_factory=lambda: [200])
    reinvite_script: list[Action] = field(default_factory=list)
    session_expires: str | None = None
    allow: str = "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE"
    crypto_tag: int = 1
    media_base: int = 40000
    verifier: DigestVerifier | None = None
    silent_methods: set[str] = field(default_factory=set)
    received: list[Message] = field(default_factory=list)
    to_tag: str = "srs-tag"
    pending_invite: Request | None = None
    src_contact: str = ""
    src_from: str = ""
    call_id: str = ""
    cseq: int = 100
    answered: dict[tuple[str, str], list[Message]] = field(default_factory=dict)

    def requests(self, method: str) -> list[Request]:
        return [m for m in self.received if isinstance(m, Request) and m.method == method]

    def handle(self, msg: Message) -> list[Message]:
        self.received.append(msg)
        if isinstance(msg, Response) or msg.method in self.silent_methods:
            return []
        if msg.method == "ACK":
            return []
        key = (msg.top_via.branch or "", msg.method)
        if key in self.answered:  # a retransmission: repeat what we said
            return self.answered[key]
        out = self._dispatch(msg)
        self.answered[key] = out
        return out

    def _dispatch(self, msg: Request) -> list[Message]:
        if msg.method == "CANCEL":
            out: list[Message] = [build_response(msg, 200)]
            if self.pending_invite is not None:
                out.append(build_response(self.pending_invite, 487, to_tag=self.to_tag))
                self.pending_invite = None
            return out
        if msg.method == "INVITE" and msg.to.tag is None:
            return self._initial_invite(msg)
        if msg.method == "INVITE":
            action = self.reinvite_script.pop(0) if self.reinvite_script else 200
            return self._answer(msg, action)
        if msg.method == "UPDATE":
            headers = []
            if msg.headers.get("Session-Expires"):
                headers.append(("Session-Expires", msg.headers.get("Session-Expires") or ""))
            return [build_response(msg, 200, to_tag=self.to_tag, headers=headers)]
        return [build_response(msg, 200, to_tag=self.to_tag)]

    def _initial_invite(self, msg: Request) -> list[Message]:
        if self.verifier is not None:
            auth = msg.headers.get("Authorization")
            if auth is None or not self.verifier.verify(auth, "INVITE"):
                return [
                    build_response(
                        msg,
                        401,
                        to_tag=self.to_tag,
                        headers=[("WWW-Authenticate", self.verifier.challenge())],
                    )
                ]
        action = self.invite_script.pop(0) if self.invite_script else 200
        self.call_id = msg.call_id
        self.src_from = msg.headers.get("From") or ""
        self.src_contact = str(msg.contacts[0].uri)
        return self._answer(msg, action)

    def _answer(self, msg: Request, action: Action) -> list[Message]:
        if action is None:
            self.pending_invite = msg
            return []
        status, extra = (action, {}) if isinstance(action, int) else action
        if status == 180:
            self.pending_invite = msg
            nxt = self.invite_script.pop(0) if self.invite_script else None
            out: list[Message] = [build_response(msg, 180, to_tag=self.to_tag)]
            return out + (self._answer(msg, nxt) if nxt is not None else [])
        self.pending_invite = None
        headers = list(extra.items())
        body = b""
        if 200 <= status < 300:
            headers += [("Contact", f"<sip:srs@{self.host}:{self.port}>"), ("Allow", self.allow)]
            if self.session_expires:
                headers.append(("Session-Expires", self.session_expires))
                headers.append(("Require", "timer"))
            body = self.answer_sdp(offer_of(msg))
            headers.append(("Content-Type", "application/sdp"))
        return [build_response(msg, status, to_tag=self.to_tag, headers=headers, body=body)]

    def answer_sdp(self, offer: SessionDescription) -> bytes:
        lines = ["v=0", f"o=srs 1 1 IN IP4 {self.host}", "s=-", f"c=IN IP4 {self.host}", "t=0 0"]
        for i, media in enumerate(offer.media):
            lines.append(
                f"m=audio {self.media_base + 2 * i} {media.proto} {' '.join(media.formats)}"
            )
            lines.append(f"a=label:{media.label}")
            lines.append("a=inactive" if media.direction == "inactive" else "a=recvonly")
            for crypto in media.cryptos:
                if crypto.tag == self.crypto_tag:
                    key = base64.b64encode(bytes(30)).decode()
                    lines.append(f"a=crypto:{crypto.tag} {crypto.suite} inline:{key}")
        return ("\r\n".join(lines) + "\r\n").encode()

    # --- requests the SRS originates --------------------------------------------------------

    def request(
        self,
        method: str,
        body: bytes = b"",
        content_type: str | None = None,
        extra: list[tuple[str, str]] | None = None,
    ) -> Request:
        self.cseq += 1
        h = Headers()
        h.add("Via", f"SIP/2.0/UDP {self.host}:{self.port};branch=z9hG4bKsrs{self.cseq}")
        h.add("Max-Forwards", "70")
        h.add("From", f"<sip:srs@{self.host}>;tag={self.to_tag}")
        h.add("To", self.src_from)
        h.add("Call-ID", self.call_id)
        h.add("CSeq", f"{self.cseq} {method}")
        h.add("Contact", f"<sip:srs@{self.host}:{self.port}>")
        for name, value in extra or []:
            h.add(name, value)
        if content_type:
            h.add("Content-Type", content_type)
        return Request(method, self.src_contact, h, body)


def offer_of(msg: Message) -> SessionDescription:
    ctype = msg.content_type
    assert ctype is not None
    if ctype.type == "multipart":
        for part in parse_multipart(msg.body, ctype):
            if part.content_type == "application/sdp":
                return SessionDescription.parse(part.body)
        raise AssertionError("no SDP part")
    return SessionDescription.parse(msg.body)


def metadata_of(msg: Message) -> tuple[str, bytes]:
    ctype = msg.content_type
    assert ctype is not None and ctype.type == "multipart"
    for part in parse_multipart(msg.body, ctype):
        if part.content_type and "rs-metadata" in part.content_type:
            assert part.headers.get("Content-Disposition") == "recording-session"
            return part.content_type, part.body
    raise AssertionError("no metadata part")


@dataclass
class Wire:
    """Carries messages between a RecordingSession and fake SRSes, by destination host."""

    session: RecordingSession
    srses: dict[str, FakeSrs]
    now: float = 0.0
    sent: list[Message] = field(default_factory=list)
    events: list[object] = field(default_factory=list)
    drop: Callable[[Message], bool] = lambda msg: False

    def flush(self) -> None:
        for _ in range(100):
            outgoing = self.session.messages_to_send()
            if not outgoing:
                break
            for item in outgoing:
                msg = parse_message(item.message.to_bytes())
                self.sent.append(msg)
                srs = self.srses.get(item.destination.host)
                if srs is None or self.drop(msg) or srs.port != item.destination.port:
                    continue
                for reply in srs.handle(msg):
                    self.session.handle_message(parse_message(reply.to_bytes()), self.now)
        while (event := self.session.next_event()) is not None:
            self.events.append(event)

    def inject(self, msg: Message) -> None:
        """The SRS sends ``msg`` to the session."""
        self.session.handle_message(
            parse_message(msg.to_bytes()), self.now, (msg.top_via.host, 5060)
        )
        self.flush()

    def advance(self, until: float) -> None:
        """Move the fake clock to ``until``, firing every timer on the way."""
        while (deadline := self.session.get_timer()) is not None and deadline <= until:
            self.now = max(self.now, deadline)
            self.session.handle_timer(self.now)
            self.flush()
        self.now = until
        self.flush()

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]
