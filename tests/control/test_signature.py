"""X-Twilio-Signature, checked against the official twilio RequestValidator."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from mediafork.control.signature import (
    compute_signature,
    prepare_request,
    redact_url,
    signing_string,
    verify_signature,
)

TOKEN = "12345"


def test_known_vector_from_the_platform_docs():
    # The example in the platform's webhook-security docs (and twilio-python's own tests):
    # token 12345, this URL and these POST parameters give this signature.
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+14158675310",
        "Digits": "1234",
        "From": "+14158675310",
        "To": "+18005551212",
    }
    assert compute_signature(TOKEN, url, params) == "GvWf1cFY/Q7PnoempGyD5oXAezc="
    assert RequestValidator(TOKEN).validate(url, params, "GvWf1cFY/Q7PnoempGyD5oXAezc=")


def test_signing_string_sorts_names_and_repeated_values():
    s = signing_string("https://x/", [("b", "2"), ("a", "9"), ("a", "1"), ("B", "0")])
    assert s == "https://x/B0a1a9b2"


def test_verify_signature_rejects_tampering():
    sig = compute_signature(TOKEN, "https://x/cb", {"A": "1"})
    assert verify_signature(TOKEN, "https://x/cb", {"A": "1"}, sig)
    assert not verify_signature(TOKEN, "https://x/cb", {"A": "2"}, sig)
    assert not verify_signature("other", "https://x/cb", {"A": "1"}, sig)
    assert not verify_signature(TOKEN, "https://x/cb2", {"A": "1"}, sig)


PARAMS = [
    ("AccountSid", "AC" + "a" * 32),
    ("SiprecEvent", "siprec-started"),
    ("Timestamp", "2024-01-15T10:30:00.000Z"),
    ("From", "sip:+15551230000@pbx.example"),
    ("SiprecError", "a b+c&d=e/é?"),
]


def test_post_validates_with_official_validator():
    prepared = prepare_request(TOKEN, "POST", "https://example.com:8443/cb?tag=1", PARAMS)
    assert prepared.form == tuple(PARAMS)
    assert str(prepared.url) == "https://example.com:8443/cb?tag=1"
    assert RequestValidator(TOKEN).validate(str(prepared.url), dict(PARAMS), prepared.signature)
    assert not RequestValidator("wrong").validate(
        str(prepared.url), dict(PARAMS), prepared.signature
    )


def test_get_puts_params_in_the_query_and_validates_with_official_validator():
    prepared = prepare_request(TOKEN, "GET", "https://example.com/cb?tag=1", PARAMS)
    assert prepared.form == ()
    query = parse_qsl(urlsplit(str(prepared.url)).query)
    assert query == [("tag", "1"), *PARAMS]
    # For GET the receiver validates the full URL with no POST parameters.
    assert RequestValidator(TOKEN).validate(str(prepared.url), {}, prepared.signature)
    assert not RequestValidator(TOKEN).validate(
        "https://example.com/cb?tag=1", {}, prepared.signature
    )


def test_credentials_are_dropped_from_the_signed_url():
    prepared = prepare_request(TOKEN, "POST", "https://us%40er:p%3Ass@example.com/cb", PARAMS)
    assert not hasattr(prepared, "basic_auth")  # never sent, not even as Basic auth
    assert str(prepared.url) == "https://example.com/cb"
    assert RequestValidator(TOKEN).validate("https://example.com/cb", dict(PARAMS),
                                            prepared.signature)
    assert "p:ss" not in repr(prepared) and "p%3Ass" not in repr(prepared)
    assert TOKEN not in repr(prepared)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_fragment_is_not_signed_because_it_is_never_sent(method):
    prepared = prepare_request(TOKEN, method, "https://example.com/cb?a=1#section", PARAMS)
    assert "#" not in str(prepared.url)
    params = dict(PARAMS) if method == "POST" else {}
    assert RequestValidator(TOKEN).validate(str(prepared.url), params, prepared.signature)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError):
        prepare_request(TOKEN, "PUT", "https://example.com/", [])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url,expected",
    [
        ("https://user:pass@example.com:8443/a/b?token=x#f", "https://example.com:8443/a/b"),
        ("http://example.com/cb", "http://example.com/cb"),
        ("not a url", "<relative url>"),
    ],
)
def test_redact_url(url, expected):
    assert redact_url(url) == expected


text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)


@given(
    params=st.dictionaries(text.filter(bool), text, max_size=6),
    method=st.sampled_from(["GET", "POST"]),
)
def test_any_params_validate_with_official_validator(params, method):
    prepared = prepare_request(TOKEN, method, "https://example.com/cb", params)
    validator_params = dict(prepared.form) if method == "POST" else {}
    assert RequestValidator(TOKEN).validate(str(prepared.url), validator_params,
                                            prepared.signature)
