"""/metrics, /healthz and `mediafork status` against one running daemon with traffic."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from mediafork.media.srtp import lean_transform_available
from tests.io_uring_support import auto_backend

from .harness import (
    ACCOUNT,
    CONNECTOR_SECRET,
    TOKEN,
    TREE,
    CallbackSink,
    DaemonProcess,
    Recorder,
    call_sid,
    send_tones,
    wait_until,
    write_config,
)

DASHBOARD = TREE / "docs" / "grafana" / "mediafork-dashboard.json"
# Every label the exporter may use: engine-level dimensions only, never a call or fork.
# "connector" and "edge" are bounded by the config file; "listener" is api, sip, srs or
# control_socket; "le" is a histogram's bucket; build_info's labels are constant;
# "recorder" (host:port) and "transport" name a connector's recorder, bounded by the config;
# "backend" is io_uring or epoll.
ALLOWED_LABELS = {"state", "reason", "class", "outcome", "status", "worker", "connector",
                  "edge", "le", "version", "python", "pylibsrtp", "listener", "recorder",
                  "transport", "backend"}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Parse with prometheus_client's own parser: a format error fails the test."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(parsed: Samples, name: str, **labels: str) -> float:
    return parsed[(name, tuple(sorted(labels.items())))]


@dataclass
class Busy:
    daemon: DaemonProcess
    before: str
    after: str
    call: str
    siprec: str
    rejected: str
    sent: int


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Busy]:
    """A daemon that recorded one call to a working recorder and was refused (486) by a
    second one; metrics scraped before and after the traffic. The call stays live."""
    tmp = tmp_path_factory.mktemp("busy")
    recorder = Recorder(tmp / "srs")  # receiver reports every 0.5 s
    refusing = Recorder(tmp / "srs-486", answer=486)
    sink = CallbackSink()
    config = write_config(tmp, connectors=[
        {"unique_name": "Default", "srs": recorder.uri, "credentials_header": "X-Token",
         "credentials": CONNECTOR_SECRET},
        {"unique_name": "Busy", "srs": refusing.uri},
    ])
    daemon = DaemonProcess(tmp, ["--config", str(config)])
    try:
        daemon.start()
        before = daemon.metrics()
        sid = call_sid(0x31)
        ingress = daemon.register_call(sid)
        created = daemon.start_siprec(sid, "good", sink.url)
        assert created.status_code == 201, created.text
        siprec = created.json()["sid"]
        wait_until(lambda: "siprec-started" in sink.events(siprec), 10, "siprec-started")
        other = call_sid(0x32)
        daemon.register_call(other)
        refused = daemon.start_siprec(other, "refused", sink.url, connector="Busy")
        assert refused.status_code == 201, refused.text
        rejected = refused.json()["sid"]
        wait_until(lambda: "siprec-error" in sink.events(rejected), 10, "siprec-error")
        sent = send_tones(ingress, packets=60)
        wait_until(lambda: recorder.summaries()[0]["totals"]["packets"] >= sent, 10,
                   "every packet at the recorder")
        # The 486 call is done with; the recorded one stays live for `status`.
        assert daemon.post_json("/v1/Calls", {}).status_code == 400  # (an error, for realism)
        assert daemon.get(f"/v1/Calls/{other}").status_code == 200
        assert requests.delete(f"{daemon.base_url}/v1/Calls/{other}", auth=(ACCOUNT, TOKEN),
                               timeout=5).status_code == 204
        wait_until(lambda: value(samples(daemon.metrics()), "mediafork_callback_deliveries_total",
                                 outcome="delivered") >= 2, 10, "delivered callbacks counted")
        wait_until(lambda: "mediafork_recorder_jitter_seconds{" in daemon.metrics(), 10,
                   "a receiver report from the recorder")
        yield Busy(daemon, before, daemon.metrics(), sid, siprec, rejected, sent)
    finally:
        try:
            if daemon.proc is not None:
                assert daemon.stop() == 0
        finally:
            daemon.kill()
            sink.close()
            recorder.close()
            refusing.close()


def test_metrics_parse_and_counters_move_with_traffic(busy: Busy) -> None:
    before, after = samples(busy.before), samples(busy.after)
    for name in ("mediafork_packets_received_total", "mediafork_packets_forwarded_total",
                 "mediafork_packets_sent_total", "mediafork_bytes_received_total",
                 "mediafork_bytes_forwarded_total"):
        assert value(after, name) >= value(before, name) + busy.sent, name
    assert value(after, "mediafork_calls") == 1
    assert value(after, "mediafork_forks", state="active") == 2  # both_tracks
    assert value(after, "mediafork_callback_deliveries_total", outcome="delivered") >= 2
    assert value(after, "mediafork_callback_deliveries_total", outcome="failed") == 0
    # SIP responses from recorders by class: the 200 of the INVITE, the 486 of the other.
    assert value(after, "mediafork_sip_responses_total", **{"class": "2xx"}) >= 1
    assert value(after, "mediafork_sip_responses_total", **{"class": "4xx"}) >= 1
    # The daemon suite runs two media workers; the one call went to worker 0.
    assert value(after, "mediafork_worker_loops_total", worker="0") > value(
        before, "mediafork_worker_loops_total", worker="0")
    assert value(after, "mediafork_worker_calls", worker="0") == 1
    assert value(after, "mediafork_worker_calls", worker="1") == 0
    assert value(after, "mediafork_worker_cpu_seconds_total", worker="0") > 0
    # [media] io defaults to auto (io_uring unless this kernel refuses it); the metric
    # says which.
    assert value(after, "mediafork_media_io_backend", backend=auto_backend()) == 1
    # [media] srtp_transform defaults to auto: the lean transform where the build has it.
    expected_transform = "srtp_cm" if lean_transform_available() else "libsrtp"
    assert value(after, "mediafork_media_srtp_transform", backend=expected_transform) == 1
    assert value(after, "mediafork_packets_dropped_total", reason="ring_full") == 0
    assert value(after, "mediafork_srtp_errors_total") == 0


def test_operator_metrics_build_edges_setup_callbacks_and_recorder_reports(busy: Busy) -> None:
    after = samples(busy.after)
    import mediafork

    [info] = [labels for (name, labels) in after if name == "mediafork_build_info"]
    assert dict(info)["version"] == mediafork.__version__
    assert value(after, "mediafork_edge_up", edge="default") == 1
    # One session set up through "Default"; the refused one never got a 2xx.
    assert value(after, "mediafork_siprec_setup_seconds_count", connector="Default") == 1
    assert 0 < value(after, "mediafork_siprec_setup_seconds_sum", connector="Default") < 10
    assert ("mediafork_siprec_setup_seconds_count", (("connector", "Busy"),)) not in after
    assert value(after, "mediafork_callback_delivery_seconds_count") >= 2
    assert value(after, "mediafork_callback_delivery_seconds_bucket", le="+Inf") >= 2
    # The recorder's RTCP receiver reports for the live session: nothing lost on loopback.
    assert value(after, "mediafork_recorder_packets_lost", connector="Default") == 0
    assert 0 <= value(after, "mediafork_recorder_jitter_seconds", connector="Default") < 0.05


def test_metrics_have_no_per_call_labels_and_no_secrets(busy: Busy) -> None:
    for (name, labels), _ in samples(busy.after).items():
        assert name.startswith(("mediafork_", "python_", "process_")), name
        assert {k for k, _ in labels} <= ALLOWED_LABELS, (name, labels)
    for text in (busy.before, busy.after):
        for forbidden in (busy.call, busy.siprec, busy.rejected, ACCOUNT, TOKEN,
                          CONNECTOR_SECRET):
            assert forbidden not in text


def test_healthz_and_readyz_while_running(busy: Busy) -> None:
    assert busy.daemon.get("/healthz", auth=None).json() == {"status": "ok"}
    assert busy.daemon.get("/readyz", auth=None).json() == {"status": "ready"}


def test_status_command_prints_live_calls_forks_and_counters(busy: Busy) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mediafork.cli", "status", "--url", busy.daemon.base_url,
         "--account", ACCOUNT, "--token", TOKEN],
        capture_output=True, text=True, timeout=20, env=busy.daemon.env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"live calls of {ACCOUNT}: 1" in out
    assert busy.call in out
    assert re.search(rf"siprec {busy.siprec} good in-progress via Default \(both_tracks\)", out)
    # One line per forked track, with where it goes and what it sent.
    forks = re.findall(r"fork (inbound|outbound) +to 127\.0\.0\.1:\d+ sent (\d+)", out)
    assert sorted(t for t, _ in forks) == ["inbound", "outbound"], out
    assert all(int(n) >= busy.sent // 2 for _, n in forks), out
    assert re.search(r"live calls\s+1\b", out)
    assert re.search(r"forks\s+.*active 2", out)
    assert re.search(r"packets dropped\s+0\n", out)
    assert re.search(r"worker CPU seconds\s+\d+\.\d\d\n", out)
    assert re.search(r"media workers\s+2 \(calls 1 / 0\)\n", out)  # the suite runs two
    forwarded = re.search(r"packets forwarded\s+([\d,]+)", out)
    assert forwarded and int(forwarded.group(1).replace(",", "")) >= busy.sent
    assert TOKEN not in out + result.stderr


def test_status_json_and_watch_with_credentials_from_the_environment(busy: Busy) -> None:
    env = {**busy.daemon.env, "MEDIAFORK_ACCOUNT_SID": ACCOUNT, "MEDIAFORK_AUTH_TOKEN": TOKEN,
           "MEDIAFORK_URL": busy.daemon.base_url}
    result = subprocess.run(
        [sys.executable, "-m", "mediafork.cli", "status", "--json", "--watch", "0.3",
         "--count", "2", "--data", "/nonexistent"],  # no token file: the environment serves
        capture_output=True, text=True, timeout=20, env=env)
    assert result.returncode == 0, result.stderr
    snapshots = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(snapshots) == 2
    first = snapshots[0]
    assert first["readiness"] == {"status": "ready"}
    assert first["totals"]["calls"] == 1
    assert first["forks"]["active"] == 2
    assert first["worker_calls"] == {"0": 1, "1": 0}
    assert first["callbacks"]["delivered"] >= 2 and first["callbacks"]["given_up"] == 0
    [call] = first["calls"]
    assert call["call_sid"] == busy.call
    assert [s["sid"] for s in call["siprecs"]] == [busy.siprec]
    assert snapshots[1]["totals"]["packets_forwarded_total"] >= busy.sent
    assert TOKEN not in result.stdout + result.stderr


def test_status_command_fails_cleanly_on_bad_credentials(busy: Busy) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mediafork.cli", "status", "--url", busy.daemon.base_url,
         "--account", ACCOUNT, "--token", "wrong-" + "t" * 20],
        capture_output=True, text=True, timeout=20, env=busy.daemon.env)
    assert result.returncode == 1
    assert "401" in result.stderr


def _expressions(dashboard: dict[str, Any]) -> Iterator[str]:
    """The PromQL of every panel target (rows may nest panels) and query variable."""
    panels = list(dashboard.get("panels", []))
    while panels:
        panel = panels.pop()
        panels.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            yield target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            yield query["query"] if isinstance(query, dict) else query


def test_dashboard_queries_only_metrics_the_daemon_exposes(busy: Busy) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["panels"]
    exposed = {name for name, _ in samples(busy.after)}
    expressions = list(_expressions(dashboard))
    assert len(expressions) >= 8
    used: set[str] = set()
    for expr in expressions:
        names = set(re.findall(r"\bmediafork_[a-z_]+\b", expr))
        assert names, f"no mediafork metric in {expr!r}"
        assert names <= exposed, f"{expr!r} uses {sorted(names - exposed)}"
        used |= names
    # The panels the operations guide promises.
    for name in ("mediafork_calls", "mediafork_forks", "mediafork_packets_forwarded_total",
                 "mediafork_packets_dropped_total", "mediafork_worker_busy_seconds_total",
                 "mediafork_worker_cpu_seconds_total", "mediafork_callback_deliveries_total",
                 "mediafork_sip_responses_total", "mediafork_siprecs", "mediafork_edge_up",
                 "mediafork_siprec_setup_seconds_bucket", "mediafork_recorder_jitter_seconds",
                 "mediafork_recorder_packets_lost", "mediafork_callbacks_outstanding",
                 "mediafork_callback_delivery_seconds_bucket", "mediafork_build_info",
                 "mediafork_listener_rejected_total"):
        assert name in used, name
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_operations_guide_documents_every_exposed_metric(busy: Busy) -> None:
    guide = (TREE / "docs" / "operations.md").read_text()
    # Family names (a histogram's _bucket/_count/_sum samples belong to one family).
    families = {family.name for family in text_string_to_metric_families(busy.after)}
    missing = [name for name in sorted(families) if name not in guide]
    assert not missing, f"docs/operations.md does not describe {missing}"
