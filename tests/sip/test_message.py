"""Message parser, serializer, stream framer and multipart bodies (RFC 3261 §7, §18.3)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mediafork.sip.errors import SipParseError
from mediafork.sip.headers import Headers, NameAddr, Via, canonical_name
from mediafork.sip.message import (
    MAX_HEADERS,
    BodyPart,
    Request,
    Response,
    StreamFramer,
    build_multipart,
    parse_message,
    parse_multipart,
)
from mediafork.sip.uri import SipUri, split_connector_uri

INVITE = (
    b"INVITE sip:rec@srs.example.com;transport=tcp SIP/2.0\r\n"
    b"v: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bKabc;rport\r\n"
    b"Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bKdef;received=192.0.2.9;rport=5062\r\n"
    b'f: "Alice, A." <sip:alice@example.com>;tag=1234\r\n'
    b"t: <sip:rec@srs.example.com>\r\n"
    b"i: abc@192.0.2.1\r\n"
    b"CSeq: 7 INVITE\r\n"
    b"m: <sip:src@192.0.2.1:5060;transport=tcp>;+sip.src, <sip:other@192.0.2.1>;q=0.5\r\n"
    b"k: timer\r\n"
    b"k: siprec\r\n"
    b"Max-Forwards: 70\r\n"
    b"c: application/sdp\r\n"
    b"l: 4\r\n"
    b"\r\n"
    b"v=0\n"
)

RESPONSE = (
    b"SIP/2.0 486 Busy Here\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKabc\r\n"
    b"From: <sip:alice@example.com>;tag=1234\r\n"
    b"To: <sip:rec@srs.example.com>;tag=xyz\r\n"
    b"Call-ID: abc@192.0.2.1\r\n"
    b"CSeq: 7 INVITE\r\n"
    b'Warning: 399 srs.example.com "all recorders busy"\r\n'
    b"Content-Length: 0\r\n\r\n"
)


def feed_three_ways(data: bytes) -> list[list[bytes]]:
    """Whole, byte by byte, and with trailing data: the serialized messages each way yields."""
    results = []
    whole = StreamFramer()
    results.append([m.to_bytes() for m in whole.feed(data)])
    split = StreamFramer()
    out = []
    for i in range(len(data)):
        out += split.feed(data[i : i + 1])
    results.append([m.to_bytes() for m in out])
    trailing = StreamFramer()
    msgs = trailing.feed(data + b"INVITE sip:x@y SIP/2.0\r\nVia: SIP/2")
    results.append([m.to_bytes() for m in msgs])
    return results


def test_request_parsed_three_ways_gives_the_same_message() -> None:
    whole, byte_by_byte, trailing = feed_three_ways(INVITE + RESPONSE)
    assert len(whole) == 2
    assert whole == byte_by_byte == trailing


def test_compact_forms_and_multi_values() -> None:
    msg = parse_message(INVITE)
    assert isinstance(msg, Request)
    assert msg.method == "INVITE" and msg.uri == "sip:rec@srs.example.com;transport=tcp"
    assert msg.call_id == "abc@192.0.2.1"
    assert msg.cseq == (7, "INVITE")
    assert msg.from_.display_name == "Alice, A." and msg.from_.tag == "1234"
    assert msg.to.tag is None
    assert [c.uri.user for c in msg.contacts] == ["src", "other"]
    assert msg.contacts[0].params == {"+sip.src": None}
    assert msg.headers.values("Supported") == ["timer", "siprec"]
    assert msg.headers.get("content-type") == "application/sdp"
    top, second = msg.vias
    assert (top.transport, top.host, top.port, top.branch) == (
        "TCP",
        "192.0.2.1",
        5060,
        "z9hG4bKabc",
    )
    assert top.params["rport"] is None
    assert second.params["received"] == "192.0.2.9" and second.params["rport"] == "5062"
    assert msg.body == b"v=0\n"


def test_serialization_round_trip_and_canonical_names() -> None:
    msg = parse_message(INVITE)
    out = msg.to_bytes()
    assert b"\r\nCall-ID: abc@192.0.2.1\r\n" in out
    assert b"\r\nContent-Length: 4\r\n\r\nv=0\n" in out
    again = parse_message(out)
    assert list(again.headers) == list(msg.headers)
    assert canonical_name("i") == "Call-ID" and canonical_name("X-Custom") == "X-Custom"


def test_response_parse() -> None:
    msg = parse_message(RESPONSE)
    assert isinstance(msg, Response)
    assert (msg.status, msg.reason) == (486, "Busy Here")
    assert msg.to.tag == "xyz"
    assert msg.headers.get("Warning") == '399 srs.example.com "all recorders busy"'


def test_header_folding() -> None:
    data = INVITE.replace(b"CSeq: 7 INVITE", b"CSeq: 7\r\n\tINVITE")
    assert parse_message(data).cseq == (7, "INVITE")


def test_framer_skips_keepalives_and_counts_pings() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n") == []
    assert framer.feed(b"\r\n\r\n" + RESPONSE[:10]) == []
    msgs = framer.feed(RESPONSE[10:] + b"\r\n\r\n")
    assert len(msgs) == 1 and isinstance(msgs[0], Response)
    assert framer.keepalives == 3


def test_framer_requires_content_length() -> None:
    data = RESPONSE.replace(b"Content-Length: 0\r\n", b"")
    with pytest.raises(SipParseError, match="Content-Length is required"):
        StreamFramer().feed(data)
    # On a datagram the body is simply the rest.
    assert parse_message(data).body == b""


def test_size_limits() -> None:
    huge = RESPONSE.replace(b"Content-Length: 0", b"Content-Length: 70000")
    with pytest.raises(SipParseError, match="larger than"):
        StreamFramer().feed(huge)
    with pytest.raises(SipParseError, match="larger than"):
        parse_message(RESPONSE + b"x" * 70000)
    framer = StreamFramer(max_size=1000)
    with pytest.raises(SipParseError, match="head larger"):
        framer.feed(b"SIP/2.0 200 OK\r\nX: " + b"a" * 2000)
    many = RESPONSE.replace(
        b"Content-Length: 0\r\n", b"X-A: 1\r\n" * (MAX_HEADERS + 1) + b"Content-Length: 0\r\n"
    )
    with pytest.raises(SipParseError, match="too many header"):
        parse_message(many)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", "not terminated"),
        (b"\r\n\r\n", "not terminated"),
        (b"HELLO\r\n\r\n", "malformed request line"),
        (RESPONSE.replace(b"SIP/2.0 486", b"SIP/2.0 86"), "bad status code"),
        (RESPONSE.replace(b"CSeq: 7 INVITE", b"CSeq: seven INVITE"), "malformed CSeq"),
        (RESPONSE.replace(b"Call-ID: abc@192.0.2.1", b"Call-ID: a b"), "malformed Call-ID"),
        (RESPONSE.replace(b"Via: SIP/2.0/UDP", b"Via: SIP/3.0/UDP"), "unsupported protocol"),
        (
            RESPONSE.replace(b"From: <sip:alice@example.com>", b"From: <sip:alice@exa mple.com>"),
            "whitespace",
        ),
        (
            RESPONSE.replace(b"From: <sip:alice@example.com>", b"From: <sip:alice@ex&ample.com>"),
            "bad host",
        ),
        (RESPONSE.replace(b"Call-ID", b"Call ID"), "malformed header line"),
        (RESPONSE.replace(b"486 Busy", "486 B\u00fcsy".encode("latin-1")), "UTF-8"),
        (
            RESPONSE.replace(
                b"To: <sip:rec@srs.example.com>", b"To: <sip:rec@srs.example.com:99999>"
            ),
            "bad port",
        ),
    ],
)
def test_malformed_messages(data: bytes, error: str) -> None:
    with pytest.raises(SipParseError, match=error):
        parse_message(data)


def test_name_addr_and_uri_helpers() -> None:
    addr = NameAddr.parse('"A \\"B\\"" <sips:u:pw@[2001:db8::1]:5061;transport=tls?h=v>;tag=9')
    assert addr.display_name == 'A "B"'
    assert addr.uri.scheme == "sips" and addr.uri.host == "[2001:db8::1]" and addr.uri.port == 5061
    assert addr.uri.transport == "tls" and addr.uri.headers == "h=v" and addr.tag == "9"
    assert NameAddr.parse(str(addr)) == addr
    via = Via.parse("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1;received=10.0.0.2")
    assert Via.parse(str(via)) == via
    assert SipUri.parse("tel:+1-555").opaque == "+1-555"
    assert split_connector_uri("sip:r@127.0.0.1:5070;secure=true&edge=ashburn") == (
        "sip:r@127.0.0.1:5070",
        True,
        "ashburn",
    )
    with pytest.raises(SipParseError):
        SipUri.parse("sip:user@")


def test_headers_multimap() -> None:
    h = Headers([("Route", "<sip:a>"), ("route", "<sip:b>"), ("X-A", "1")])
    assert h.get_all("ROUTE") == ["<sip:a>", "<sip:b>"]
    h.set("Route", "<sip:c>")
    assert list(h) == [("Route", "<sip:c>"), ("X-A", "1")]
    assert Headers([("x", "90")]).get("Session-Expires") == "90"
    h.prepend("v", "SIP/2.0/UDP h")
    assert list(h)[0] == ("Via", "SIP/2.0/UDP h")
    with pytest.raises(SipParseError):
        h.add("X-A", "a\r\nInjected: 1")


def test_multipart_round_trip_with_disposition() -> None:
    parts = [
        BodyPart(Headers([("Content-Type", "application/sdp")]), b"v=0\r\n"),
        BodyPart(
            Headers(
                [
                    ("Content-Type", "application/rs-metadata+xml"),
                    ("Content-Disposition", "recording-session"),
                ]
            ),
            b"<recording/>",
        ),
    ]
    ctype, body = build_multipart(parts, "b0undary")
    assert ctype == "multipart/mixed;boundary=b0undary"
    back = parse_multipart(body, ctype)
    assert [p.body for p in back] == [b"v=0\r\n", b"<recording/>"]
    assert back[1].headers.get("Content-Disposition") == "recording-session"
    quoted = parse_multipart(body, 'multipart/mixed; boundary="b0undary"')
    assert len(quoted) == 2
    with pytest.raises(SipParseError, match="closing delimiter"):
        parse_multipart(body[: body.rfind(b"--b0undary")], ctype)
    with pytest.raises(SipParseError, match="boundary"):
        parse_multipart(body, "multipart/mixed")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_parser_raises_only_sip_parse_error_on_noise(data: bytes) -> None:
    for candidate in (data, RESPONSE[: len(data) % len(RESPONSE)] + data):
        with contextlib.suppress(SipParseError):
            parse_message(candidate)
        with contextlib.suppress(SipParseError):
            StreamFramer().feed(candidate)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, len(INVITE) - 1),
    st.sampled_from([b"", b";", b",", b'"', b"<", b">", b":", b" ", b"\r\n", b"\x00", b"%", b"@"]),
)
def test_mutated_messages_raise_only_sip_parse_error(pos: int, junk: bytes) -> None:
    with contextlib.suppress(SipParseError):
        parse_message(INVITE[:pos] + junk + INVITE[pos + 1 :])
