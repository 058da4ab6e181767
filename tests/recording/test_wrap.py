"""Wrap-safe extension of RTP sequence numbers and timestamps."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mediafork.recording.wrap import Unwrapper, signed_delta


def test_signed_delta() -> None:
    assert signed_delta(1, 0xFFFF, 16) == 2
    assert signed_delta(0xFFFF, 1, 16) == -2
    assert signed_delta(5, 5, 32) == 0
    assert signed_delta(0, 0xFFFFFFF0, 32) == 16


def test_sequence_wraps_forward_and_tolerates_reordering_across_the_wrap() -> None:
    u = Unwrapper(16)
    raw = [65534, 65535, 1, 0, 2]  # 0 arrives after 1: reordered across the wrap
    ext = [u.extend(v) for v in raw]
    base = ext[0]
    assert [e - base for e in ext] == [0, 1, 3, 2, 4]


def test_timestamp_wraps() -> None:
    u = Unwrapper(32)
    ext = u.extend_array(np.array([0xFFFFFF60, 0x00000000, 0x000000A0], dtype=np.uint32))
    assert np.diff(ext).tolist() == [160, 160]


def test_rejects_other_widths() -> None:
    with pytest.raises(ValueError):
        Unwrapper(8)


@given(
    start=st.integers(0, 0xFFFF),
    steps=st.lists(st.integers(-3000, 3000), min_size=1, max_size=300),
)
def test_array_extension_equals_true_positions(start: int, steps: list[int]) -> None:
    # Any walk with steps below half the range is recovered exactly, wraps included, and the
    # vectorised path agrees with the scalar one.
    true = np.cumsum([start, *steps])
    raw = (true & 0xFFFF).astype(np.uint16)
    vec = Unwrapper(16).extend_array(raw)
    scalar_u = Unwrapper(16)
    scalar = [scalar_u.extend(int(v)) for v in raw]
    assert vec.tolist() == scalar
    assert (vec - vec[0]).tolist() == (true - true[0]).tolist()
