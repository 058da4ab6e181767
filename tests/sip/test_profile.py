"""Per-connector SIP profiles: TOML parsing (good and bad, key paths, no secret echoed),
the parameter-to-header mapping, metadata extensions against the RFC 7865 schema, and the
SDP offer/answer for every configured SRTP suite."""

from __future__ import annotations

import base64
import tomllib
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path

import defusedxml.ElementTree as SafeET
import pytest
import xmlschema

from mediafork.daemon.config import ConfigError, parse_config
from mediafork.media.srtp import SrtpProfile
from mediafork.sip.metadata import EXT_NS, MetaParticipant, MetaStream, build_metadata
from mediafork.sip.profile import (
    EXTENSION_NS,
    SipProfile,
    header_safe_value,
    parameter_header_name,
)
from mediafork.sip.sdp import (
    KEY_LENGTHS,
    SUITE_32,
    SUITE_80,
    SUITE_GCM_128,
    SUITE_GCM_256,
    SUPPORTED_SUITES,
    Codec,
    OfferStream,
    SessionDescription,
    build_answer,
    build_offer,
    read_answer,
)

SCHEMA = xmlschema.XMLSchema(str(Path(__file__).parent / "data" / "rfc7865.xsd"))
AC = "AC" + "a1" * 16
SECRET = "tenant-secret-value-9f8e7d"

HEAD = f"""
[[accounts]]
sid = "{AC}"
auth_token = "{'t' * 32}"

[[connectors]]
account_sid = "{AC}"
unique_name = "Verint"
"""


def load(toml: str, srs: str = "sip:rec@127.0.0.1:5070;secure=true"):
    doc = tomllib.loads(HEAD + f'srs = "{srs}"\n' + toml)
    return parse_config(doc, ".").connectors[0].profile


def refused(toml: str, srs: str = "sip:rec@127.0.0.1:5070;secure=true") -> str:
    with pytest.raises(ConfigError) as info:
        load(toml, srs)
    return str(info.value)


# --- configuration ---------------------------------------------------------------------------


def test_no_table_is_the_default_profile() -> None:
    assert load("") == SipProfile()
    assert SipProfile().srtp_suites == (SUITE_80, SUITE_32)
    assert SipProfile().parameters_as == "metadata"


def test_a_full_profile_parses() -> None:
    profile = load(f"""
[connectors.sip]
parameters_as = "both"
parameter_header_prefix = "X-Param-"
parameter_headers_max_bytes = 2048
group_name = "Sales floor 3"
extension_xml = ['<tenant xmlns="urn:example:tenant" id="42">acme</tenant>', '<note>x</note>']
session_expires = 600
keepalive_interval = 15
setup_timeout = 4.5
srtp_suites = ["AEAD_AES_256_GCM", "AEAD_AES_128_GCM", "AES_CM_128_HMAC_SHA1_80"]
transport_profile = "RTP/SAVP"

[connectors.sip.headers]
X-Tenant = "{SECRET}"
X-Site = "Paris 2"
""")
    assert profile.headers == (("X-Tenant", SECRET), ("X-Site", "Paris 2"))
    assert SECRET not in repr(profile)
    assert profile.parameters_as == "both" and profile.parameter_header_prefix == "X-Param-"
    assert profile.parameter_headers_max_bytes == 2048
    assert profile.group_name == "Sales floor 3"
    assert profile.session_expires == 600 and profile.keepalive_interval == 15.0
    assert profile.setup_timeout == 4.5
    assert profile.srtp_suites == (SUITE_GCM_256, SUITE_GCM_128, SUITE_80)
    assert profile.transport_profile == "RTP/SAVP"
    # An element without a namespace is put in mediafork's extension namespace.
    note = SafeET.fromstring(profile.extension_xml[1])
    assert note.tag == f"{{{EXTENSION_NS}}}note"
    assert SafeET.fromstring(profile.extension_xml[0]).tag == "{urn:example:tenant}tenant"


def test_plain_rtp_avp_is_explicit_for_a_connector_that_is_not_secure() -> None:
    profile = load('[connectors.sip]\ntransport_profile = "RTP/AVP"\n', "sip:rec@127.0.0.1:5070")
    assert profile.transport_profile == "RTP/AVP"


def test_session_timer_can_be_turned_off() -> None:
    assert load("[connectors.sip]\nsession_expires = 0\n").session_expires == 0


