"""SDP offer building and answer reading for SIPREC (RFC 8866, RFC 4568, RFC 7866 §8)."""

from __future__ import annotations

import base64

import pytest

from mediafork.sip.errors import SipParseError
from mediafork.sip.sdp import (
    SUITE_32,
    SUITE_80,
    Codec,
    Crypto,
    OfferStream,
    SessionDescription,
    build_answer,
    build_offer,
    read_answer,
)

PCMU = Codec("PCMU", 0, 8000)
K80 = bytes(range(30))
K32 = bytes(range(100, 130))


def offer_streams(secure: bool = True) -> list[OfferStream]:
    keys = {"key_80": K80, "key_32": K32} if secure else {}
    return [OfferStream("1", 30000, PCMU, **keys), OfferStream("2", 30002, PCMU, **keys)]


def test_offer_has_one_sendonly_labelled_mline_per_stream_with_crypto() -> None:
    sdp = build_offer(offer_streams(), "192.0.2.10", 42, 1)
    text = sdp.to_bytes().decode()
    assert text.startswith("v=0\r\no=mediafork 42 1 IN IP4 192.0.2.10\r\ns=SIPREC\r\n")
    assert "c=IN IP4 192.0.2.10\r\n" in text and "telephone-event" not in text
    parsed = SessionDescription.parse(sdp.to_bytes())
    assert [m.label for m in parsed.media] == ["1", "2"]
    for media, port in zip(parsed.media, (30000, 30002), strict=True):
        assert (media.media, media.port, media.proto, media.formats) == (
            "audio",
            port,
            "RTP/SAVP",
            ["0"],
        )
        assert media.direction == "sendonly"
        assert media.rtpmap == {0: ("PCMU", 8000, 1)}
        assert media.ptime == 20
        cryptos = media.cryptos
        assert [(c.tag, c.suite, c.key) for c in cryptos] == [
            (1, SUITE_80, K80),
            (2, SUITE_32, K32),
        ]
    assert f"a=crypto:1 {SUITE_80} inline:{base64.b64encode(K80).decode()}" in text


def test_plain_rtp_offer_and_ipv6() -> None:
    sdp = build_offer(offer_streams(False), "2001:db8::5", 1, 1)
    text = sdp.to_bytes().decode()
    assert "m=audio 30000 RTP/AVP 0\r\n" in text and "a=crypto" not in text
    assert "c=IN IP6 2001:db8::5" in text


def test_offer_rejects_duplicate_labels_and_bad_keys() -> None:
    with pytest.raises(ValueError, match="unique"):
        build_offer([OfferStream("1", 1, PCMU), OfferStream("1", 2, PCMU)], "192.0.2.1", 1, 1)
    with pytest.raises(ValueError, match="30 bytes"):
        build_offer([OfferStream("1", 1, PCMU, key_80=b"short")], "192.0.2.1", 1, 1)


ANSWER = (
    "v=0\r\no=srs 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n"
    "m=audio 40000 RTP/SAVP 0\r\na=label:1\r\na=recvonly\r\na=rtcp:40009 IN IP4 198.51.100.8\r\n"
    f"a=crypto:2 {SUITE_32} inline:{base64.b64encode(bytes(30)).decode()}|2^31|1:4\r\n"
    "m=audio 0 RTP/SAVP 0\r\na=label:2\r\n"
)


def test_answer_reader_selects_crypto_by_tag_and_honours_port_zero() -> None:
    streams = read_answer(SessionDescription.parse(ANSWER), offer_streams())
    first, second = streams
    assert (first.label, first.address, first.port, first.direction) == (
        "1",
        "198.51.100.7",
        40000,
        "recvonly",
    )
    assert first.rtcp == ("198.51.100.8", 40009)
    assert (first.tag, first.suite, first.remote_key) == (2, SUITE_32, bytes(30))
    assert "remote_key" not in repr(first)
    assert second.port is None


