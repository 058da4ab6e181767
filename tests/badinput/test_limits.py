"""Oversized input is refused early, at every entry point, with the documented error.

Limits: HTTP body (``api.max_request_bytes``, 413 from the Content-Length alone), TwiML
(4,000 characters, 32018), custom parameters (99, form and TwiML), SIP message (64 KiB,
head and body, refused as soon as the Content-Length is known), SIP header lines (256),
SDP lines (1,000), metadata document (32 KiB), control-socket frame (1 MiB, refused from the
4-byte header).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from mfstack import ACCOUNT_A, API, Stack, run, with_stack

from mediafork.api.control_socket import MAX_FRAME, FrameError, read_frame
from mediafork.control.errors import ApiError
from mediafork.control.forms import MAX_CUSTOM_PARAMETERS, parse_siprec_create
from mediafork.control.twiml import MAX_TWIML_LENGTH, parse_twiml
from mediafork.sip.errors import SipParseError
from mediafork.sip.message import MAX_HEADERS, MAX_MESSAGE_SIZE, StreamFramer, parse_message
from mediafork.sip.metadata import MAX_METADATA_SIZE, parse_metadata
from mediafork.sip.sdp import SessionDescription

HEAD = (b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1;branch=z9hG4bK1\r\n"
        b"From: <sip:a@b>;tag=1\r\nTo: <sip:x@127.0.0.1>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n"
        b"Max-Forwards: 70\r\n")


def _params(n: int) -> list[tuple[str, str]]:
    return [pair for i in range(1, n + 1)
            for pair in ((f"Parameter{i}.Name", f"n{i}"), (f"Parameter{i}.Value", "v"))]


# -- pure parsers --------------------------------------------------------------------------


def test_sip_message_size() -> None:
    body = b"x" * (MAX_MESSAGE_SIZE - len(HEAD) - 40)
    fits = HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body
    assert len(fits) <= MAX_MESSAGE_SIZE
    assert parse_message(fits).body == body
    with pytest.raises(SipParseError, match="larger than"):
        parse_message(HEAD + b"Content-Length: 0\r\n\r\n" + b"x" * MAX_MESSAGE_SIZE)


def test_stream_framer_refuses_from_the_head() -> None:
    """Content-Length over the limit: refused when the head arrives, body never awaited."""
    framer = StreamFramer()
    with pytest.raises(SipParseError, match="larger than"):
        framer.feed(HEAD + b"Content-Length: %d\r\n\r\n" % MAX_MESSAGE_SIZE)
    framer = StreamFramer()
    with pytest.raises(SipParseError, match="head larger"):
        framer.feed(HEAD + b"X-Pad: " + b"a" * MAX_MESSAGE_SIZE)  # a head that never ends


def test_sip_header_count() -> None:
    many = HEAD + b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADERS)) + b"\r\n"
    with pytest.raises(SipParseError, match="too many header lines"):
        parse_message(many)


def test_sdp_and_metadata_size() -> None:
    sdp = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\n" + b"a=x\r\n" * 1000
    with pytest.raises(SipParseError, match="too many lines"):
        SessionDescription.parse(sdp)
    with pytest.raises(SipParseError, match="too large"):
        parse_metadata(b"<a>" + b" " * MAX_METADATA_SIZE + b"</a>")


def test_twiml_length() -> None:
    body = "<Response></Response>"
    assert parse_twiml(body + " " * (MAX_TWIML_LENGTH - len(body))).actions == ()
    with pytest.raises(ApiError) as info:
        parse_twiml(body + " " * (MAX_TWIML_LENGTH - len(body) + 1))
    assert info.value.code == 32018


def test_custom_parameter_count() -> None:
    assert len(parse_siprec_create(_params(MAX_CUSTOM_PARAMETERS)).parameters) == 99
    with pytest.raises(ApiError) as info:
        parse_siprec_create(_params(MAX_CUSTOM_PARAMETERS + 1))
    assert info.value.code == 900004
    siprec = "".join(f'<Parameter name="n{i}" value="v"/>' for i in range(1, 101))
    with pytest.raises(ApiError) as info:
        parse_twiml(f"<Response><Start><Siprec>{siprec}</Siprec></Start></Response>")
    assert info.value.code in (900004, 32018)  # 100 parameters also exceed 4,000 characters


def test_control_frame_refused_from_header() -> None:
    async def scenario() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data((MAX_FRAME + 1).to_bytes(4, "big"))  # no body follows, ever
        with pytest.raises(FrameError, match="exceeds"):
            await asyncio.wait_for(read_frame(reader), 1.0)

    asyncio.run(scenario())


# -- on the wire ---------------------------------------------------------------------------


async def _head_only(stack: Stack, request: bytes) -> tuple[bytes, float]:
    host, port = stack.base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    started = time.monotonic()
    writer.write(request)
    answer = await asyncio.wait_for(reader.read(4096), 5.0)
    elapsed = time.monotonic() - started
    writer.close()
    return answer, elapsed


def test_http_limits_on_a_running_daemon(tmp_path: Path) -> None:
    async def scenario(stack: Stack) -> None:
        limit = stack.daemon.config.api.max_request_bytes
        auth = stack.auth(ACCOUNT_A)["Authorization"].encode()
        view = await stack.register()
        call = f"{API}/Accounts/{ACCOUNT_A}/Calls/{view['call_sid']}"
        # Declared too large: 413 at once, though not one body byte was sent.
        for path in (b"/v1/Calls", call.encode() + b"/Siprec.json", b"/no/such/path"):
            answer, elapsed = await _head_only(
                stack, b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nAuthorization: " + auth
                + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                % (limit + 1))
            assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
            assert b'"code": 900015' in answer and elapsed < 2.0
        # Undeclared (chunked) and too large: 413 once the limit is crossed.
        status, body, _ = await stack.request(
            "POST", "/v1/Calls", data=_chunks(b"{" + b" " * (limit + 10) + b"}"),
            headers={"Content-Type": "application/json"})
        assert status == 413 and body["code"] == 900015
        # TwiML and custom parameters through the API.
        twiml = "<Response></Response>"
        status, body, _ = await stack.request(
            "POST", f"{call}.json", data={"Twiml": twiml + " " * MAX_TWIML_LENGTH})
        assert status == 400 and body["code"] == 32018
        status, body, _ = await stack.request(
            "POST", f"{call}/Siprec.json", data=_params(MAX_CUSTOM_PARAMETERS + 1))
        assert status == 400 and body["code"] == 900004
        status, body, _ = await stack.request(
            "POST", f"{call}/Siprec.json", data=_params(MAX_CUSTOM_PARAMETERS)
            + [("StatusCallback", stack.receiver.url)])
        assert status == 201, body
        await stack.receiver.wait_event(body["sid"], "siprec-started")

    run(with_stack(tmp_path, scenario), timeout=60)


async def _chunks(data: bytes):  # type: ignore[no-untyped-def]
    for i in range(0, len(data), 4096):
        yield data[i:i + 4096]
