"""HTTP digest authentication for SIP (RFC 3261 §22, RFC 7616, RFC 8760).

The client answers a 401/407 challenge; the verifier is for the reference recorder and tests.
MD5 and SHA-256 (and their -sess variants) with ``qop=auth`` (or no qop, RFC 2069 style).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field

from .errors import SipParseError, excerpt
from .headers import quote

ALGORITHMS = {
    "MD5": hashlib.md5,
    "MD5-SESS": hashlib.md5,
    "SHA-256": hashlib.sha256,
    "SHA-256-SESS": hashlib.sha256,
}
_PARAM_RE = re.compile(r'\s*([A-Za-z0-9_\-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*)\s*(,|$)')


def parse_auth_params(value: str) -> tuple[str, dict[str, str]]:
    """Parse ``Digest k=v, k="v"...`` into (scheme, params with lower-case names)."""
    scheme, _, rest = value.strip().partition(" ")
    if not scheme:
        raise SipParseError("empty authentication header")
    params: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        match = _PARAM_RE.match(rest, pos)
        if not match or match.end() == pos:
            raise SipParseError(f"malformed authentication parameters: {excerpt(rest[pos:])}")
        name, raw = match.group(1).lower(), match.group(2)
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[name] = raw
        pos = match.end()
    return scheme, params


@dataclass(frozen=True)
class Challenge:
    """A parsed WWW-Authenticate / Proxy-Authenticate digest challenge."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False
    userhash: bool = False

    @classmethod
    def parse(cls, value: str) -> Challenge:
        """Parse a challenge; raise SipParseError if it is not a usable Digest challenge."""
        scheme, params = parse_auth_params(value)
        if scheme.lower() != "digest":
            raise SipParseError(f"unsupported authentication scheme {excerpt(scheme)}")
        if "realm" not in params or "nonce" not in params:
            raise SipParseError("digest challenge lacks realm or nonce")
        algorithm = params.get("algorithm", "MD5").upper()
        if algorithm not in ALGORITHMS:
            raise SipParseError(f"unsupported digest algorithm {excerpt(algorithm)}")
        qop = tuple(q.strip().lower() for q in params.get("qop", "").split(",") if q.strip())
        if qop and "auth" not in qop:
            raise SipParseError("digest challenge offers no qop we support (auth)")
        return cls(
            params["realm"],
            params["nonce"],
            algorithm,
            qop,
            params.get("opaque"),
            params.get("stale", "").lower() == "true",
            params.get("userhash", "").lower() == "true",
        )


def _h(algorithm: str, data: str) -> str:
    return ALGORITHMS[algorithm.upper()](data.encode("utf-8")).hexdigest()


def compute_response(
    *,
    algorithm: str,
    username: str,
    password: str,
    realm: str,
    nonce: str,
    method: str,
    uri: str,
    qop: str | None,
    nc: str = "00000001",
    cnonce: str = "",
    body: bytes = b"",
) -> str:
    """The digest ``response`` value (RFC 7616 §3.4.1; qop=auth-int hashes the body)."""
    ha1 = _h(algorithm, f"{username}:{realm}:{password}")
    if algorithm.upper().endswith("-SESS"):
        ha1 = _h(algorithm, f"{ha1}:{nonce}:{cnonce}")
    a2 = f"{method}:{uri}"
    if qop == "auth-int":
        a2 += ":" + ALGORITHMS[algorithm.upper()](body).hexdigest()
    ha2 = _h(algorithm, a2)
    if qop:
        return _h(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _h(algorithm, f"{ha1}:{nonce}:{ha2}")


@dataclass
class DigestClient:
    """Answers challenges for one set of credentials, counting nonce uses (``nc``)."""

    username: str
    password: str = field(repr=False)
    _nc: dict[str, int] = field(default_factory=dict, repr=False)

    def authorization(
        self, challenge: Challenge, method: str, uri: str, cnonce: str | None = None
    ) -> str:
        """Build the Authorization / Proxy-Authorization value answering ``challenge``."""
        qop = "auth" if "auth" in challenge.qop else None
        count = self._nc.get(challenge.nonce, 0) + 1
        self._nc[challenge.nonce] = count
        nc = f"{count:08x}"
        cnonce = cnonce if cnonce is not None else secrets.token_hex(16)
        response = compute_response(
            algorithm=challenge.algorithm,
            username=self.username,
            password=self.password,
            realm=challenge.realm,
            nonce=challenge.nonce,
            method=method,
            uri=uri,
            qop=qop,
            nc=nc,
            cnonce=cnonce,
        )
        parts = [
            f"username={quote(self.username)}",
            f"realm={quote(challenge.realm)}",
            f"nonce={quote(challenge.nonce)}",
            f"uri={quote(uri)}",
            f"response={quote(response)}",
            f"algorithm={challenge.algorithm}",
        ]
        if qop:
            parts += [f"qop={qop}", f"nc={nc}", f"cnonce={quote(cnonce)}"]
        if challenge.opaque is not None:
            parts.append(f"opaque={quote(challenge.opaque)}")
        return "Digest " + ", ".join(parts)


@dataclass
class DigestVerifier:
    """Server side: issue challenges and check answers (reference recorder, tests)."""

    realm: str
    credentials: dict[str, str] = field(repr=False)
    """username -> password."""
    algorithm: str = "MD5"
    _nonces: set[str] = field(default_factory=set, repr=False)

    def challenge(self) -> str:
        """A fresh WWW-Authenticate value."""
        nonce = secrets.token_urlsafe(24)
        self._nonces.add(nonce)
        return (
            f"Digest realm={quote(self.realm)}, nonce={quote(nonce)}, "
            f'algorithm={self.algorithm}, qop="auth"'
        )

    def verify(self, header: str, method: str) -> bool:
        """True if ``header`` (an Authorization value) is a valid answer to one of our nonces."""
        try:
            scheme, params = parse_auth_params(header)
        except SipParseError:
            return False
        if scheme.lower() != "digest" or params.get("nonce") not in self._nonces:
            return False
        password = self.credentials.get(params.get("username", ""))
        if password is None or params.get("realm") != self.realm:
            return False
        algorithm = params.get("algorithm", "MD5")
        if algorithm.upper() not in ALGORITHMS:
            return False
        expected = compute_response(
            algorithm=algorithm,
            username=params["username"],
            password=password,
            realm=self.realm,
            nonce=params["nonce"],
            method=method,
            uri=params.get("uri", ""),
            qop=params.get("qop"),
            nc=params.get("nc", ""),
            cnonce=params.get("cnonce", ""),
        )
        return hmac.compare_digest(expected, params.get("response", ""))
