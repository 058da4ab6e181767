"""mediafork's data plane takes libsrtp's entry points from pylibsrtp's *private* cffi
binding (mediafork/media/srtp.py). pyproject.toml bounds pylibsrtp to releases that have
them; these tests say exactly which internal moved when a release breaks that."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def _pylibsrtp_requirement() -> Requirement:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for text in project["dependencies"]:
        requirement = Requirement(text)
        if requirement.name == "pylibsrtp":
            return requirement
    raise AssertionError("pylibsrtp is not a runtime dependency in pyproject.toml")


def test_pylibsrtp_is_bounded_above_and_the_installed_release_is_within_bounds():
    requirement = _pylibsrtp_requirement()
    assert any(spec.operator in ("<", "<=", "~=", "==") for spec in requirement.specifier), (
        "pylibsrtp must have an upper bound: mediafork relies on its private internals")
    installed = importlib.metadata.version("pylibsrtp")
    assert requirement.specifier.contains(installed), (
        f"installed pylibsrtp {installed} is outside {requirement}")


def test_private_binding_has_every_entry_point_the_data_plane_takes():
    from mediafork.media.srtp import LIBSRTP_ENTRY_POINTS

    binding = pytest.importorskip("pylibsrtp._binding",
                                  reason="checked by the import of mediafork.media.srtp")
    for name in LIBSRTP_ENTRY_POINTS:
        assert hasattr(binding.lib, name), f"pylibsrtp._binding.lib.{name} is gone"
        address = int(binding.ffi.cast("uintptr_t", binding.ffi.addressof(binding.lib, name)))
        assert address != 0, f"pylibsrtp._binding.lib.{name} has no address"


def test_policy_still_carries_a_libsrtp_policy_pointer():
    from pylibsrtp import Policy
    from pylibsrtp._binding import ffi

    policy = Policy(key=b"\x01" * 30, ssrc_type=Policy.SSRC_ANY_OUTBOUND)
    raw = getattr(policy, "_policy", None)
    assert raw is not None, "pylibsrtp.Policy no longer has _policy"
    assert ffi.typeof(raw).cname in ("srtp_policy_t *", "struct srtp_policy_t *"), (
        ffi.typeof(raw).cname)


def test_a_release_without_the_binding_fails_with_a_clear_message(monkeypatch):
    import sys

    import mediafork.media.srtp as srtp

    # As if pylibsrtp dropped its private module: the error names it and the bounds.
    monkeypatch.setitem(sys.modules, "pylibsrtp._binding", None)
    with pytest.raises(ImportError, match=r"private _binding module.*bounds in pyproject.toml"):
        srtp._private_binding()
