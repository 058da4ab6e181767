"""The lean SRTP sender transform (csrc/srtp_cm.h) against the RFCs' test vectors and
against libsrtp itself: for every packet, the same bytes out, or the same refusal."""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator

import pytest
from pylibsrtp import Policy, Session

from mediafork.engine import Engine, EngineError
from mediafork.media import _fastpath
from mediafork.media.srtp import SrtpKey, SrtpProfile, lean_transform_available, outbound_session

needs_lean = pytest.mark.skipif(
    not lean_transform_available(),
    reason="built without OpenSSL's headers (libssl-dev): every suite goes through libsrtp")

LEAN_PROFILES = [SrtpProfile.AES_CM_128_HMAC_SHA1_80, SrtpProfile.AES_CM_128_HMAC_SHA1_32]


def _aesni() -> bool:
    if not lean_transform_available():
        return False
    try:
        _fastpath.srtp_cm_keystream(bytes(16), bytes(16), 16, True)
    except RuntimeError:
        return False
    return True


IMPLEMENTATIONS = [False, pytest.param(True, marks=pytest.mark.skipif(
    not _aesni(), reason="this CPU has no AES-NI: the EVP path is the one in use"))]


@needs_lean
@pytest.mark.parametrize("aesni", IMPLEMENTATIONS)
def test_aes_cm_keystream_is_rfc_3711_appendix_b2(aesni: bool) -> None:
    key = bytes.fromhex("2B7E151628AED2A6ABF7158809CF4F3C")
    iv = bytes.fromhex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000")
    stream = _fastpath.srtp_cm_keystream(key, iv, 48, aesni)
    assert stream.hex().upper() == ("E03EAD0935C95E80E166B16DD92B4EB4"
                                    "D23513162B02D0F72A43A2FE4A5F97AB"
                                    "41E95B3BB0A2E8DD477901E4FCA894C0")
    # The vector's last blocks, counters 0xFEFF to 0xFF01.
    late = _fastpath.srtp_cm_keystream(key, iv[:14] + b"\xfe\xff", 48, aesni)
    assert late.hex().upper() == ("EC8CDF7398607CB0F2D21675EA9EA1E4"
                                  "362B7C3C6773516318A077D7FC5073AE"
                                  "6A2CC3787889374FBEB4C81B17BA6C44")


@needs_lean
@pytest.mark.parametrize("aesni", IMPLEMENTATIONS)
def test_aes_128_is_fips_197_appendix_c1(aesni: bool) -> None:
    # A keystream block is AES of the IV itself when the counter bits start at zero.
    key = bytes(range(16))
    plaintext = bytes.fromhex("00112233445566778899aabbccdd0000")
    expected = _fastpath.srtp_cm_keystream(key, plaintext, 16, False)
    assert _fastpath.srtp_cm_keystream(key, plaintext, 16, aesni) == expected
    fips = bytes.fromhex("00112233445566778899aabbccddeeff")
    assert _fastpath.srtp_cm_keystream(key, fips, 16, aesni).hex() == \
        "69c4e0d86a7b0430d8cdb78070b4c55a"


@needs_lean
@pytest.mark.parametrize("aesni", IMPLEMENTATIONS)
def test_long_keystreams_agree_between_aes_ni_and_evp(aesni: bool) -> None:
    rng = random.Random(7)
    for length in (1, 15, 16, 17, 63, 64, 65, 160, 1400, 2048):
        key, iv = rng.randbytes(16), rng.randbytes(14) + b"\x00\x00"
        assert _fastpath.srtp_cm_keystream(key, iv, length, aesni) == \
            _fastpath.srtp_cm_keystream(key, iv, length, False)


@needs_lean
def test_session_keys_are_rfc_3711_appendix_b3() -> None:
    master_key = bytes.fromhex("E1F97A0D3E018BE0D64FA32C06DE4139")
    master_salt = bytes.fromhex("0EC675AD498AFEEBB6960B3AABE6")
    assert _fastpath.srtp_cm_derive(master_key, master_salt, 0, 16).hex().upper() == \
        "C61E7A93744F39EE10734AFE3FF7A087"
    assert _fastpath.srtp_cm_derive(master_key, master_salt, 2, 14).hex().upper() == \
        "30CBBC08863D8C85D49DB34A9AE1"
    assert _fastpath.srtp_cm_derive(master_key, master_salt, 1, 32).hex().upper() == \
        "CEBE321F6FF7716B6FD4AB49AF256A156D38BAA48F0A0ACF3C34E2359E6CDBCE"


