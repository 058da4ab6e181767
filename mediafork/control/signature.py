"""``X-Twilio-Signature``: how receivers know a status callback really came from us.

The platform's scheme: take the full URL the request is sent to; for a form POST append each
parameter name followed by its value, names sorted (and, for a repeated name, its values
sorted); HMAC-SHA1 the UTF-8 bytes with the account's auth token as key; base64. For a GET,
parameters travel in the query string, which is part of the URL, and nothing is appended.

The receiver recomputes the signature from the URL *it sees*, so the URL we sign must be
byte-for-byte the URL we send. :func:`prepare_request` therefore builds the final URL itself
(GET parameters added in yarl's canonical encoding, which is also what aiohttp sends and what
aiohttp servers report as ``request.url``), drops any ``user:pass@`` credentials from it
(they are never sent: the egress policy refuses such URLs, see :mod:`.egress`), and signs
exactly that string.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from hashlib import sha1
from typing import Literal

from yarl import URL

SIGNATURE_HEADER = "X-Twilio-Signature"

Params = Mapping[str, str] | Iterable[tuple[str, str]]


def _pairs(params: Params | None) -> list[tuple[str, str]]:
    if params is None:
        return []
    if isinstance(params, Mapping):
        return [(str(k), str(v)) for k, v in params.items()]
    return [(str(k), str(v)) for k, v in params]


def signing_string(url: str, params: Params | None = None) -> str:
    """The string that is signed: URL, then name+value for each POST parameter."""
    grouped: dict[str, set[str]] = {}
    for name, value in _pairs(params):
        grouped.setdefault(name, set()).add(value)
    parts = [url]
    for name in sorted(grouped):
        for value in sorted(grouped[name]):
            parts.append(name + value)
    return "".join(parts)


def compute_signature(auth_token: str, url: str, params: Params | None = None) -> str:
    """Base64 HMAC-SHA1 of :func:`signing_string`, keyed with *auth_token*."""
    mac = hmac.new(auth_token.encode("utf-8"), signing_string(url, params).encode("utf-8"), sha1)
    return base64.b64encode(mac.digest()).decode("ascii")


def verify_signature(
    auth_token: str, url: str, params: Params | None, signature: str
) -> bool:
    """Constant-time check of a signature (for our own tests and tools)."""
    return hmac.compare_digest(compute_signature(auth_token, url, params), signature)


@dataclass(frozen=True)
class PreparedRequest:
    """Everything needed to send one signed callback request."""

    method: Literal["GET", "POST"]
    url: URL
    """The URL to request, already encoded, without credentials."""
    form: tuple[tuple[str, str], ...]
    """The form body for POST; empty for GET."""
    signature: str

    def __repr__(self) -> str:
        # Never show the credentials or the query string (it may carry tokens).
        return f"PreparedRequest(method={self.method!r}, url={redact_url(str(self.url))!r})"


def prepare_request(
    auth_token: str, method: Literal["GET", "POST"], url: str, params: Params
) -> PreparedRequest:
    """Build the final URL and body for a callback and sign them."""
    # A fragment never leaves the client, so the receiver cannot see it: do not sign it.
    # Credentials never leave: not in the request line, and not as an Authorization header.
    target = URL(url).with_fragment(None).with_user(None)
    pairs = tuple(_pairs(params))
    if method == "GET":
        # extend_query keeps the client's own query parameters, then appends ours.
        target = target.extend_query(list(pairs))
        return PreparedRequest(
            "GET", target, (), compute_signature(auth_token, str(target))
        )
    if method == "POST":
        return PreparedRequest(
            "POST", target, pairs, compute_signature(auth_token, str(target), pairs)
        )
    raise ValueError(f"unsupported method {method!r}")


def redact_url(url: str) -> str:
    """``scheme://host[:port]/path`` only: no credentials, query or fragment, for logs."""
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        return "<invalid url>"
    if not parsed.is_absolute():
        return "<relative url>"
    host = parsed.raw_host or ""
    port = f":{parsed.explicit_port}" if parsed.explicit_port is not None else ""
    return f"{parsed.scheme}://{host}{port}{parsed.raw_path}"
