"""G.711 tables against independent reference decoders/encoders (audioop, sox)."""

from __future__ import annotations

import shutil
import subprocess
import warnings

import numpy as np
import pytest

from mediafork.recording import g711

with warnings.catch_warnings():
    # audioop is deprecated (removed in 3.13) but is a good independent reference where present.
    warnings.simplefilter("ignore", DeprecationWarning)
    audioop = pytest.importorskip("audioop", reason="audioop removed from this Python")

ALL_CODES = bytes(range(256))
ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)


@pytest.mark.parametrize(
    ("decode", "reference"),
    [(g711.ulaw_decode, "ulaw2lin"), (g711.alaw_decode, "alaw2lin")],
    ids=["ulaw", "alaw"],
)
def test_decode_matches_audioop_for_all_codes(decode, reference) -> None:
    expected = np.frombuffer(getattr(audioop, reference)(ALL_CODES, 2), dtype=np.int16)
    got = decode(ALL_CODES)
    assert got.dtype == np.int16
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    ("encode", "reference"),
    [(g711.ulaw_encode, "lin2ulaw"), (g711.alaw_encode, "lin2alaw")],
    ids=["ulaw", "alaw"],
)
def test_encode_matches_audioop_for_all_samples(encode, reference) -> None:
    expected = getattr(audioop, reference)(ALL_SAMPLES.tobytes(), 2)
    assert encode(ALL_SAMPLES) == expected


def test_known_values() -> None:
    # Fixed points of the standard: µ-law 0xFF/0x7F are ±0, 0x00 is the most negative value;
    # A-law 0xD5/0x55 are the smallest positive/negative steps.
    assert g711.ULAW_TO_LINEAR[0xFF] == 0 and g711.ULAW_TO_LINEAR[0x7F] == 0
    assert g711.ULAW_TO_LINEAR[0x00] == -32124 and g711.ULAW_TO_LINEAR[0x80] == 32124
    assert g711.ALAW_TO_LINEAR[0xD5] == 8 and g711.ALAW_TO_LINEAR[0x55] == -8
    assert g711.ALAW_TO_LINEAR[0xAA] == 32256 and g711.ALAW_TO_LINEAR[0x2A] == -32256


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_encode_decode_round_trip(law: str) -> None:
    decode = getattr(g711, f"{law}_decode")
    encode = getattr(g711, f"{law}_encode")
    levels = decode(ALL_CODES)
    codes = np.frombuffer(encode(levels), dtype=np.uint8)
    # Every reconstruction level re-encodes to its own code (µ-law's -0, 0x7F, becomes +0, 0xFF).
    expected = np.arange(256, dtype=np.uint8)
    if law == "ulaw":
        expected[0x7F] = 0xFF
    np.testing.assert_array_equal(codes, expected)
    # Quantisation error is bounded by the top segment's step (1024 in 16-bit units): half a step
    # for A-law; µ-law's top level is 32124, so full-scale inputs also see clipping (32767 - 32124).
    err = np.abs(decode(encode(ALL_SAMPLES)).astype(np.int32) - ALL_SAMPLES)
    assert err.max() <= (644 if law == "ulaw" else 512)


def test_tables_are_read_only_and_decoder_lookup() -> None:
    with pytest.raises(ValueError):
        g711.ULAW_TO_LINEAR[0] = 1
    assert g711.decoder_for("pcmu") is g711.ULAW_TO_LINEAR
    assert g711.decoder_for("PCMA") is g711.ALAW_TO_LINEAR
    with pytest.raises(ValueError, match="unsupported codec"):
        g711.decoder_for("opus")


@pytest.mark.skipif(shutil.which("sox") is None, reason="sox not installed")
@pytest.mark.parametrize(("sox_type", "decode"), [("ul", g711.ulaw_decode), ("al", g711.alaw_decode)])
def test_decode_matches_sox(sox_type: str, decode) -> None:
    out = subprocess.run(
        ["sox", "-t", sox_type, "-r", "8000", "-c", "1", "-", "-t", "s16", "-e", "signed", "-L", "-"],
        input=ALL_CODES,
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    np.testing.assert_array_equal(decode(ALL_CODES), np.frombuffer(out, dtype="<i2"))
