"""What a secret value may look like, whatever its source.

A secret reaches the daemon inline in the config file, from an environment variable
(``*_env``), decrypted from a Fernet token (``*_encrypted``), or on the standard input of
``mediafork secret encrypt``. The same rules apply to the resolved value in every case: a CR or
LF that slips in through an environment variable ends up in a SIP header just as surely as one
typed into the file, and fails every Siprec on that connector far from its cause.

The functions here return the *problem* as text, never the value, so callers can put it in an
error message next to the key path without leaking the secret.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["AUTH_TOKEN", "DIGEST_PASSWORD", "HEADER_VALUE", "SecretRule", "ANY_SECRET",
           "CONTROL_CHARACTERS"]

CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
"""C0 and C1 controls and DEL: CR, LF, NUL, TAB, ESC, … (never part of a real secret)."""


@dataclass(frozen=True)
class SecretRule:
    """Bounds for one kind of secret."""

    min_chars: int = 1
    max_chars: int = 1024
    """Generous for any token or password; a larger value is a pasted file, not a secret."""
    header_value: bool = False
    """Sent verbatim as a SIP header value: leading or trailing whitespace would be
    stripped by the recorder's parser, so the recorder would compare a different value."""

    def problem(self, value: str) -> str | None:
        """Why *value* is not acceptable, or None. The text never contains the value."""
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # an environment variable holding bytes that are not UTF-8
            return "is not valid UTF-8"
        if CONTROL_CHARACTERS.search(value):
            return "must not contain control characters (CR, LF, NUL, TAB, ...)"
        if len(value) < self.min_chars:
            return f"must be at least {self.min_chars} characters"
        if len(value) > self.max_chars:
            return f"must be at most {self.max_chars} characters"
        if self.header_value and value != value.strip():
            return "must not start or end with whitespace (it is sent as a SIP header value)"
        return None


ANY_SECRET = SecretRule()
AUTH_TOKEN = SecretRule(min_chars=16)
"""The HTTP Basic password of an account and the key of its callback signatures."""
HEADER_VALUE = SecretRule(header_value=True)
"""A connector's ``credentials``: the value of its ``credentials_header``."""
DIGEST_PASSWORD = SecretRule()
