"""SRTP profiles, master keys and SRTP sessions for the forwarding path.

libsrtp is the copy inside pylibsrtp. Its entry points are handed to the C
data plane once, at import, so that the same library (and its OpenSSL
backend) serves the control plane, the tests and the hot path. For the AES-CM
suites the RTP a fork sends is protected by the lean sender transform of
csrc/srtp_cm.h instead, where the build has it (``SRTP_TRANSFORMS``).
"""

from __future__ import annotations

import base64
import enum
import secrets
from dataclasses import dataclass

from pylibsrtp import Policy

from . import _fastpath

# Private parts of pylibsrtp this module relies on (pyproject.toml bounds pylibsrtp to the
# releases that have them; tests/release/test_pylibsrtp_internals.py checks each one).
LIBSRTP_ENTRY_POINTS = ("srtp_create", "srtp_dealloc", "srtp_protect", "srtp_protect_rtcp",
                        "srtp_unprotect", "srtp_unprotect_rtcp")


def _private_binding() -> tuple[object, object]:
    """pylibsrtp's cffi ``ffi`` and ``lib``, or an error that says what moved."""
    import pylibsrtp

    version = getattr(pylibsrtp, "__version__", "?")
    try:
        from pylibsrtp._binding import ffi, lib
    except ImportError as exc:
        raise ImportError(
            f"mediafork needs pylibsrtp's private _binding module (ffi, lib), which pylibsrtp "
            f"{version} does not have; install a release within the bounds in pyproject.toml"
        ) from exc
    missing = [name for name in LIBSRTP_ENTRY_POINTS if not hasattr(lib, name)]
    if missing or not hasattr(Policy(), "_policy"):
        what = ", ".join(missing) if missing else "Policy._policy"
        raise ImportError(f"pylibsrtp {version} no longer exposes {what}, which mediafork's "
                          "data plane uses; install a release within the bounds in pyproject.toml")
    return ffi, lib


ffi, lib = _private_binding()


def _address(name: str) -> int:
    return int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))


_fastpath.bind_srtp(*(_address(name) for name in LIBSRTP_ENTRY_POINTS))


# How the RTP of an AES-CM fork is protected: "auto" (the lean transform where this build
# has it, else libsrtp) or "libsrtp" (always). SRTCP and the GCM suites are libsrtp's.
SRTP_TRANSFORMS = ("auto", "libsrtp")


def lean_transform_available() -> bool:
    """Whether this build has csrc/srtp_cm (OpenSSL found when it was compiled)."""
    return bool(_fastpath.srtp_cm_available())


class SrtpProfile(enum.Enum):
    """SRTP crypto suites, named as in SDES `a=crypto` (RFC 4568, RFC 7714)."""

    AES_CM_128_HMAC_SHA1_80 = "AES_CM_128_HMAC_SHA1_80"
    AES_CM_128_HMAC_SHA1_32 = "AES_CM_128_HMAC_SHA1_32"
    AEAD_AES_128_GCM = "AEAD_AES_128_GCM"
    AEAD_AES_256_GCM = "AEAD_AES_256_GCM"

    @property
    def pylibsrtp_profile(self) -> int:
        return {
            SrtpProfile.AES_CM_128_HMAC_SHA1_80: Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
            SrtpProfile.AES_CM_128_HMAC_SHA1_32: Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
            SrtpProfile.AEAD_AES_128_GCM: Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
            SrtpProfile.AEAD_AES_256_GCM: Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
        }[self]

    @property
    def master_length(self) -> int:
        """Bytes of master key + master salt."""
        profile = self.pylibsrtp_profile
        return lib.srtp_profile_get_master_key_length(
            profile
        ) + lib.srtp_profile_get_master_salt_length(profile)


@dataclass(frozen=True, repr=False)
class SrtpKey:
    """A master key + salt for one direction of one forked stream.

    Never printed: repr() and str() show the profile only.
    """

    profile: SrtpProfile
    master: bytes

    def __post_init__(self) -> None:
        if len(self.master) != self.profile.master_length:
            raise ValueError(
                f"{self.profile.value} needs {self.profile.master_length} bytes of key and salt"
            )

    @classmethod
    def generate(cls, profile: SrtpProfile = SrtpProfile.AES_CM_128_HMAC_SHA1_80) -> SrtpKey:
        return cls(profile, secrets.token_bytes(profile.master_length))

    @classmethod
    def from_sdes(cls, suite: str, inline_key: str) -> SrtpKey:
        """From an `a=crypto` suite name and its base64 `inline:` key."""
        try:
            profile = SrtpProfile(suite)
        except ValueError:
            raise ValueError(f"unsupported SRTP suite {suite!r}") from None
        try:
            master = base64.b64decode(inline_key, validate=True)
        except ValueError:
            raise ValueError("SDES key is not valid base64") from None
        return cls(profile, master)

    def sdes_inline(self) -> str:
        """Base64 key+salt for an `a=crypto ... inline:` attribute."""
        return base64.b64encode(self.master).decode("ascii")

    def __repr__(self) -> str:
        return f"SrtpKey(profile={self.profile.value}, master=<redacted>)"

    __str__ = __repr__


# The suites csrc/srtp_cm protects, and their tag lengths (RFC 4568 6.2.1).
_LEAN_TAG_LENGTHS = {
    SrtpProfile.AES_CM_128_HMAC_SHA1_80: 10,
    SrtpProfile.AES_CM_128_HMAC_SHA1_32: 4,
}


def outbound_session(key: SrtpKey, ssrc: int | None = None, transform: str = "auto"
                     ) -> _fastpath.SrtpSession:
    """An SRTP session that protects what we send with `key`: RTP through the lean
    transform for the AES-CM suites when `transform` is "auto" and the build has it,
    otherwise through libsrtp; SRTCP always through libsrtp.

    With `ssrc` the stream exists from creation, so libsrtp never clones a
    template (an allocation) on the worker's first packet."""
    if transform not in SRTP_TRANSFORMS:
        raise ValueError(f"transform must be one of {', '.join(SRTP_TRANSFORMS)}, got {transform!r}")
    policy = Policy(
        key=key.master,
        ssrc_type=Policy.SSRC_ANY_OUTBOUND if ssrc is None else Policy.SSRC_SPECIFIC,
        ssrc_value=ssrc or 0,
        srtp_profile=key.profile.pylibsrtp_profile,
    )
    tag_len = _LEAN_TAG_LENGTHS.get(key.profile)
    if transform == "auto" and tag_len is not None and lean_transform_available():
        return _fastpath.SrtpSession(int(ffi.cast("uintptr_t", policy._policy)), key.master,
                                     tag_len)
    return _fastpath.SrtpSession(int(ffi.cast("uintptr_t", policy._policy)))


def inbound_session(key: SrtpKey) -> _fastpath.SrtpSession:
    """A libsrtp session that authenticates SRTCP the recorder sends with `key`."""
    policy = Policy(
        key=key.master,
        ssrc_type=Policy.SSRC_ANY_INBOUND,
        srtp_profile=key.profile.pylibsrtp_profile,
    )
    return _fastpath.SrtpSession(int(ffi.cast("uintptr_t", policy._policy)))
