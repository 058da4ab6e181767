"""RecorderHealth (sans-I/O): what an OPTIONS outcome means, down after N failures, up after
one answer, one probe in flight per recorder, ordering with down recorders last."""

from __future__ import annotations

import pytest

from mediafork.sip.recorder_health import HealthConfig, RecorderHealth, probe_alive

A = ("udp", "192.0.2.1", 5060)
B = ("udp", "192.0.2.2", 5060)


@pytest.mark.parametrize("status", [200, 302, 403, 404, 405, 481, 501, 603])
def test_any_final_answer_but_408_and_server_failures_is_alive(status: int) -> None:
    assert probe_alive(status)


@pytest.mark.parametrize("status", [None, 100, 180, 408, 500, 503, 504])
def test_no_answer_timeout_and_server_failures_are_failures(status: int | None) -> None:
    assert not probe_alive(status)


def test_down_after_n_failures_up_after_one_answer_one_probe_in_flight() -> None:
    health = RecorderHealth(HealthConfig(interval=10.0, timeout=1.0, down_after=2))
    health.set_targets([A, B], now=0.0)
    assert health.due(5.0) == []  # the first probe waits one interval
    assert health.due(10.0) == [A, B]
    assert health.due(10.0) == []  # in flight: never two at once
    assert health.result(A, None, 11.0) is None  # one failure is not enough
    assert health.result(B, 200, 11.0) is None
    assert not health.is_down(A)
    assert health.next_deadline() == 21.0
    assert health.due(20.0) == []
    assert health.due(21.0) == [A, B]
    assert health.result(A, 503, 21.5) is False  # the second in a row: down
    assert health.result(B, 404, 21.5) is None  # 404 is an answer: up
    assert health.states() == {A: False, B: True}
    assert health.order(["a", "b"], [A, B]) == ["b", "a"]
    assert health.due(31.5) == [A, B]
    assert health.result(A, None, 32.0) is None  # still down: no change to report
    assert health.due(42.0) == [A]  # B's probe is still out
    health.result(B, 200, 42.0)
    assert health.result(A, 200, 42.1) is True  # one answer: up again
    assert health.order(["a", "b"], [A, B]) == ["a", "b"]


def test_disabled_probes_nothing_and_reload_keeps_marks() -> None:
    off = RecorderHealth(HealthConfig(interval=0))
    off.set_targets([A], now=0.0)
    assert off.due(1e9) == [] and off.next_deadline() is None
    health = RecorderHealth(HealthConfig(interval=1.0, down_after=1))
    health.set_targets([A, B], now=0.0)
    health.due(1.0)
    health.result(A, None, 1.0)
    health.set_targets([A], now=1.5)  # B removed by a reload; A keeps its mark
    assert health.states() == {A: False}
    assert health.result(B, 200, 2.0) is None  # a probe that outlived its target
    assert health.order(["x"], [B]) == ["x"]  # unknown recorders are up
