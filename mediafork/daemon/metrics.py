"""Prometheus metrics for the daemon (prometheus_client).

Engine-level only: no per-call or per-fork labels, so cardinality stays fixed
however many calls run. Values are read at scrape time from the engine's
monotonic totals and from whatever stats the other components expose; the
forwarding path does no metrics work of its own.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from ..admission import REASONS, Admission
from ..engine import Engine

# engine total -> (metric suffix, label value) for packets dropped, by reason
_DROP_REASONS = {
    "ingress_malformed": "malformed",
    "ingress_source_rejected": "source_rejected",
    "ingress_rtcp": "rtcp_on_media_port",
    "fork_dropped_full": "ring_full",
    "fork_send_errors": "send_error",
    "fork_srtp_errors": "srtp_error",
    "fork_oversize": "oversize",
    "ingress_record_dropped": "recording_ring_full",
}

# Every label value, so a limit never hit still shows (as 0) and alerts can be written on it.
_QUOTA_LIMITS = ("max_calls", "max_siprecs", "max_recordings", "port_reserve")

StatsSource = Callable[[], Mapping[str, int | float]]


class EngineCollector(Collector):
    """Collects engine, SIP and callback figures on each scrape."""

    def __init__(
        self,
        engine: Engine,
        *,
        fork_states: Callable[[], Mapping[str, int]] | None = None,
        sip_responses: StatsSource | None = None,
        callbacks: StatsSource | None = None,
        siprecs: Callable[[], Mapping[str, int]] | None = None,
        sip_malformed: Callable[[], int] | None = None,
        more: Sequence[Callable[[], Iterable[Metric]]] = (),
        listeners: Callable[[], Iterable[Admission]] | None = None,
        quota_rejections: Callable[[], Mapping[str, int]] | None = None,
        idle_calls_ended: Callable[[], int] | None = None,
    ) -> None:
        self.engine = engine
        self.fork_states = fork_states or (lambda: _fork_states(engine))
        self.sip_responses = sip_responses
        self.callbacks = callbacks
        self.siprecs = siprecs
        self.sip_malformed = sip_malformed
        self.more = more
        """Further metric sources (the recorder links' and callbacks' histograms and gauges)."""
        self.listeners = listeners
        self.quota_rejections = quota_rejections
        self.idle_calls_ended = idle_calls_ended

    def collect(self) -> Iterator[Metric]:
        totals = self.engine.totals()
        counters = self.engine.counters()
        yield build_info()
        for source in self.more:
            yield from source()

        yield _gauge("mediafork_calls", "Live calls registered with the engine.", counters["calls"])
        yield _gauge("mediafork_media_sockets_open",
                     "UDP sockets held for calls and forks (ingress, fork RTP and RTCP).",
                     self.engine.open_media_sockets())
        forks = GaugeMetricFamily("mediafork_forks", "Forked streams by state.", labels=["state"])
        for state, n in sorted(self.fork_states().items()):
            forks.add_metric([state], n)
        yield forks

        yield _counter("mediafork_packets_received", "RTP packets received on call tracks.",
                       totals.get("ingress_received", 0))
        yield _counter("mediafork_bytes_received", "Bytes received on call tracks.",
                       totals.get("ingress_bytes", 0))
        yield _counter("mediafork_packets_forwarded", "Packets handed to forked streams.",
                       totals.get("fork_forwarded", 0))
        yield _counter("mediafork_packets_sent", "Forked packets the kernel accepted.",
                       totals.get("fork_sent", 0))
        yield _counter("mediafork_bytes_forwarded", "Bytes of forked packets (after SRTP).",
                       totals.get("fork_bytes", 0))
        yield _counter("mediafork_dtmf_filtered", "RFC 4733 telephone-events not forwarded.",
                       totals.get("ingress_filtered_dtmf", 0))
        dropped = CounterMetricFamily("mediafork_packets_dropped",
                                      "Packets dropped, by reason.", labels=["reason"])
        for key, reason in _DROP_REASONS.items():
            dropped.add_metric([reason], totals.get(key, 0))
        yield dropped
        yield _counter("mediafork_srtp_errors", "SRTP/SRTCP protection failures.",
                       totals.get("fork_srtp_errors", 0))
        yield _counter("mediafork_rtcp_sent", "RTCP sender reports sent.",
                       totals.get("fork_rtcp_sent", 0))
        yield _counter("mediafork_rtcp_received", "RTCP reports received from recorders.",
                       totals.get("fork_rtcp_received", 0))
        yield _counter("mediafork_rtcp_send_errors",
                       "Sender reports refused (e.g. ICMP: the recorder has no RTCP port).",
                       totals.get("fork_rtcp_send_errors", 0))

        from .logs import BAD_HTTP

        yield _counter("mediafork_http_malformed_requests",
                       "HTTP requests refused because they could not be parsed.", BAD_HTTP.count)
        # Per worker (label "worker", 0..N-1): one saturated worker must not hide behind
        # idle ones in a sum.
        workers = self.engine.worker_stats()
        for name, key, text, family in (
            ("mediafork_worker_loops", "loops", "Media worker loop iterations.",
             CounterMetricFamily),
            ("mediafork_worker_busy_seconds", "busy_seconds",
             "Time a media worker spent working (not waiting).", CounterMetricFamily),
            ("mediafork_worker_cpu_seconds", "cpu_seconds", "CPU time of a media worker thread.",
             CounterMetricFamily),
            ("mediafork_worker_calls", "calls", "Live calls placed on a media worker.",
             GaugeMetricFamily),
        ):
            metric = family(name, text, labels=["worker"])
            for index, stats in enumerate(workers):
                metric.add_metric([str(index)], stats[key])
            yield metric
        yield _counter("mediafork_engine_events_dropped", "Worker events lost (queue full).",
                       counters["events_dropped"])
        io = GaugeMetricFamily("mediafork_media_io_backend",
                               "The media workers' I/O backend (1 for the one in use).",
                               labels=["backend"])
        io.add_metric([self.engine.io_backend], 1)
        yield io
        srtp = GaugeMetricFamily("mediafork_media_srtp_transform",
                                 "What protects the RTP of AES-CM forks (1 for the one in use).",
                                 labels=["backend"])
        srtp.add_metric([self.engine.srtp_transform], 1)
        yield srtp

        if self.siprecs:
            g = GaugeMetricFamily("mediafork_siprecs", "Siprec resources by status.",
                                  labels=["status"])
            for status, n in sorted(self.siprecs().items()):
                g.add_metric([status], n)
            yield g
        if self.sip_responses:
            c = CounterMetricFamily("mediafork_sip_responses",
                                    "SIP responses received from recorders, by class.",
                                    labels=["class"])
            for klass, n in sorted(self.sip_responses().items()):
                c.add_metric([klass], n)
            yield c
        if self.sip_malformed:
            yield _counter("mediafork_sip_malformed",
                           "SIP datagrams dropped and SIP streams closed as malformed.",
                           self.sip_malformed())
        if self.listeners:
            yield from _listener_metrics(list(self.listeners()))
        if self.quota_rejections:
            c = CounterMetricFamily("mediafork_quota_rejected",
                                    "Requests refused with 429 by a per-account limit, by the "
                                    "limit.s config key.", labels=["reason"])
            rejected = self.quota_rejections()
            for limit in _QUOTA_LIMITS:
                c.add_metric([limit], rejected.get(limit, 0))
            yield c
        if self.idle_calls_ended:
            yield _counter("mediafork_calls_idle_ended",
                           "Calls ended after [media] call_idle_timeout without ingress media "
                           "or API activity.", self.idle_calls_ended())
        if self.callbacks:
            outcomes = dict(self.callbacks())
            # A refusal is not a delivery outcome: it gets its own counter (the alert differs).
            denied = outcomes.pop("denied", 0)
            outstanding = outcomes.pop("outstanding", 0)
            c = CounterMetricFamily("mediafork_callback_deliveries",
                                    "Status callback deliveries, by outcome.", labels=["outcome"])
            for outcome, n in sorted(outcomes.items()):
                c.add_metric([outcome], n)
            yield c
            yield _counter("mediafork_callbacks_denied",
                           "Status callbacks not sent: the [callbacks] egress policy refused "
                           "their URL or an address it resolved to.", denied)
            yield _gauge("mediafork_callbacks_outstanding",
                         "Status callbacks not settled yet: queued, being sent, or waiting "
                         "for a retry (within [callbacks] retry_for).", outstanding)


def build_info() -> GaugeMetricFamily:
    """``mediafork_build_info{version, python, pylibsrtp} 1``: what is running, for
    dashboards and for telling the instances of a fleet apart."""
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    try:
        srtp = version("pylibsrtp")
    except PackageNotFoundError:  # pragma: no cover - a dependency
        srtp = "unknown"
    info = GaugeMetricFamily("mediafork_build_info", "The running mediafork: version and the "
                             "versions it runs on; always 1.",
                             labels=["version", "python", "pylibsrtp"])
    info.add_metric([__version__, platform.python_version(), srtp], 1)
    return info


def link_metrics(links: object) -> Callable[[], Iterable[Metric]]:
    """Per edge and per connector (both bounded by the config): edges up, the set-up time
    histogram, and what recorders report over RTCP on live sessions."""

    def collect() -> Iterator[Metric]:
        edges = GaugeMetricFamily("mediafork_edge_up", "1 when the edge's SIP sockets are "
                                  "bound and it can carry recording sessions.", labels=["edge"])
        for name, up in sorted(links.edge_states().items()):  # type: ignore[attr-defined]
            edges.add_metric([name], 1 if up else 0)
        yield edges
        recorders = GaugeMetricFamily(
            "mediafork_recorder_up", "1 while the recorder answers OPTIONS health checks, 0 "
            "once it is marked down ([sip.health]); per recorder address, no credentials.",
            labels=["recorder", "transport"])
        for (where, transport), up in sorted(links.recorder_states().items()):  # type: ignore[attr-defined]
            recorders.add_metric([where, transport], 1 if up else 0)
        yield recorders
        yield from without_created(links.setup_seconds.collect())  # type: ignore[attr-defined]
        lost = GaugeMetricFamily(
            "mediafork_recorder_packets_lost", "Packets the recorders report lost (RTCP "
            "receiver reports, cumulative) on live sessions, per connector.",
            labels=["connector"])
        jitter = GaugeMetricFamily(
            "mediafork_recorder_jitter_seconds", "Worst interarrival jitter the recorders "
            "report (RTCP) on live sessions, per connector.", labels=["connector"])
        for connector, (n, seconds) in sorted(links.recorder_reports().items()):  # type: ignore[attr-defined]
            lost.add_metric([connector], n)
            jitter.add_metric([connector], seconds)
        yield lost
        yield jitter

    return collect


def reload_metrics(counts: Callable[[], Mapping[str, int]]) -> Callable[[], Iterable[Metric]]:
    def collect() -> Iterator[Metric]:
        family = CounterMetricFamily("mediafork_config_reloads", "Configuration reloads "
                                     "(SIGHUP, mediafork reload), by outcome.",
                                     labels=["outcome"])
        for outcome, n in sorted(counts().items()):
            family.add_metric([outcome], n)
        yield family

    return collect


def without_created(families: Iterable[Metric]) -> Iterator[Metric]:
    """prometheus_client's histograms add a ``*_created`` timestamp series; the daemon's
    other metrics have none, and dashboards do not use it."""
    for family in families:
        family.samples = [s for s in family.samples if not s.name.endswith("_created")]
        yield family


def _listener_metrics(admissions: list[Admission]) -> Iterator[Metric]:
    open_now = GaugeMetricFamily("mediafork_listener_connections",
                                 "Connections open on a listener.", labels=["listener"])
    rejected = CounterMetricFamily("mediafork_listener_rejected",
                                   "Connections a listener refused (over a cap) or closed "
                                   "(a timeout), by reason.", labels=["listener", "reason"])
    for admission in admissions:
        open_now.add_metric([admission.listener], admission.active)
        counts = admission.rejected
        for reason in REASONS:
            rejected.add_metric([admission.listener, reason], counts[reason])
    yield open_now
    yield rejected


def _fork_states(engine: Engine) -> dict[str, int]:
    states = {"active": 0, "paused": 0, "awaiting_destination": 0}
    for call in engine.calls:
        for fork in call.forks:
            if fork.paused:
                states["paused"] += 1
            elif fork.destination is None and not fork.drain_mode:
                states["awaiting_destination"] += 1
            else:
                states["active"] += 1
    return states


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def build_registry(collector: EngineCollector) -> CollectorRegistry:
    """A registry of its own (not the global one), so tests and embedders can
    run several daemons in one process."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
