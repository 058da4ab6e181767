"""Fuzz targets: each takes raw bytes and either returns or raises a bug.

A target returns when the parser accepted the input (and the accepted value is usable) or
refused it with its *documented* error class:

* SIP message, framer, headers, URIs, digest, SDP, RFC 7865 metadata, multipart:
  :class:`~mediafork.sip.errors.SipParseError` (docs/sip.md: "the only exception the parsers
  raise for bad input");
* TwiML and the Siprec/Recording forms: :class:`~mediafork.control.errors.ApiError` with a
  4xx status (a 5xx for client input would be a bug);
* the daemon configuration: :class:`~mediafork.daemon.config.ConfigError`;
* the control-socket framing: ``FrameError`` (or a clean end of stream).

Any other exception escapes and is the finding. Time per input is bounded by the callers
(hypothesis deadline / atheris ``-timeout``): a parser that loops is a finding too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import msgpack

from mediafork.api.control_socket import MAX_FRAME, FrameError, encode_frame, read_frame
from mediafork.control.errors import ApiError
from mediafork.control.forms import (
    parse_recording_create,
    parse_recording_update,
    parse_siprec_create,
    parse_siprec_update,
)
from mediafork.control.twiml import MAX_TWIML_LENGTH, check_program, parse_twiml
from mediafork.daemon.config import Config, ConfigError, parse_config
from mediafork.sip.digest import Challenge, DigestVerifier, parse_auth_params
from mediafork.sip.errors import SipParseError
from mediafork.sip.headers import ContentType, NameAddr, Via, parse_cseq, parse_name_addrs
from mediafork.sip.message import (
    MAX_MESSAGE_SIZE,
    Message,
    Request,
    StreamFramer,
    parse_message,
    parse_multipart,
)
from mediafork.sip.metadata import parse_metadata
from mediafork.sip.sdp import Codec, OfferStream, SessionDescription, read_answer
from mediafork.sip.uri import SipUri, split_connector_uri

ROOT = Path(__file__).resolve().parents[1]
RFC4475 = ROOT / "tests" / "sip" / "data" / "rfc4475"


# -- SIP ------------------------------------------------------------------------------------


def _exercise_message(msg: Message) -> None:
    """Every accessor of an accepted message either works or raises SipParseError."""
    for getter in (lambda: msg.call_id, lambda: msg.cseq, lambda: msg.from_, lambda: msg.to,
                   lambda: msg.vias, lambda: msg.top_via, lambda: msg.contacts,
                   lambda: msg.content_type):
        with contextlib.suppress(SipParseError):
            getter()
    try:
        ctype = msg.content_type
    except SipParseError:
        ctype = None
    if ctype is not None and ctype.mime.startswith("multipart/"):
        try:
            for part in parse_multipart(msg.body, ctype):
                _body(part.content_type or "", part.body)
        except SipParseError:
            pass
    elif ctype is not None:
        _body(ctype.mime, msg.body)


def _body(mime: str, body: bytes) -> None:
    try:
        if "sdp" in mime:
            sdp_target(body)
        elif "rs-metadata" in mime:
            parse_metadata(body)
    except SipParseError:
        pass


def sip_message_target(data: bytes) -> None:
    """parse_message on one datagram; an accepted message re-serialises to one we accept."""
    try:
        msg = parse_message(data)
    except SipParseError:
        return
    _exercise_message(msg)
    again = parse_message(msg.to_bytes())
    assert type(again) is type(msg)
    assert again.body == msg.body
    if isinstance(msg, Request):
        assert isinstance(again, Request) and again.method == msg.method


def sip_framer_target(data: bytes) -> None:
    """StreamFramer over a byte stream cut into chunks chosen by the input itself.

    The first byte picks the chunk size, so the fuzzer explores split points; whatever the
    split, the framer returns messages, or raises SipParseError (then the stream is dropped).
    """
    if not data:
        return
    step = data[0] % 37 + 1
    stream = data[1:]
    framer = StreamFramer()
    total = 0
    try:
        for i in range(0, len(stream), step):
            for msg in framer.feed(stream[i:i + step]):
                total += len(msg.body)
                _exercise_message(msg)
    except SipParseError:
        return
    assert total <= len(stream)


def sip_header_target(data: bytes) -> None:
    """The header-value parsers, each on the same text."""
    text = data.decode("utf-8", "replace")
    parsers: list[Callable[[str], Any]] = [
        SipUri.parse, NameAddr.parse, parse_name_addrs, Via.parse, parse_cseq,
        ContentType.parse, Challenge.parse, parse_auth_params, split_connector_uri,
    ]
    for parser in parsers:
        try:
            value = parser(text)
        except SipParseError:
            continue
        if isinstance(value, SipUri):
            # An accepted URI prints to one we accept again.
            SipUri.parse(str(value))
    # The recorder's digest verifier faces the network too: never raises, only False.
    verifier = DigestVerifier("realm", {"user": "pw"})
    assert verifier.verify(text, "INVITE") is False  # no nonce was ever issued


# -- SDP and metadata -----------------------------------------------------------------------

_OFFER = [
    OfferStream("1", 41000, Codec("PCMU", 0, 8000), key_80=b"k" * 30),
    OfferStream("2", 41002, Codec("PCMU", 0, 8000)),
]


def sdp_target(data: bytes) -> None:
    """SessionDescription.parse, every media accessor, and reading it as an answer."""
    try:
        sdp = SessionDescription.parse(data)
    except SipParseError:
        return
    for media in sdp.media:
        for getter in (lambda m=media: m.rtpmap, lambda m=media: m.ptime,
                       lambda m=media: m.cryptos, lambda m=media: m.rtcp,
                       lambda m=media: m.direction, lambda m=media: m.label,
                       lambda m=media: m.rtcp_mux):
            with contextlib.suppress(SipParseError):
                getter()
    sdp.to_bytes()
    with contextlib.suppress(SipParseError):
        read_answer(sdp, _OFFER)


def metadata_target(data: bytes) -> None:
    try:
        parsed = parse_metadata(data)
    except SipParseError:
        return
    for stream_id in parsed.streams:
        parsed.label_of(stream_id)


# -- control plane ---------------------------------------------------------------------------


def _client_error(exc: ApiError) -> None:
    assert 400 <= exc.status < 500, f"client input gave a {exc.status}: {exc!r}"


def twiml_target(data: bytes) -> None:
    document = data.decode("utf-8", "replace")
    try:
        program = parse_twiml(document)
    except ApiError as exc:
        _client_error(exc)
        return
    assert len(document) <= MAX_TWIML_LENGTH
    try:
        check_program(program, [])
    except ApiError as exc:
        _client_error(exc)


def form_target(data: bytes) -> None:
    """The four form parsers on one urlencoded body (as aiohttp would decode it)."""
    pairs = parse_qsl(data.decode("utf-8", "replace"), keep_blank_values=True)
    forms_pairs(pairs)


def forms_pairs(pairs: list[tuple[str, str]]) -> None:
    for parser in (parse_siprec_create, parse_siprec_update, parse_recording_create,
                   parse_recording_update):
        try:
            parser(pairs)
        except ApiError as exc:
            _client_error(exc)


@cache
def _config_dir() -> Path:
    """A private directory the config's relative paths resolve against."""
    folder = Path(tempfile.mkdtemp(prefix="mediafork-fuzz-config-"))
    (folder / "secrets.key").write_bytes(b"not a fernet key")
    return folder


