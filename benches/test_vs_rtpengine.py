"""mediafork against rtpengine (benches/vs_rtpengine.py) under scripts/bench: CPU per forked
packet, loss and p99 added latency of both engines, and the C floor, per load step.

``MEDIAFORK_BENCH_RTPENGINE_CALLS`` (100,500,1000) and ``MEDIAFORK_BENCH_RTPENGINE_SECONDS``
(5) size it (about 8 minutes with the defaults); with ``--benchmark-disable`` it is a
smoke run of 20 calls, one cell, two seconds."""

from __future__ import annotations

import traceback

import pytest

from mediafork.mediasource.local_rtpengine import find_rtpengine

from . import vs_rtpengine


@pytest.mark.e2e
@pytest.mark.skipif(find_rtpengine() is None,
                    reason="rtpengine is not installed (Debian package rtpengine-daemon)")
def test_vs_rtpengine(benchmark):
    if benchmark.disabled:
        steps, seconds, cells = [20], 2.0, ((2, True),)
    else:
        steps, seconds = vs_rtpengine.steps_from_env(), vs_rtpengine.seconds_from_env()
        cells = vs_rtpengine.DEFAULT_CELLS
    result: dict = {}

    def once() -> None:
        # A failure is kept and asserted after the timing: a benchmark without stats makes
        # pytest-benchmark's JSON writer crash, which would hide every other result.
        try:
            result.update(vs_rtpengine.run(steps, seconds, cells, say=lambda _: None))
        except Exception:
            result["error"] = traceback.format_exc()

    benchmark.pedantic(once, rounds=1, iterations=1)
    assert "error" not in result, result["error"]
    benchmark.extra_info["vs_rtpengine"] = result
    for key in ("vs_rtpengine_cpu_ratio_500", "vs_rtpengine_cpu_ratio_1000",
                "mediafork_cpu_100_vs_500"):
        if key in result:
            benchmark.extra_info[key] = result[key]
    for cell in result["cells"]:
        # Both engines forked what they were given (a bench that measured nothing fails).
        assert cell["mediafork"]["sink_received"] > 0
        assert cell["rtpengine"]["sink_received"] > 0


@pytest.mark.parametrize(("cell", "pinned", "expected"), [
    ({"loss_pct": 0.0, "core_busy": 0.62}, True, False),
    ({"loss_pct": 0.5, "core_busy": 0.62}, True, True),   # losing packets
    ({"loss_pct": 0.0, "core_busy": 0.97}, True, True),   # its whole pinned core
    ({"loss_pct": 0.0, "core_busy": 0.97}, False, False),  # unpinned: it may use another
    ({"loss_pct": 0.0}, True, False),                      # a result without the figure
])
def test_a_saturated_engine_is_told_apart(cell: dict, pinned: bool, expected: bool) -> None:
    assert vs_rtpengine.saturated(cell, pinned) is expected
