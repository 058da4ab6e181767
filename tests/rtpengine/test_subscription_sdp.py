"""Reading rtpengine's subscription offer and writing our answer: pure functions, every bad
offer a typed error (rtpengine's SDP is input from the network like any other)."""

from __future__ import annotations

import pytest

from mediafork.mediasource import NgBadReply, NoUsableCodec
from mediafork.mediasource.subscription_sdp import build_answer, read_offer
from mediafork.sip.sdp import SessionDescription

HEAD = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
OFFER = (HEAD + "m=audio 41024 RTP/AVP 8 0 101 13\r\na=rtpmap:8 PCMA/8000\r\n"
         "a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n"
         "a=rtpmap:13 CN/8000\r\na=ptime:20\r\na=sendonly\r\na=rtcp:41025\r\na=rtcp-mux\r\n")


def test_offer_gives_codec_dtmf_and_source():
    sdp, index, media = read_offer(OFFER, "ta")
    assert index == 0 and (media.codec.name, media.codec.payload_type) == ("PCMA", 8)
    assert media.codec.clock_rate == 8000 and media.dtmf_payload_type == 101
    assert media.payload_types == (8, 0, 101, 13) and media.source == ("127.0.0.1", 41024)
    assert media.ptime == 20


def test_static_payload_type_without_rtpmap_and_no_dtmf():
    _, _, media = read_offer(HEAD + "m=audio 4000 RTP/AVP 0\r\na=sendonly\r\n", "ta")
    assert (media.codec.name, media.codec.clock_rate) == ("PCMU", 8000)
    assert media.dtmf_payload_type is None


def test_opus_channels_and_fmtp_are_learned():
    """What the host API carries for a call's codec (channels, fmtp) comes from the offer."""
    offer = (HEAD + "m=audio 4000 RTP/AVP 111 101\r\na=rtpmap:111 opus/48000/2\r\n"
             "a=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:101 telephone-event/48000\r\n"
             "a=fmtp:101 0-16\r\n")
    codec = read_offer(offer, "ta")[2].codec
    assert (codec.name, codec.clock_rate, codec.channels) == ("opus", 48000, 2)
    assert codec.fmtp == "minptime=10;useinbandfec=1"
    assert read_offer(OFFER, "ta")[2].codec.fmtp is None  # PCMA has no a=fmtp line
    with pytest.raises(NgBadReply, match="fmtp"):
        read_offer(offer.replace("useinbandfec=1", "x\x01"), "ta")


def test_telephone_event_at_the_codec_rate_is_preferred():
    offer = (HEAD + "m=audio 4000 RTP/AVP 9 100 101\r\na=rtpmap:9 G722/8000\r\n"
             "a=rtpmap:100 telephone-event/16000\r\na=rtpmap:101 telephone-event/8000\r\n")
    assert read_offer(offer, "ta")[2].dtmf_payload_type == 101


def test_answer_accepts_every_format_recvonly_with_mux_at_our_port():
    sdp, index, _ = read_offer(HEAD + "m=video 0 RTP/AVP 96\r\n" + OFFER.split(HEAD)[1], "ta")
    assert index == 1
    answer = SessionDescription.parse(build_answer(sdp, index, "127.0.0.5", 37000, 42))
    video, audio = answer.media
    assert video.port == 0  # refused, positions kept (RFC 3264 §6)
    assert (audio.port, audio.proto, audio.formats) == (37000, "RTP/AVP", ["8", "0", "101", "13"])
    assert answer.connection == "127.0.0.5" and audio.direction == "recvonly"
    assert audio.rtcp_mux and audio.rtpmap[101] == ("telephone-event", 8000, 1)
    assert audio.attribute("fmtp") == "101 0-16"
    assert "IP6 ::1" in build_answer(sdp, index, "::1", 37000, 1).decode()


@pytest.mark.parametrize(("sdp", "error"), [
    (None, NgBadReply),
    (12, NgBadReply),
    ("not sdp", NgBadReply),
    (HEAD + "m=audio x RTP/AVP 0\r\n", NgBadReply),
    (HEAD + "m=audio 4000 RTP/AVP 0 abc\r\n", NgBadReply),
    (HEAD + "m=audio 4000 RTP/AVP 200\r\n", NgBadReply),
    (HEAD + "m=audio 4000 RTP/AVP 96\r\na=rtpmap:96 nonsense\r\n", NgBadReply),
    (HEAD.replace("c=IN IP4 127.0.0.1\r\n", "") + "m=audio 4000 RTP/AVP 0\r\n", NgBadReply),
    (HEAD.replace("127.0.0.1\r\nt", "rtp.example\r\nt") + "m=audio 4000 RTP/AVP 0\r\n",
     NgBadReply),
    (HEAD + "m=video 4000 RTP/AVP 96\r\n", NoUsableCodec),
    (HEAD + "m=audio 0 RTP/AVP 0\r\n", NoUsableCodec),
    (HEAD + "m=audio 4000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 "
     "inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n", NoUsableCodec),
    (HEAD + "m=audio 4000 RTP/AVP 101\r\na=rtpmap:101 telephone-event/8000\r\n", NoUsableCodec),
    (HEAD + "m=audio 4000 RTP/AVP 96\r\n", NoUsableCodec),  # dynamic type, no rtpmap
])
def test_bad_offers_are_typed_errors_naming_the_tag(sdp, error):
    with pytest.raises(error) as caught:
        read_offer(sdp, "tag-x")
    assert "tag-x" in str(caught.value)