def config_dict(root: Any) -> Config | None:
    """parse_config on an already-decoded document."""
    if not isinstance(root, dict):
        return None
    secrets_table = root.get("secrets")
    if isinstance(secrets_table, dict):
        key_file = secrets_table.get("key_file")
        # A config file is trusted operator input: key_file may legitimately name any
        # file, so the fuzzer must not make it read /dev/zero or the like.
        if isinstance(key_file, str) and (os.path.isabs(key_file) or ".." in key_file
                                          or key_file.startswith("~")):
            return None
    try:
        return parse_config(root, _config_dir())
    except ConfigError as exc:
        assert str(exc), "a ConfigError must say what is wrong"
        return None


def config_target(data: bytes) -> None:
    """TOML bytes → tomllib → parse_config; TOML syntax errors are the decoder's business."""
    try:
        root = tomllib.loads(data.decode("utf-8", "replace"))
    except tomllib.TOMLDecodeError:
        return
    config_dict(root)


_LOOP: asyncio.AbstractEventLoop | None = None


def _loop() -> asyncio.AbstractEventLoop:
    global _LOOP
    if _LOOP is None or _LOOP.is_closed():
        _LOOP = asyncio.new_event_loop()
    return _LOOP


async def _read_all(data: bytes) -> list[Any]:
    reader = asyncio.StreamReader(limit=MAX_FRAME + 16)
    reader.feed_data(data)
    reader.feed_eof()
    out = []
    while True:
        try:
            message = await read_frame(reader)
        except FrameError:
            return out
        if message is None:
            return out
        out.append(message)


