"""The NG protocol core as pure state: encoding, reply matching, retransmission and timeout
with the time passed in, and typed errors for every kind of bad reply. No rtpengine needed."""

from __future__ import annotations

import bencodepy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mediafork.mediasource import (
    NgBadReply,
    NgErrorReply,
    NgOverloaded,
    NgTimeout,
    UnknownCall,
    UnknownTag,
)
from mediafork.mediasource.ng import (
    NgProtocol,
    NgTiming,
    check_reply,
    classify_error,
    decode_datagram,
    encode_request,
)

CODEC = bencodepy.Bencode()


def reply(cookie: str, body: dict) -> bytes:
    return cookie.encode() + b" " + CODEC.encode(body)


def test_request_is_cookie_space_bencode():
    assert encode_request("5323_1", {"command": "ping"}) == b"5323_1 d7:command4:pinge"
    data = encode_request("c", {"command": "query", "call-id": "x", "flags": ["a", 1]})
    cookie, decoded = decode_datagram(data)
    assert cookie == "c" and decoded == {"command": "query", "call-id": "x", "flags": ["a", 1]}


@pytest.mark.parametrize("message", [
    {"call-id": "x"},                      # no command
    {"command": "ping", "x": True},        # bencode has no bool
    {"command": "ping", "x": 1.5},         # nor float
    {"command": "ping", "x": object()},
    {"command": "ping", 1: "x"},           # keys are strings
])
def test_unencodable_requests_are_refused(message):
    with pytest.raises(ValueError):
        encode_request("c", message)


@pytest.mark.parametrize("cookie", ["", "has space", "x" * 65])
def test_bad_cookies_are_refused(cookie):
    with pytest.raises(ValueError):
        encode_request(cookie, {"command": "ping"})


def test_cookies_are_unique_and_carry_the_client_prefix():
    a, b = NgProtocol(), NgProtocol()
    cookies = [a.request({"command": "ping"}, 0.0)[0] for _ in range(3)]
    assert len(set(cookies)) == 3
    assert all(c.startswith(a.cookie_prefix + "_") for c in cookies)
    assert a.cookie_prefix != b.cookie_prefix


def test_reply_completes_its_own_request_only():
    proto = NgProtocol()
    c1, _ = proto.request({"command": "ping"}, 0.0)
    c2, _ = proto.request({"command": "query", "call-id": "x"}, 0.0)
    done = proto.receive(reply(c2, {"result": "ok", "tags": {}}), 0.1)
    assert done is not None and done.cookie == c2 and done.command == "query"
    assert done.reply == {"result": "ok", "tags": {}} and done.error is None
    assert proto.outstanding == 1
    # a duplicate (rtpengine answering a retransmission) and another cookie are ignored
    assert proto.receive(reply(c2, {"result": "ok"}), 0.2) is None
    assert proto.receive(reply("other_1", {"result": "pong"}), 0.2) is None
    assert proto.counters["ignored"] == 2
    assert proto.receive(reply(c1, {"result": "pong"}), 0.3).reply == {"result": "pong"}


def test_retransmission_schedule_and_timeout():
    proto = NgProtocol(NgTiming(timeout=3.0, retransmit=0.5, max_interval=1.0))
    cookie, datagram = proto.request({"command": "ping"}, 10.0)
    assert proto.next_deadline() == 10.5
    assert proto.poll(10.4) == ([], [])
    sent_at = []
    now = 10.0
    while proto.outstanding:
        now = proto.next_deadline()
        resend, expired = proto.poll(now)
        assert all(d == datagram for d in resend)  # the same bytes, cookie included
        sent_at += [now] * len(resend)
        if expired:
            (done,) = expired
            assert isinstance(done.error, NgTimeout) and done.cookie == cookie
    assert sent_at == [10.5, 11.5, 12.5]  # 0.5, then doubled and capped at 1.0
    assert now == 13.0 and proto.counters["timeouts"] == 1
    assert proto.next_deadline() is None
    # the answer that comes too late completes nothing
    assert proto.receive(reply(cookie, {"result": "pong"}), 13.5) is None