@pytest.mark.parametrize(("toml", "key", "srs"), [
    ("[connectors.sip]\ncolour = 1\n", "connectors[0].sip.colour: unknown key", None),
    ("sip = 3\n", "connectors[0].sip: must be a table", None),
    ('[connectors.sip.headers]\n"Bad Name" = "v"\n', "connectors[0].sip.headers.'Bad Name'", None),
    ('[connectors.sip.headers]\nVia = "v"\n', "writes this header itself", None),
    ('[connectors.sip.headers]\ncall-id = "v"\n', "writes this header itself", None),
    ('[connectors.sip.headers]\nContent-Type = "v"\n', "writes this header itself", None),
    ('[connectors.sip.headers]\nt = "v"\n', "writes this header itself", None),
    ('[connectors.sip.headers]\nX-A = 1\n', "connectors[0].sip.headers.'X-A': must be a string",
     None),
    (f'[connectors.sip.headers]\nX-A = "{SECRET}\\r\\nVia: evil"\n', "headers.'X-A': the value",
     None),
    (f'[connectors.sip.headers]\nX-A = " {SECRET}"\n', "headers.'X-A': the value", None),
    ('[connectors.sip]\nparameters_as = "body"\n', "connectors[0].sip.parameters_as", None),
    ('[connectors.sip]\nparameter_header_prefix = "X :"\n', "sip.parameter_header_prefix",
     None),
    ("[connectors.sip]\nparameter_headers_max_bytes = 10\n", "sip.parameter_headers_max_bytes",
     None),
    ('[connectors.sip]\ngroup_name = "a\\u0007b"\n', "connectors[0].sip.group_name", None),
    ("[connectors.sip]\nextension_xml = ['<a><b></a>']\n",
     "connectors[0].sip.extension_xml[0]: not well-formed XML", None),
    ("[connectors.sip]\nextension_xml = ['<!DOCTYPE a [<!ENTITY e \"x\">]><a>&e;</a>']\n",
     "connectors[0].sip.extension_xml[0]: refused XML", None),
    ("[connectors.sip]\nextension_xml = ['<r:stream xmlns:r=\"urn:ietf:params:xml:ns:recording:1\"/>']\n",
     "extension_xml[0]: elements in the RFC 7865 namespace", None),
    ("[connectors.sip]\nextension_xml = ['text only']\n", "extension_xml[0]: not well-formed",
     None),
    ("[connectors.sip]\nsession_expires = 60\n", "connectors[0].sip.session_expires", None),
    ("[connectors.sip]\nsession_expires = true\n",
     "connectors[0].sip.session_expires: must be an integer", None),
    ("[connectors.sip]\nkeepalive_interval = 0\n", "connectors[0].sip.keepalive_interval", None),
    ("[connectors.sip]\nsetup_timeout = 9999\n", "connectors[0].sip.setup_timeout", None),
    ('[connectors.sip]\nsrtp_suites = ["AES_256_CM_HMAC_SHA1_80"]\n',
     "srtp_suites[0]: AES_256_CM_HMAC_SHA1_80 is not supported by the bundled libsrtp", None),
    ('[connectors.sip]\nsrtp_suites = ["NULL"]\n', "srtp_suites[0]: unknown suite", None),
    ('[connectors.sip]\nsrtp_suites = []\n', "connectors[0].sip.srtp_suites: must name", None),
    ('[connectors.sip]\nsrtp_suites = ["AEAD_AES_128_GCM", "AEAD_AES_128_GCM"]\n',
     "srtp_suites[1]: AEAD_AES_128_GCM given twice", None),
    ('[connectors.sip]\nsrtp_suites = ["AEAD_AES_128_GCM"]\n', "srtp_suites: needs a secure",
     "sip:rec@127.0.0.1:5070"),
    ('[connectors.sip]\ntransport_profile = "RTP/AVP"\n', "transport_profile: RTP/AVP", None),
    ('[connectors.sip]\ntransport_profile = "RTP/SAVP"\n', "transport_profile: RTP/SAVP needs",
     "sip:rec@127.0.0.1:5070"),
    ('[connectors.sip]\ntransport_profile = "UDP/TLS/RTP/SAVP"\n', "sip.transport_profile", None),
])
def test_bad_profiles_name_the_key_and_never_echo_a_value(toml: str, key: str,
                                                          srs: str | None) -> None:
    message = refused(toml, srs or "sip:rec@127.0.0.1:5070;secure=true")
    assert key in message, message
    assert SECRET not in message