def control_frame_target(data: bytes) -> None:
    """read_frame over a byte stream: messages, then a clean end or FrameError."""
    messages = _loop().run_until_complete(_read_all(data))
    for message in messages:
        # Whatever was decoded re-encodes (the server echoes ids and the like).
        encode_frame({"id": message.get("id") if isinstance(message, dict) else None})


# -- registry --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    seeds: Callable[[], list[bytes]]


def sip_seeds() -> list[bytes]:
    files = sorted(RFC4475.glob("*/*.dat"))
    return [p.read_bytes() for p in files] + [siprec_invite()]


@cache
def siprec_invite() -> bytes:
    """A real SIPREC INVITE from mediafork's own session: multipart SDP + metadata, SDES."""
    from mediafork.sip import (
        Codec as SessionCodec,
    )
    from mediafork.sip import (
        ForkedStream,
        Participant,
        RecordingSession,
        SessionConfig,
    )

    codec = SessionCodec("PCMU", 0, 8000)
    key = secrets.token_bytes(30)
    session = RecordingSession(SessionConfig(
        srs_uri="sip:recorder@127.0.0.1:5070", local_address="127.0.0.1", local_port=5060,
        streams=(ForkedStream("inbound", "1", 41000, codec, key_80=key),
                 ForkedStream("outbound", "2", 41002, codec, key_80=key)),
        call_id="CA" + "ab" * 16,
        caller=Participant("sip:+15551230000@pbx.example", "Caller"),
        callee=Participant("sip:+15559870000@pbx.example"),
        custom_parameters=(("CustomerId", "42"),),
        credentials_header="X-Auth-Token", credentials_value="fuzz-token",
    ))
    session.start(0.0)
    return session.messages_to_send()[0].message.to_bytes()


def _parts() -> list[bytes]:
    msg = parse_message(siprec_invite())
    ctype = msg.content_type
    assert ctype is not None
    return [p.body for p in parse_multipart(msg.body, ctype)]


def sdp_seeds() -> list[bytes]:
    return [_parts()[0], b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
            b"t=0 0\r\nm=audio 5000 RTP/AVP 0\r\na=rtcp:5001 IN IP4 127.0.0.2\r\n"]


def metadata_seeds() -> list[bytes]:
    return [_parts()[1]]


def header_seeds() -> list[bytes]:
    return [b'"Alice" <sip:alice@example.com;transport=tcp>;tag=abc',
            b"SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK-1;rport",
            b'Digest realm="r", nonce="n", algorithm=SHA-256, qop="auth,auth-int"',
            b"sips:rec@[::1]:5061;secure=true&edge=local",
            b"multipart/mixed;boundary=unique-boundary-1", b"314159 INVITE"]