def test_outstanding_requests_are_capped():
    proto = NgProtocol(max_outstanding=2)
    proto.request({"command": "ping"}, 0.0)
    cookie, _ = proto.request({"command": "ping"}, 0.0)
    with pytest.raises(NgOverloaded) as caught:
        proto.request({"command": "ping"}, 0.0)
    assert caught.value.code == 900070
    proto.cancel(cookie)
    proto.request({"command": "ping"}, 0.0)
    assert sorted(proto.cancel_all()) and proto.outstanding == 0


@pytest.mark.parametrize("body", [
    b"not bencode",
    b"i42e",                          # not a dictionary
    b"d6:result2:ok",                 # truncated
    b"d6:result2:okee",               # trailing bytes
    b"l" * 200 + b"e" * 200,          # nested too deep
])
def test_malformed_reply_to_our_cookie_is_a_bad_reply(body):
    proto = NgProtocol()
    cookie, _ = proto.request({"command": "query", "call-id": "x"}, 0.0)
    done = proto.receive(cookie.encode() + b" " + body, 0.1)
    assert done is not None and isinstance(done.error, NgBadReply)
    assert done.error.code == 900062 and "query" in str(done.error)
    assert proto.outstanding == 0


@pytest.mark.parametrize("datagram", [b"", b"nospace", b" d6:result2:oke", b"\xff\xfe d1:ae",
                                      b"x" * 70 + b" de"])
def test_garbage_without_our_cookie_is_ignored(datagram):
    proto = NgProtocol()
    proto.request({"command": "ping"}, 0.0)
    assert proto.receive(datagram, 0.1) is None
    assert proto.outstanding == 1 and proto.counters["ignored"] == 1


@pytest.mark.parametrize("body, error", [
    ({"result": "error", "error-reason": "Unknown call-ID"}, UnknownCall),
    ({"result": "error", "error-reason": "Unknown call-id"}, UnknownCall),
    ({"result": "error", "error-reason": "From-tag given, but no such tag exists"}, UnknownTag),
    ({"result": "error", "error-reason": "To-tag not found"}, UnknownTag),
    ({"result": "error", "error-reason": "Failed to request subscription"}, NgErrorReply),
    ({"result": "error"}, NgBadReply),
    ({"result": "error", "error-reason": 5}, NgBadReply),
    ({"result": "maybe"}, NgBadReply),
    ({}, NgBadReply),
])
def test_error_replies_are_typed(body, error):
    with pytest.raises(error) as caught:
        check_reply("subscribe request", body)
    if issubclass(error, NgErrorReply):
        assert caught.value.reason == body["error-reason"]
        assert "subscribe request" in str(caught.value)


def test_codes_are_distinct_and_documented():
    from pathlib import Path

    from mediafork.mediasource import errors

    classes = [getattr(errors, name) for name in errors.__all__
               if name != "MediaSourceError"]  # the base class, never raised as such
    codes = {cls.code for cls in classes}
    assert len(codes) == len(classes)
    from mediafork.control.errors import REGISTRY

    doc = (Path(__file__).resolve().parents[2] / "docs" / "api-errors.md").read_text()
    for cls in classes:
        assert f"(HTTP {cls.http_status}; `{cls.__name__}`)" in doc, cls
        # The daemon answers an API request that hits one with the class's code and status.
        assert REGISTRY[cls.code].status == cls.http_status, cls


def test_error_reason_is_made_printable():
    with pytest.raises(NgErrorReply) as caught:
        check_reply("query", {"result": "error", "error-reason": "bad\x00\x1b[31m" + "x" * 500})
    assert "\x00" not in caught.value.reason and "\x1b" not in caught.value.reason
    assert len(caught.value.reason) <= 201
    assert isinstance(classify_error("x", "Unknown tag"), UnknownTag)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_datagram_is_handled_without_crashing(data):
    proto = NgProtocol(cookie_prefix="p")
    cookie, _ = proto.request({"command": "ping"}, 0.0)
    for datagram in (data, cookie.encode() + b" " + data):
        done = proto.receive(datagram, 0.1)
        assert done is None or done.error is not None or done.reply is not None