def test_answer_rtcp_mux_and_default_rtcp_port() -> None:
    answer = ANSWER.replace("a=rtcp:40009 IN IP4 198.51.100.8", "a=rtcp-mux")
    assert read_answer(SessionDescription.parse(answer), offer_streams())[0].rtcp == (
        "198.51.100.7",
        40000,
    )
    plain = answer.replace("a=rtcp-mux\r\n", "")
    assert read_answer(SessionDescription.parse(plain), offer_streams())[0].rtcp == (
        "198.51.100.7",
        40001,
    )


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (ANSWER.replace("a=crypto:2", "a=crypto:7"), "selects no offered crypto"),
        (
            ANSWER.replace(f"a=crypto:2 {SUITE_32}", f"a=crypto:2 {SUITE_80}"),
            "selects no offered crypto",
        ),
        (ANSWER.split("m=audio 0")[0], "m-lines"),
        (ANSWER.replace("c=IN IP4 198.51.100.7\r\n", ""), "no connection address"),
        (ANSWER.replace("inline:", "inline:!!"), "base64"),
        (ANSWER.replace("v=0", "v=1"), "v=0"),
        (ANSWER.replace("m=audio 40000", "m=audio 99999"), "bad port"),
    ],
)
def test_bad_answers(answer: str, error: str) -> None:
    with pytest.raises(SipParseError, match=error):
        read_answer(SessionDescription.parse(answer), offer_streams())


def test_crypto_parse_errors_do_not_echo_keys() -> None:
    secret = base64.b64encode(b"x" * 29).decode()
    with pytest.raises(SipParseError) as info:
        Crypto.parse(f"1 {SUITE_80} inline:{secret}")
    assert secret not in str(info.value)
    crypto = Crypto.parse(f"1 {SUITE_80} inline:{base64.b64encode(K80).decode()}|2^20|1:32")
    assert (crypto.lifetime, crypto.mki) == ("2^20", "1:32")
    assert base64.b64encode(K80).decode() not in repr(crypto)


def test_build_answer_to_srs_reoffer() -> None:
    offer = ANSWER.replace("m=audio 0 RTP/SAVP 0", "m=audio 40002 RTP/SAVP 0").replace(
        "a=label:2",
        f"a=inactive\r\na=crypto:5 {SUITE_80} inline:{base64.b64encode(bytes(30)).decode()}",
    )
    sdp, result = build_answer(
        SessionDescription.parse(offer), offer_streams(), "192.0.2.10", 42, 2, False
    )
    first, second = sdp.media
    assert (
        first.direction == "sendonly" and first.cryptos[0].tag == 2 and first.cryptos[0].key == K32
    )
    assert (
        second.direction == "inactive"
        and second.cryptos[0].tag == 5
        and second.cryptos[0].key == K80
    )
    assert [(r.port, r.suite) for r in result] == [(40000, SUITE_32), (40002, SUITE_80)]


def test_opus_offer_has_two_channels_and_the_hosts_fmtp() -> None:
    opus = Codec("opus", 111, 48000, 2, "minptime=10;useinbandfec=1")
    media = build_offer([OfferStream("1", 30000, opus)], "192.0.2.1", 1, 1).media[0]
    assert media.attribute_values("rtpmap") == ["111 opus/48000/2"]
    assert media.attribute_values("fmtp") == ["111 minptime=10;useinbandfec=1"]
    g722 = build_offer([OfferStream("1", 30000, Codec("G722", 9, 8000))], "192.0.2.1", 1, 1)
    assert g722.media[0].attribute_values("rtpmap") == ["9 G722/8000"]
    assert g722.media[0].attribute_values("fmtp") == []


@pytest.mark.parametrize("fmtp", ["", "a=1\r\na=crypto:1 x", "tab\there", "é"])
def test_an_fmtp_that_would_break_the_sdp_is_refused(fmtp: str) -> None:
    with pytest.raises(ValueError, match="fmtp"):
        Codec("opus", 111, 48000, 2, fmtp)
