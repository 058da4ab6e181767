"""The host API's ``codec`` object (``POST /v1/Calls``), validated into a
:class:`~mediafork.recorder_api.CallCodec`.

Each rule says what a recorder would get wrong otherwise: G.722 is signalled at 8000 Hz
although it samples at 16 kHz (RFC 3551 §4.5.2), Opus always as ``opus/48000/2`` with mono
or stereo in its format parameters (RFC 7587 §7), and a static payload type names one codec
only (RFC 3551 table 4). The ``fmtp`` text goes into the SDP as it is, so it is held to one
line of printable ASCII.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..recorder_api import CallCodec
from . import errors
from .errors import ApiError

__all__ = ["codec_json", "parse_codec"]

_NAMES = re.compile(r"[A-Za-z0-9\-_.]{1,32}")
_FMTP = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,254}[\x21-\x7e])?")
"""1-256 printable ASCII characters, no leading or trailing space, no CR/LF or controls."""

_KNOWN: dict[str, tuple[str, int | None, int, int]] = {
    # lower-case name: (SDP spelling, static payload type, RTP clock rate, channels)
    "pcmu": ("PCMU", 0, 8000, 1),
    "pcma": ("PCMA", 8, 8000, 1),
    "g722": ("G722", 9, 8000, 1),
    "opus": ("opus", None, 48000, 2),
}
_STATIC = {pt: name for name, pt, _, _ in _KNOWN.values() if pt is not None}


def _invalid(message: str) -> ApiError:
    return ApiError(errors.INVALID_PARAMETER, message)


def _int(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _invalid(f"codec.{what} must be an integer {low}-{high}")
    return value


def parse_codec(value: Any) -> CallCodec:
    """``None`` → PCMU/8000 on payload type 0; otherwise an object with ``name``,
    ``payload_type``, ``clock_rate``, ``channels`` and ``fmtp`` (all optional; the defaults
    of a known codec are its own). Raises :class:`ApiError` 400 naming the field."""
    if value is None:
        return CallCodec()
    if not isinstance(value, Mapping):
        raise _invalid("codec must be an object with name, payload_type, clock_rate, "
                       "channels, fmtp")
    name = value.get("name", "PCMU")
    if not isinstance(name, str) or not _NAMES.fullmatch(name):
        raise _invalid("codec.name must be a codec name such as PCMU")
    known = _KNOWN.get(name.lower())
    spelling, static_pt, rate, channels = known or (name, None, 8000, 1)
    if "payload_type" in value:
        pt = _int(value["payload_type"], "payload_type", 0, 127)
    elif static_pt is not None:
        pt = static_pt
    else:
        raise _invalid(f"codec.payload_type is required for {spelling} (it has no static "
                       "type)")
    rate = _int(value.get("clock_rate", rate), "clock_rate", 1000, 192000)
    channels = _int(value.get("channels", channels), "channels", 1, 8)
    fmtp = value.get("fmtp")
    if fmtp is not None and (not isinstance(fmtp, str) or not _FMTP.fullmatch(fmtp)):
        raise _invalid("codec.fmtp must be the a=fmtp parameters as one line of printable "
                       "ASCII (1-256 characters), e.g. minptime=10;useinbandfec=1")
    if pt in _STATIC and _STATIC[pt] != spelling:
        raise _invalid(f"codec.payload_type {pt} is {_STATIC[pt]}'s static type (RFC 3551); "
                       f"{spelling} needs its own")
    if known is not None:
        _check_known(spelling, static_pt, known[2], known[3], pt, rate, channels)
    return CallCodec(name=spelling, payload_type=pt, clock_rate=rate, channels=channels,
                     fmtp=fmtp)


def _check_known(name: str, static_pt: int | None, rate: int, channels: int,
                 got_pt: int, got_rate: int, got_channels: int) -> None:
    if static_pt is None and got_pt < 96:
        raise _invalid(f"codec.payload_type of {name} must be a dynamic type (96-127)")
    if got_rate != rate:
        why = (" (RFC 3551: G.722's RTP clock is 8000 Hz, though it samples at 16 kHz)"
               if name == "G722" else " (RFC 7587)" if name == "opus" else "")
        raise _invalid(f"codec.clock_rate of {name} must be {rate}{why}")
    if got_channels != channels:
        why = (" (RFC 7587: always opus/48000/2; say mono or stereo in fmtp, e.g. "
               "stereo=1;sprop-stereo=1)" if name == "opus" else "")
        raise _invalid(f"codec.channels of {name} must be {channels}{why}")


def codec_json(codec: CallCodec) -> dict[str, Any]:
    """The ``codec`` object of a call's JSON (and of its stored record)."""
    return {"name": codec.name, "payload_type": codec.payload_type,
            "clock_rate": codec.clock_rate, "channels": codec.channels, "fmtp": codec.fmtp}