def _libsrtp(key: SrtpKey) -> Session:
    """libsrtp, as pylibsrtp ships it: the reference for every output."""
    return Session(Policy(key=key.master, ssrc_type=Policy.SSRC_ANY_OUTBOUND,
                          srtp_profile=key.profile.pylibsrtp_profile))


def _outcome(protect, packet: bytes) -> bytes | str:
    try:
        return protect(packet)
    except Exception:  # noqa: BLE001 - the refusal itself is what is compared
        return "refused"


def _packet(rng: random.Random, seq: int, ssrc: int) -> bytes:
    csrcs = rng.choice([0, 0, 0, 1, 15])
    extension = rng.random() < 0.2
    first = 0x80 | (0x10 if extension else 0) | csrcs
    header = struct.pack("!BBHII", first, rng.randrange(128), seq & 0xFFFF,
                         rng.getrandbits(32), ssrc)
    header += b"".join(struct.pack("!I", rng.getrandbits(32)) for _ in range(csrcs))
    if extension:
        words = rng.randrange(4)
        header += struct.pack("!HH", 0xBEDE, words) + rng.randbytes(4 * words)
    # At most 1,200 bytes of payload: pylibsrtp refuses packets over 1,500 bytes with the tag.
    return header + rng.randbytes(rng.choice([0, 1, 15, 16, 17, 160, 320, 1000, 1200]))


def _sequence(rng: random.Random, start: int, count: int) -> list[int]:
    """Sequence numbers as a fork sends them, and the odd ones it must not: steps forward,
    jumps, repeats, late packets within and beyond the 128-packet window, the wrap."""
    seqs, seq = [], start
    for _ in range(count):
        r = rng.random()
        if r < 0.80:
            seq += 1
        elif r < 0.85:
            seq += rng.randrange(2, 3000)
        elif r < 0.90:
            seqs.append(seq)  # the same index again
            continue
        elif r < 0.95:
            seqs.append(seq - rng.randrange(1, 127))
            continue
        else:
            seqs.append(seq - rng.randrange(127, 40000))
            continue
        seqs.append(seq)
    return seqs