def test_a_static_header_may_not_shadow_the_credentials_header() -> None:
    doc = tomllib.loads(HEAD + 'srs = "sip:rec@127.0.0.1:5070"\n'
                        'credentials_header = "X-Auth"\n'
                        f'credentials = "{SECRET}"\n'
                        f'[connectors.sip.headers]\nx-auth = "{SECRET}"\n')
    with pytest.raises(ConfigError) as info:
        parse_config(doc, ".")
    assert "connectors[0].sip.headers.'X-Auth'" in str(info.value)
    assert SECRET not in str(info.value)


def test_a_standby_that_is_secure_makes_the_connector_secure() -> None:
    doc = tomllib.loads(HEAD + 'srs = "sip:rec@127.0.0.1:5070"\n'
                        'standby_srs = ["sip:rec2@127.0.0.1:5072;secure=true"]\n'
                        '[connectors.sip]\nsrtp_suites = ["AEAD_AES_128_GCM"]\n')
    assert parse_config(doc, ".").connectors[0].profile.srtp_suites == (SUITE_GCM_128,)


def test_every_supported_suite_is_one_the_engine_can_key() -> None:
    # The profile validates names against sdp.SUPPORTED_SUITES; the data plane keys with
    # SrtpProfile. They must agree, key lengths included.
    for suite in SUPPORTED_SUITES:
        assert SrtpProfile(suite).master_length == KEY_LENGTHS[suite]
    assert {p.value for p in SrtpProfile} == set(SUPPORTED_SUITES)