TWIML_SEED = ('<?xml version="1.0" encoding="UTF-8"?><Response><Start>'
              '<Siprec name="r1" connectorName="Default" track="both_tracks" '
              'statusCallback="https://app.example/cb" statusCallbackMethod="GET">'
              '<Parameter name="CustomerId" value="42"/></Siprec></Start>'
              '<Stop><Siprec name="r1"/></Stop><Pause length="30"/></Response>')


def twiml_seeds() -> list[bytes]:
    return [TWIML_SEED.encode(), b"<Response/>", b"<Response><Say>hi</Say></Response>"]


def form_seeds() -> list[bytes]:
    return [b"Name=r1&ConnectorName=Default&Track=inbound_track&StatusCallback=https%3A%2F%2F"
            b"a.example%2Fcb&StatusCallbackMethod=get&Parameter1.Name=a&Parameter1.Value=b",
            b"Status=stopped", b"Status=paused&PauseBehavior=skip",
            b"RecordingChannels=dual&RecordingTrack=inbound&Trim=trim-silence&"
            b"RecordingStatusCallbackEvent=in-progress+completed"]


CONFIG_SEED = b"""
[api]
listen = "127.0.0.1:0"
max_request_bytes = 4096
[media]
address = "127.0.0.1"
port_range = [30000, 30099]
[[accounts]]
sid = "ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
auth_token = "0123456789abcdef0123"
[[edges]]
name = "local"
address = "127.0.0.1"
default = true
[[connectors]]
account_sid = "ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
unique_name = "Default"
srs = "sip:recorder@127.0.0.1:5070;secure=true&edge=local"
standby_srs = ["sip:r2@127.0.0.1:5072"]
credentials_header = "X-Auth"
credentials = "secret-value"
[callbacks]
timeout = 2.5
max_attempts = 3
[sip]
port = 0
[control_socket]
path = "mf.sock"
"""


def config_seeds() -> list[bytes]:
    return [CONFIG_SEED, b"[secrets]\nkey_file = \"secrets.key\"\n[[accounts]]\n"
            b"sid = \"ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\nauth_token_encrypted = \"x\"\n"]


def control_frame_seeds() -> list[bytes]:
    return [encode_frame({"id": 1, "op": "auth", "account_sid": "AC" + "0" * 32,
                          "auth_token": "t"}) + encode_frame({"id": 2, "op": "list"}),
            encode_frame({"id": 3, "op": "register", "call": {"call_sid": "CA" + "1" * 32}}),
            (MAX_FRAME + 1).to_bytes(4, "big"), msgpack.packb([1, 2])]


TARGETS: dict[str, Target] = {t.name: t for t in [
    Target("sip_message", sip_message_target, sip_seeds),
    Target("sip_framer", sip_framer_target, lambda: [b"\x05" + s for s in sip_seeds()]),
    Target("sip_headers", sip_header_target, header_seeds),
    Target("sdp", sdp_target, sdp_seeds),
    Target("metadata", metadata_target, metadata_seeds),
    Target("twiml", twiml_target, twiml_seeds),
    Target("forms", form_target, form_seeds),
    Target("config", config_target, config_seeds),
    Target("control_frames", control_frame_target, control_frame_seeds),
]}



def _planted_target(data: bytes) -> None:
    """A deliberate bug, so a test can check that the runner reports findings."""
    if data.startswith(b"BUG"):
        raise RuntimeError("planted bug")


if os.environ.get("MEDIAFORK_FUZZ_PLANTED") == "1":
    TARGETS["planted"] = Target("planted", _planted_target, lambda: [b"BUG!", b"ok"])

__all__ = ["MAX_MESSAGE_SIZE", "TARGETS", "Target", "config_dict", "forms_pairs"]