@pytest.fixture(params=["aes-ni", "evp"])
def aes_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Contexts made in the test use AES-NI (where the CPU has it) or OpenSSL's EVP, the
    path of CPUs without AES-NI."""
    if request.param == "aes-ni" and not _aesni():
        pytest.skip("this CPU has no AES-NI: the EVP path is the one in use")
    _fastpath.srtp_cm_allow_aesni(request.param == "aes-ni")
    try:
        yield request.param
    finally:
        _fastpath.srtp_cm_allow_aesni(True)


@needs_lean
@pytest.mark.parametrize("profile", LEAN_PROFILES)
@pytest.mark.parametrize("start", [0, 1000, 32767, 32768, 40000, 65000, 65535])
def test_every_output_and_refusal_is_libsrtps(profile: SrtpProfile, start: int,
                                              aes_path: str) -> None:
    rng = random.Random(start)
    key = SrtpKey.generate(profile)
    ssrc = rng.getrandbits(32)
    lean = outbound_session(key, ssrc)
    assert lean.transform == "srtp_cm"
    reference = _libsrtp(key)
    outcomes = {"same": 0, "refused": 0}
    try:
        for seq in _sequence(rng, start, 1500):
            packet = _packet(rng, seq, ssrc)
            ours, theirs = _outcome(lean.protect, packet), _outcome(reference.protect, packet)
            assert ours == theirs, f"seq {seq & 0xFFFF}: {ours!r:.40} != {theirs!r:.40}"
            outcomes["refused" if ours == "refused" else "same"] += 1
    finally:
        lean.close()
    assert outcomes["same"] > 800 and outcomes["refused"] > 50  # both paths were taken


@needs_lean
def test_the_window_edges_are_libsrtps() -> None:
    """127 packets back is still in the window, 128 is not; a jump of 128 or more
    clears it; the ROC follows a jump past the wrap."""
    key = SrtpKey.generate()
    lean, reference = outbound_session(key, 7), _libsrtp(key)
    seqs = [1000, 873, 872, 1000, 999, 1128, 1001, 1000, 1129, 1257, 1130, 1129,
            40000, 7000, 65535, 0, 30000, 32768, 1]
    # 7000 after 40000 is 32,536 ahead in ROC 1, so 65535 and 0 (ROC 0 then 1) are
    # 7,001 and 7,000 behind it; 1 after 32768 is 32,767 behind.
    expected = ["ok", "ok", "refused", "refused", "ok", "ok", "ok", "refused", "ok", "ok",
                "ok", "refused", "ok", "ok", "refused", "refused", "ok", "ok", "refused"]
    try:
        got = []
        for seq in seqs:
            packet = struct.pack("!BBHII", 0x80, 0, seq, 0, 7) + b"\x00" * 20
            ours, theirs = _outcome(lean.protect, packet), _outcome(reference.protect, packet)
            assert ours == theirs, f"seq {seq}"
            got.append("refused" if ours == "refused" else "ok")
        assert got == expected
    finally:
        lean.close()


@needs_lean
@pytest.mark.parametrize("profile", LEAN_PROFILES)
def test_a_receiver_follows_the_rollover_counter(profile: SrtpProfile) -> None:
    key = SrtpKey.generate(profile)
    lean = outbound_session(key, 0x55AA55AA)
    receiver = Session(Policy(key=key.master, ssrc_type=Policy.SSRC_ANY_INBOUND,
                              srtp_profile=profile.pylibsrtp_profile))
    try:
        for i in range(65530, 65530 + 20):  # through the wrap: ROC 0 then 1
            payload = i.to_bytes(4, "big") * 40
            packet = struct.pack("!BBHII", 0x80, 0, i & 0xFFFF, i * 160, 0x55AA55AA) + payload
            protected = lean.protect(packet)
            assert len(protected) == len(packet) + (10 if "80" in profile.value else 4)
            assert receiver.unprotect(protected) == packet
    finally:
        lean.close()


@needs_lean
@pytest.mark.parametrize("packet", [
    b"", b"\x80" * 11,
    struct.pack("!BBHII", 0x8F, 0, 1, 0, 1) + b"\x00" * 8,  # 15 CSRCs announced, 2 present
    struct.pack("!BBHII", 0x90, 0, 1, 0, 1) + b"\xbe\xde",  # extension header cut short
    struct.pack("!BBHII", 0x90, 0, 1, 0, 1) + b"\xbe\xde\x00\x09" + b"\x00" * 8,
], ids=["empty", "short", "csrcs", "extension-header", "extension-length"])
def test_malformed_packets_are_refused_as_libsrtp_refuses_them(packet: bytes) -> None:
    key = SrtpKey.generate()
    lean = outbound_session(key, 1)
    try:
        assert _outcome(lean.protect, packet) == "refused" == _outcome(_libsrtp(key).protect, packet)
    finally:
        lean.close()


@needs_lean
def test_an_index_is_never_protected_twice() -> None:
    """The same index twice would encrypt two payloads with one keystream."""
    lean = outbound_session(SrtpKey.generate(), 9)
    packet = struct.pack("!BBHII", 0x80, 0, 500, 0, 9) + b"\x01" * 160
    try:
        first = lean.protect(packet)
        with pytest.raises(ValueError, match="status 9"):
            lean.protect(packet)
        lean.protect(struct.pack("!BBHII", 0x80, 0, 900, 0, 9) + b"\x01" * 160)
        with pytest.raises(ValueError, match="status 10"):  # behind the 128-packet window
            lean.protect(packet)
        assert first != packet
    finally:
        lean.close()


def test_gcm_suites_and_the_libsrtp_setting_keep_libsrtp() -> None:
    sessions = [outbound_session(SrtpKey.generate(SrtpProfile.AEAD_AES_128_GCM), 1),
                outbound_session(SrtpKey.generate(SrtpProfile.AEAD_AES_256_GCM), 1),
                outbound_session(SrtpKey.generate(), 1, "libsrtp")]
    try:
        assert [s.transform for s in sessions] == ["libsrtp"] * 3
    finally:
        for s in sessions:
            s.close()
    with pytest.raises(ValueError, match="transform must be one of"):
        outbound_session(SrtpKey.generate(), 1, "openssl")


@needs_lean
def test_sessions_free_their_memory_when_closed() -> None:
    # No garbage collection: close() frees the contexts, with their keys.
    before = Engine.live_allocations()
    sessions = [outbound_session(SrtpKey.generate(), i) for i in range(200)]
    assert Engine.live_allocations() > before
    for s in sessions:
        s.close()
        s.close()  # idempotent
    assert Engine.live_allocations() == before
    with pytest.raises(RuntimeError, match="closed"):
        sessions[0].protect(b"\x80" * 12)


def test_the_engine_setting_is_checked_and_reported() -> None:
    with pytest.raises(EngineError, match="srtp_transform must be one of"):
        Engine(threaded=False, srtp_transform="fast")
    lean = "srtp_cm" if lean_transform_available() else "libsrtp"
    for setting, expected in (("auto", lean), ("libsrtp", "libsrtp")):
        engine = Engine(threaded=False, srtp_transform=setting)
        try:
            assert engine.srtp_transform == expected
        finally:
            engine.close()
