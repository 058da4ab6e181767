"""RFC 4475 torture messages (tests/sip/data/rfc4475): valid ones parse, invalid ones raise
SipParseError. Each file holds the RFC's message bytes with CRLF line ends (RFC 4475 §2).

mpart01: the RFC's binary S/MIME blob is replaced by our own binary bytes (CR, LF, NUL, every
octet value) with Content-Length recomputed; what the test exercises (binary data inside a
multipart body) is unchanged.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mediafork.sip.errors import SipParseError
from mediafork.sip.headers import parse_name_addrs
from mediafork.sip.message import Request, Response, StreamFramer, parse_message, parse_multipart
from mediafork.sip.uri import SipUri

DATA = Path(__file__).parent / "data" / "rfc4475"
VALID = sorted((DATA / "valid").glob("*.dat"))
INVALID = sorted((DATA / "invalid").glob("*.dat"))

# Why each invalid message is rejected (RFC 4475 §3.1.2 and §3.3): the check in our parser.
EXPECTED_ERRORS = {
    "badinv01": "parameter in Via",  # ;;,;,, : empty Via/Contact parameters
    "clerr": "Content-Length 9999",  # more than the datagram holds
    "ncl": "Content-Length",  # negative
    "scalar02": "CSeq number out of range",  # 2**65 CSeq (Max-Forwards 300 too)
    "scalarlg": "CSeq number out of range",
    "quotbal": "unterminated quoted string",
    "ltgtruri": "not a URI",  # <sip:...> as Request-URI
    "lwsruri": "malformed request line",  # space inside the Request-URI
    "lwsstart": "malformed request line",  # several spaces between elements
    "trws": "malformed request line",  # trailing whitespace
    "escruri": "Request-URI must not contain headers",
    "baddate": "GMT",  # Date in EST
    "regbadct": "must be in <>",  # addr-spec with '?' outside <>
    "badaspec": "whitespace inside <>",
    "baddn": "bad display name",  # unquoted display name with a comma
    "badvers": "unsupported SIP version",
    "mismatch01": "CSeq method does not match",
    "bigcode": "bad status code",
    "insuf": "missing To",  # RFC 4475 §3.4.1 (semantic): we require To/From/Call-ID/CSeq/Via
    "multi01": "appears more than once",  # several CSeq/Call-ID/To/From
    "mcl01": "Content-Length appears more than once",
}


def test_every_invalid_file_has_an_expectation() -> None:
    assert {p.stem for p in INVALID} == set(EXPECTED_ERRORS)
    assert len(VALID) >= 13


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_messages_parse_whole_and_streamed(path: Path) -> None:
    data = path.read_bytes()
    msg = parse_message(data)
    again = parse_message(msg.to_bytes())
    assert type(again) is type(msg)
    assert again.body == msg.body
    assert again.call_id == msg.call_id
    # Reliable transports: the same bytes through the framer, byte by byte.
    framer = StreamFramer()
    out = []
    for i in range(len(data)):
        out += framer.feed(data[i : i + 1])
    if path.stem == "dblreq":
        assert [m.method for m in out if isinstance(m, Request)] == ["REGISTER", "INVITE"]
    else:
        assert len(out) == 1 and out[0].body == msg.body


def test_wsinv_details() -> None:
    msg = parse_message((DATA / "valid" / "wsinv.dat").read_bytes())
    assert isinstance(msg, Request)
    assert msg.cseq == (9, "INVITE")
    assert msg.to.tag == "1918181833n"
    assert msg.from_.display_name == 'J Rosenberg \\"'
    assert msg.from_.tag == "98asjd8"
    assert [v.transport for v in msg.vias] == ["UDP", "TCP", "UDP"]
    assert [v.branch for v in msg.vias] == ["390skdjuw", "z9hG4bK9ikj8", "z9hG4bK30239"]
    assert msg.headers.get("Max-Forwards") == "0068"
    assert msg.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    contact = msg.contacts[0]
    assert contact.display_name == 'Quoted string ""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert msg.headers.get("Subject") == ""
    assert len(msg.body) == 150


def test_intmeth_esc_and_semiuri_uris() -> None:
    msg = parse_message((DATA / "valid" / "intmeth.dat").read_bytes())
    assert isinstance(msg, Request) and msg.method == "!interesting-Method0123456789_*+`.%indeed'~"
    uri = SipUri.parse(msg.uri)
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert msg.to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    semi = parse_message((DATA / "valid" / "semiuri.dat").read_bytes())
    assert isinstance(semi, Request)
    assert SipUri.parse(semi.uri).user == "user;par=u%40example.net"
    assert len(semi.headers.values("Accept")) == 6
    esc02 = parse_message((DATA / "valid" / "esc02.dat").read_bytes())
    # C%6Fntact is an unknown header, not Contact.
    assert [str(c.uri) for c in esc02.contacts] == [
        "sip:alias1@host1.example.com",
        "sip:alias3@host3.example.com",
    ]


def test_longreq_compact_and_case_variants_of_via() -> None:
    msg = parse_message((DATA / "valid" / "longreq.dat").read_bytes())
    assert len(msg.vias) == 34
    assert msg.from_.tag is not None and msg.from_.tag.endswith("424")


def test_responses_with_odd_reason_phrases() -> None:
    unreason = parse_message((DATA / "valid" / "unreason.dat").read_bytes())
    assert isinstance(unreason, Response) and unreason.status == 200
    assert unreason.reason.startswith("= 2**3 * 5**2 но")
    noreason = parse_message((DATA / "valid" / "noreason.dat").read_bytes())
    assert isinstance(noreason, Response) and (noreason.status, noreason.reason) == (100, "")


def test_mpart01_multipart_with_binary_part() -> None:
    msg = parse_message((DATA / "valid" / "mpart01.dat").read_bytes())
    assert msg.content_type is not None
    parts = parse_multipart(msg.body, msg.content_type)
    assert [p.content_type for p in parts] == ["text/plain", "application/octet-stream"]
    assert parts[0].body == b"Hello"
    assert parts[1].body.startswith(bytes(range(256)))
    assert parse_name_addrs("<sip:127.0.0.1:5080>")[0].uri.port == 5080


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_messages_are_rejected(path: Path) -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(path.read_bytes())
    assert EXPECTED_ERRORS[path.stem] in str(info.value)
