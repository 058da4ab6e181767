"""Digest authentication (RFC 7616 §3.9.1 vectors; RFC 8760 SHA-256 for SIP)."""

from __future__ import annotations

import pytest

from mediafork.sip.digest import (
    Challenge,
    DigestClient,
    DigestVerifier,
    compute_response,
    parse_auth_params,
)
from mediafork.sip.errors import SipParseError

# RFC 7616 §3.9.1: the same request authenticated with MD5 and SHA-256.
VECTOR = {
    "username": "Mufasa",
    "password": "Circle of Life",
    "realm": "http-auth@example.org",
    "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
    "method": "GET",
    "uri": "/dir/index.html",
    "qop": "auth",
    "nc": "00000001",
    "cnonce": "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
}


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_vectors(algorithm: str, expected: str) -> None:
    assert compute_response(algorithm=algorithm, **VECTOR) == expected


def test_client_builds_authorization_matching_the_vector() -> None:
    challenge = Challenge.parse(
        'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, '
        'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
        'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )
    client = DigestClient("Mufasa", "Circle of Life")
    header = client.authorization(challenge, "GET", "/dir/index.html", cnonce=VECTOR["cnonce"])
    _, params = parse_auth_params(header)
    assert params["response"] == "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
    assert params["nc"] == "00000001" and params["opaque"].startswith("FQhe")
    again = client.authorization(challenge, "GET", "/dir/index.html")
    assert parse_auth_params(again)[1]["nc"] == "00000002"
    assert "Circle" not in repr(client)


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256", "MD5-sess", "SHA-256-sess"])
def test_verifier_accepts_client_and_rejects_wrong_password(algorithm: str) -> None:
    verifier = DigestVerifier("srs.example", {"src": "s3cret"}, algorithm=algorithm)
    challenge = Challenge.parse(verifier.challenge())
    good = DigestClient("src", "s3cret").authorization(challenge, "INVITE", "sip:rec@srs.example")
    bad = DigestClient("src", "wrong").authorization(challenge, "INVITE", "sip:rec@srs.example")
    assert verifier.verify(good, "INVITE")
    assert not verifier.verify(bad, "INVITE")
    assert not verifier.verify(good, "BYE")
    assert "s3cret" not in repr(verifier)


@pytest.mark.parametrize(
    "value",
    [
        'Basic realm="x"',
        'Digest nonce="n"',
        'Digest realm="r", nonce="n", algorithm=SHA-512',
        'Digest realm="r", nonce="n", qop="auth-int"',
        'Digest realm="r" nonce',
    ],
)
def test_bad_challenges(value: str) -> None:
    with pytest.raises(SipParseError):
        Challenge.parse(value)
