"""Hypothesis strategies for the fuzz targets: seed mutation and small grammars.

Plain random bytes rarely get past a parser's first line, so most examples are real inputs
(RFC 4475 messages, a SIPREC INVITE, valid TwiML…) with a few byte-level mutations, the way a
coverage-guided fuzzer would start; the grammars below build structurally valid documents
with hostile values.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

# Bytes that matter to the parsers: separators, quoting, escapes, numbers at their limits.
INTERESTING = [
    b"\r\n", b"\r\n\r\n", b"\n", b"\r", b"\x00", b" ", b"\t", b";", b":", b",", b"=", b"<",
    b">", b'"', b"\\", b"%", b"%0", b"%zz", b"@", b"[", b"]", b"?", b"&", b"/", b"\xff", b"\xc3",
    b"\xe2\x80\xa8", b"-1", b"0", b"4294967296", b"99999999999999999999", b"Content-Length: ",
    b"Content-Length: 99999\r\n", b"v=0\r\n", b"m=audio ", b"a=crypto:", b"--", b"<!DOCTYPE",
    b"<!ENTITY a '", b"]]>", b"&a;", b"<?xml", b"Via: ", b"SIP/2.0",
]


def _mutate(seed: bytes, ops: list[tuple[int, int, bytes]]) -> bytes:
    data = bytearray(seed)
    for op, position, blob in ops:
        at = position % (len(data) + 1)
        if op == 0 and data:  # flip one byte
            data[at % len(data)] ^= (blob[0] if blob else 0x20) or 1
        elif op == 1:  # insert random bytes
            data[at:at] = blob
        elif op == 2:  # delete a range
            del data[at:at + 1 + len(blob)]
        elif op == 3:  # truncate
            del data[at:]
        elif op == 4:  # duplicate a slice (repeated headers, parts…)
            data[at:at] = data[at:at + 1 + 16 * len(blob)]
        else:  # splice in a token the parsers care about
            data[at:at] = INTERESTING[(blob[0] if blob else op) % len(INTERESTING)]
    return bytes(data)


def mutated(seeds: list[bytes], max_random: int = 512) -> st.SearchStrategy[bytes]:
    """Random bytes sometimes, mostly mutated seeds."""
    ops = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 1 << 16),
                             st.binary(max_size=12)), min_size=1, max_size=6)
    return st.one_of(
        st.binary(max_size=max_random),
        st.builds(_mutate, st.sampled_from(seeds), ops),
        st.builds(_mutate, st.sampled_from(seeds), ops),
        st.builds(_mutate, st.sampled_from(seeds), ops),
    )


# -- forms ----------------------------------------------------------------------------------

_FORM_KEYS = ["Name", "ConnectorName", "Track", "StatusCallback", "StatusCallbackMethod",
              "Status", "PauseBehavior", "RecordingChannels", "RecordingTrack", "Trim",
              "RecordingStatusCallback", "RecordingStatusCallbackMethod",
              "RecordingStatusCallbackEvent", "Parameter1.Name", "Parameter1.Value",
              "Parameter099.Name", "Parameter100.Value", "ParameterX", "Parameter0.Name"]
_FORM_VALUES = ["", "stopped", "paused", "in-progress", "both_tracks", "inbound_track",
                "GET", "post", "PUT", "https://user:pw@a.example:0/cb", "http://[::1/x",
                "https://a.example/" + "x" * 4000, "mono", "dual", "skip", "silence",
                "in-progress completed absent failed", "SR" + "0" * 32, " padded ", "a\r\nb"]


def form_pairs() -> st.SearchStrategy[list[tuple[str, str]]]:
    key = st.one_of(st.sampled_from(_FORM_KEYS),
                    st.builds(lambda n, f: f"Parameter{n}.{f}", st.integers(0, 120),
                              st.sampled_from(["Name", "Value"])),
                    st.text(max_size=20))
    value = st.one_of(st.sampled_from(_FORM_VALUES), st.text(max_size=40))
    return st.lists(st.tuples(key, value), max_size=30)


# -- TwiML ----------------------------------------------------------------------------------

_ATTRS = ["name", "connectorName", "track", "statusCallback", "statusCallbackMethod", "value",
          "length", "bogus"]


def _escape(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;"))


@st.composite
def twiml_documents(draw: st.DrawFn) -> str:
    """Documents shaped like TwiML with random verbs, nesting and attribute values."""

    def element(depth: int) -> str:
        tag = draw(st.sampled_from(["Start", "Stop", "Siprec", "Parameter", "Pause", "Say",
                                    "start", "Stream", "Response"]))
        attrs = draw(st.dictionaries(st.sampled_from(_ATTRS),
                                     st.one_of(st.sampled_from(_FORM_VALUES),
                                               st.text(max_size=30)), max_size=4))
        attr_text = "".join(f' {k}="{_escape(v)}"' for k, v in attrs.items())
        children = ("".join(element(depth + 1) for _ in range(draw(st.integers(0, 3))))
                    if depth < 3 else "")
        text = draw(st.sampled_from(["", "", " ", "text"]))
        return f"<{tag}{attr_text}>{text}{children}</{tag}>"

    body = "".join(element(1) for _ in range(draw(st.integers(0, 4))))
    root = draw(st.sampled_from(["Response", "Response", "response", "Twiml"]))
    return f"<{root}>{body}</{root}>"


# -- config ---------------------------------------------------------------------------------

_TOML_SCALARS = st.one_of(
    st.text(max_size=30), st.integers(-(1 << 63), (1 << 63) - 1), st.floats(allow_nan=True),
    st.booleans(),
    st.sampled_from(["127.0.0.1:0", "[::1]:8080", "127.0.0.1", "::1", "sip:r@127.0.0.1:5070",
                     "sips:r@h;secure=true&edge=local", "ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                     "0123456789abcdef0123", "X-Auth", "local", "Default", "secrets.key",
                     "NO_SUCH_ENV", "PATH", "http://a.example", "data/x.db", "\x00", ""]),
)
_TOML_VALUES = st.recursive(
    _TOML_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6,
)
_TABLE_KEYS: dict[str, list[str]] = {
    "api": ["listen", "public_base_url", "max_request_bytes"],
    "storage": ["path"],
    "media": ["address", "port_range"],
    "accounts": ["sid", "auth_token", "auth_token_env", "auth_token_encrypted"],
    "edges": ["name", "address", "default"],
    "connectors": ["account_sid", "unique_name", "srs", "standby_srs", "credentials_header",
                   "credentials", "credentials_env", "credentials_encrypted",
                   "digest_username", "digest_password", "digest_password_env",
                   "metadata_content_type"],
    "callbacks": ["timeout", "max_attempts"],
    "sip": ["port", "tls"],
    "secrets": ["key_file", "key_env"],
    "control_socket": ["path"],
}
_ARRAYS = {"accounts", "edges", "connectors"}


def _table(name: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.one_of(st.sampled_from(_TABLE_KEYS[name]), st.text(max_size=6)),
                           _TOML_VALUES, max_size=5)


@st.composite
def config_documents(draw: st.DrawFn) -> dict[str, Any]:
    """TOML-ish dicts: the real tables and keys with random values, and the odd stranger."""
    root: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(sorted(_TABLE_KEYS)), max_size=6, unique=True)):
        if name in _ARRAYS:
            root[name] = draw(st.one_of(st.lists(_table(name), max_size=3), _TOML_VALUES))
        else:
            root[name] = draw(st.one_of(_table(name), _table(name), _TOML_VALUES))
    if draw(st.integers(0, 9)) == 0:
        root[draw(st.text(max_size=6))] = draw(_TOML_VALUES)
    return root