@pytest.mark.parametrize("kwargs", [
    {"headers": (("X-A", "v\r\nVia: x"),)},
    {"headers": (("Via", "v"),)},
    {"headers": (("X-A", "1"), ("x-a", "2"))},
    {"parameters_as": "body"},
    {"parameter_header_prefix": "X :"},
    {"srtp_suites": ("AES_256_CM_HMAC_SHA1_80",)},
    {"srtp_suites": ()},
    {"transport_profile": "RTP/AVPF"},
])
def test_a_profile_built_in_python_is_checked_too(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SipProfile(**kwargs)  # type: ignore[arg-type]


# --- parameters as headers -------------------------------------------------------------------

NAME_128 = "Ä" + "n" * 126 + " "


@pytest.mark.parametrize(("name", "header"), [
    ("agent", "X-agent"),
    ("Agent Name", "X-Agent%20Name"),
    ("Straße", "X-Stra%C3%9Fe"),
    ("100%", "X-100%25"),
    ("a:b/c", "X-a%3Ab%2Fc"),
])
def test_parameter_names_map_to_token_header_names(name: str, header: str) -> None:
    assert parameter_header_name("X-", name) == header
    assert urllib.parse.unquote(header[2:], errors="strict") == name


def test_values_are_header_safe_and_reversible() -> None:
    for value in (" Müller & Söhne ", "50% off", "line\r\nVia: x", "日本語", "", "plain"):
        text = header_safe_value(value)
        assert all(0x20 <= ord(c) <= 0x7E for c in text)
        assert text == text.strip()
        assert urllib.parse.unquote(text) == value


def test_parameter_headers_follow_parameters_as_and_the_size_bound() -> None:
    params = (("Agent Name", "Zoë"), (NAME_128, "v" * 1024), ("queue", "sales"))
    assert SipProfile().parameter_headers(params) == ((), 0)
    headers, skipped = SipProfile(parameters_as="headers").parameter_headers(params)
    assert skipped == 0 and [h for h, _ in headers][0] == "X-Agent%20Name"
    assert headers[0][1] == "Zo%C3%AB"
    small = SipProfile(parameters_as="both", parameter_headers_max_bytes=128)
    headers, skipped = small.parameter_headers(params)
    assert [h for h, _ in headers] == ["X-Agent%20Name", "X-queue"] and skipped == 1
    assert sum(len(h) + len(v) + 4 for h, v in headers) <= 128
    # A prefix that maps onto a header the UA owns is skipped, never sent.
    odd = SipProfile(parameters_as="headers", parameter_header_prefix="Call-")
    assert odd.parameter_headers((("ID", "x"), ("Tag", "y"))) == ((("Call-Tag", "y"),), 1)


# --- metadata ---------------------------------------------------------------------------------


def test_group_name_and_extensions_stay_schema_valid() -> None:
    profile = load("""
[connectors.sip]
group_name = "Sales <floor> & co"
extension_xml = ['<tenant xmlns="urn:example:tenant" id="42"><site>Paris</site></tenant>',
                 '<note kind="x">free</note>']
""")
    doc = build_metadata(
        seed="CA1", datamode="complete", sip_session_ids=["CA1"],
        participants=[MetaParticipant("sip:a@x", None, ("1",), ())],
        streams=[MetaStream("1")], associate_time=datetime(2026, 1, 1, tzinfo=UTC),
        custom={"Agent Name": "Zoë"}, group_name=profile.group_name,
        extensions=profile.extension_xml)
    SCHEMA.validate(doc.decode())
    root = SafeET.fromstring(doc)
    ns = "{urn:ietf:params:xml:ns:recording:1}"
    assert root.find(f"{ns}group/{{{EXT_NS}}}group-name").text == "Sales <floor> & co"
    assert root.find("{urn:example:tenant}tenant/{urn:example:tenant}site").text == "Paris"
    assert root.find(f"{{{EXTENSION_NS}}}note").get("kind") == "x"


def test_the_schema_check_can_fail_for_an_unnamespaced_extension() -> None:
    # Why un-namespaced blocks are moved into EXTENSION_NS: ##other excludes "no namespace".
    doc = build_metadata(
        seed="CA1", datamode="complete", sip_session_ids=["CA1"], participants=[],
        streams=[], associate_time=datetime(2026, 1, 1, tzinfo=UTC), extensions=("<note/>",))
    with pytest.raises(xmlschema.XMLSchemaValidationError):
        SCHEMA.validate(doc.decode())


# --- SDP: suites in order, the answer's choice ----------------------------------------------

PCMU = Codec("PCMU", 0, 8000)


def keyed(suites: tuple[str, ...]) -> OfferStream:
    return OfferStream("1", 40000, PCMU,
                       keys=tuple((s, bytes([i + 1]) * KEY_LENGTHS[s]) for i, s in
                                  enumerate(suites)))


@pytest.mark.parametrize("suites", [
    (SUITE_GCM_256,), (SUITE_GCM_128, SUITE_80), (SUITE_32, SUITE_GCM_256, SUITE_80, SUITE_GCM_128),
])
def test_offer_has_one_crypto_per_suite_in_order_and_reads_each_choice(
        suites: tuple[str, ...]) -> None:
    stream = keyed(suites)
    offer = SessionDescription.parse(build_offer([stream], "192.0.2.1", 1, 1).to_bytes())
    media = offer.media[0]
    assert media.proto == "RTP/SAVP"
    assert [(c.tag, c.suite) for c in media.cryptos] == list(enumerate(suites, start=1))
    for tag, suite in enumerate(suites, start=1):
        srs_key = bytes(KEY_LENGTHS[suite])
        answer = SessionDescription.parse(
            "v=0\r\no=- 1 1 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n"
            f"m=audio 50000 RTP/SAVP 0\r\na=crypto:{tag} {suite} inline:"
            f"{base64.b64encode(srs_key).decode()}\r\na=recvonly\r\n")
        (got,) = read_answer(answer, [stream])
        assert (got.tag, got.suite, got.remote_key) == (tag, suite, srs_key)


def test_answer_with_a_suite_under_the_wrong_tag_is_refused() -> None:
    from mediafork.sip.errors import SipParseError

    stream = keyed((SUITE_GCM_128, SUITE_80))
    answer = SessionDescription.parse(
        "v=0\r\no=- 1 1 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n"
        f"m=audio 50000 RTP/SAVP 0\r\na=crypto:1 {SUITE_80} inline:"
        f"{base64.b64encode(bytes(30)).decode()}\r\n")
    with pytest.raises(SipParseError, match="selects no offered crypto"):
        read_answer(answer, [stream])


def test_recorder_offer_is_answered_with_our_key_for_a_gcm_suite() -> None:
    stream = keyed((SUITE_80, SUITE_GCM_256))
    their = SessionDescription.parse(
        "v=0\r\no=- 1 1 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n"
        f"m=audio 50000 RTP/SAVP 0\r\na=crypto:7 {SUITE_GCM_256} inline:"
        f"{base64.b64encode(bytes(44)).decode()}\r\na=recvonly\r\n")
    sdp, (got,) = build_answer(their, [stream], "192.0.2.1", 1, 2, paused=False)
    (crypto,) = sdp.media[0].cryptos
    assert (crypto.tag, crypto.suite, crypto.key) == (7, SUITE_GCM_256, bytes([2]) * 44)
    assert got.suite == SUITE_GCM_256


def test_plain_stream_is_rtp_avp_without_crypto() -> None:
    offer = build_offer([OfferStream("1", 40000, PCMU)], "192.0.2.1", 1, 1)
    assert offer.media[0].proto == "RTP/AVP" and not offer.media[0].cryptos
