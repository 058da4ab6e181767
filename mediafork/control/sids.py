"""Resource SIDs: two-letter prefix + 32 hex digits, as in the platform.

New SIDs come from :mod:`secrets`: a SID is also an unguessable handle (a client that does
not own a resource must not be able to find it by trying SIDs), so ``random`` will not do.
"""

from __future__ import annotations

import re
import secrets

from .errors import INVALID_SID, ApiError

ACCOUNT = "AC"
CALL = "CA"
SIPREC = "SR"
RECORDING = "RE"
CONFERENCE = "CF"

PREFIXES = frozenset({ACCOUNT, CALL, SIPREC, RECORDING, CONFERENCE})

# The reference OpenAPI patterns are ``^XX[0-9a-fA-F]{32}$``: mixed-case hex is valid input,
# even though we only ever generate lowercase. We use fullmatch because Python's ``$``
# also matches before a trailing newline, which would let "SR…\n" through.
_HEX32 = "[0-9a-fA-F]{32}"
_PATTERNS = {prefix: re.compile(prefix + _HEX32) for prefix in PREFIXES}


def new_sid(prefix: str) -> str:
    """A fresh SID with the given prefix, e.g. ``new_sid("SR")``."""
    if prefix not in PREFIXES:
        raise ValueError(f"unknown SID prefix {prefix!r}")
    return prefix + secrets.token_hex(16)


def is_sid(value: object, prefix: str) -> bool:
    """Whether *value* is a syntactically valid SID with *prefix*."""
    pattern = _PATTERNS.get(prefix)
    if pattern is None:
        raise ValueError(f"unknown SID prefix {prefix!r}")
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def require_sid(value: object, prefix: str, field: str) -> str:
    """Return *value* if it is a valid SID with *prefix*, else raise ApiError(400).

    For SIDs in request bodies. SIDs in URL paths should answer 404 instead (the resource
    cannot exist), which the HTTP layer does with :func:`is_sid`.
    """
    if not is_sid(value, prefix):
        raise ApiError(
            INVALID_SID, f"{field} must be '{prefix}' followed by 32 hexadecimal digits"
        )
    assert isinstance(value, str)
    return value
