"""Prometheus metrics for the daemon (prometheus_client).

Engine-level only: no per-call or per-fork labels, so cardinality stays fixed
however many calls run. Values are read at scrape time from the engine's
monotonic totals and from whatever stats the other components expose; the
forwarding path does no metrics work of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

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
    ) -> None:
        self.engine = engine
        self.fork_states = fork_states or (lambda: _fork_states(engine))
        self.sip_responses = sip_responses
        self.callbacks = callbacks
        self.siprecs = siprecs
        self.sip_malformed = sip_malformed

    def collect(self) -> Iterator[Metric]:
        totals = self.engine.totals()
        counters = self.engine.counters()

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
        if self.callbacks:
            c = CounterMetricFamily("mediafork_callback_deliveries",
                                    "Status callback deliveries, by outcome.", labels=["outcome"])
            for outcome, n in sorted(self.callbacks().items()):
                c.add_metric([outcome], n)
            yield c


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
