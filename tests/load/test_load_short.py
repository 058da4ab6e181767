"""The short, bounded version of `scripts/load` (issue 7 §3).

50 calls x 2 both-tracks Siprecs (200 SRTP forked streams, 5,000 packets/s in and 10,000 out)
through the daemon in its own process, against the reference recorder in count-only mode (SIP
over TLS real, media counted by the C sink) and a paced C generator, for about 25 s. Asserts
what the long run asserts: no packet lost inside mediafork, every Siprec gets exactly one
siprec-started and one siprec-stopped (signed), the daemon exits cleanly, and its RSS stays
bounded once every session is up. The load is a tenth of what this machine forwards loss-free,
so a busy CI box does not make it flaky; each limit is one that a real leak or stall breaks.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import uvloop

from benches.load.driver import LoadConfig, parse_metrics, run_load

pytestmark = pytest.mark.slow


def test_short_load_is_loss_free_with_every_callback(tmp_path: Path) -> None:
    cfg = LoadConfig(calls=50, siprecs_per_call=2, soak_seconds=8.0, create_rate=50.0,
                     stop_rate=100.0, sample_interval=0.5, warmup_seconds=2.0,
                     ramp_slack=10.0, stop_slack=5.0, workdir=tmp_path)
    lines: list[str] = []
    r = uvloop.run(run_load(cfg, lines.append))
    log = "\n".join(lines)
    p, cb, rss = r["packets"], r["callbacks"], r["rss"]

    assert r["checks"]["zero_loss_inside"], (p, log)
    # 50 calls x 2 tracks x 50 pps for the whole run reached the engine...
    assert p["generated"] >= 50 * 2 * 50 * 15, p
    # ...and each forked packet reached the recorder's sink: four forks per call.
    assert p["sent"] >= 50 * 4 * 50 * 8, p
    assert r["checks"]["sink_got_everything"], p

    assert r["checks"]["every_callback"], (cb, r["errors"], log)
    assert cb["complete"] == 100 and cb["unsigned"] == 0
    assert r["recorder"]["states"] == {"ended": 100}, r["recorder"]
    assert r["recorder"]["ended_by"] == {"src": 100}, r["recorder"]

    assert r["checks"]["clean_exit"], r["daemon_exit"]
    # Bounded memory: flat during the steady state (a leak per packet or per RTCP report
    # shows here) and far from anything a 50-call daemon should need.
    assert rss["samples"] >= 5, rss
    assert abs(rss["growth_pct"]) <= 10.0 and rss["spread_pct"] <= 10.0, rss
    assert rss["max_kb"] < 400 * 1024, rss
    assert r["latency_ms"]["create_to_started_p99"] is not None
    assert r["rates"]["worker_cpu_pct"] > 0  # read from the per-worker metrics


def test_metrics_parser_sums_worker_families_only() -> None:
    text = "\n".join([
        "# HELP mediafork_worker_cpu_seconds_total CPU time of a media worker thread.",
        'mediafork_worker_cpu_seconds_total{worker="0"} 1.5',
        'mediafork_worker_cpu_seconds_total{worker="1"} 2.0',
        'mediafork_packets_dropped_total{reason="ring_full"} 3.0',
        "mediafork_packets_sent_total 10.0",
    ])
    m = parse_metrics(text)
    assert m["mediafork_worker_cpu_seconds_total"] == 3.5
    assert m['mediafork_worker_cpu_seconds_total{worker="1"}'] == 2.0
    assert "mediafork_packets_dropped_total" not in m  # summed by reason where needed
    assert m["mediafork_packets_sent_total"] == 10.0
