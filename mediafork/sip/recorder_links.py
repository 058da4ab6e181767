"""The real :class:`mediafork.recorder_api.RecorderLinks`: SIPREC sessions over the asyncio transport.

For each Siprec started, :class:`SipRecorderLinks` picks an edge, creates the call's forks
in the engine (bound on the edge's address), drives one sans-I/O
:class:`~mediafork.sip.session.RecordingSession` with timers on the loop, applies what the
session learns (destinations, selected SRTP suite, the SRS's key, pause/resume) to the
forks and reports ``started`` / ``stopped`` / ``error`` :class:`~mediafork.recorder_api.LinkEvent`
through the sink. Incoming SIP is routed to sessions by Call-ID.

Error codes (mediafork range, see docs/sip.md "Error codes"):

* ``LinkError`` from :meth:`SipRecorderLinks.start`: 900020 unknown edge, 900021 unusable
  edge, 900022 invalid connector URI, 900023 the engine could not create the forks,
  900024 the Siprec is already running.
* ``error`` events: 900030 setup failed (the SRS refused, did not answer, or could not be
  reached, after every standby), 900031 an established session was lost (refresh,
  keepalive or in-dialog failure), 900032 the SRS's media address is unreachable (ICMP on
  a forked stream), 900033 the engine could not apply the SRS's answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import ipaddress
import logging
import secrets
import ssl
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Histogram

from ..engine import Call, EngineError, EngineEvent, Fork, SrtpKey, SrtpProfile, Track
from ..recorder_api import Connector, Edge, LinkError, LinkEvent, LinkEventSink, SiprecStart
from . import events as ev
from .call_events import CallEvent, CallEventError
from .dialog import build_response
from .errors import SipParseError
from .message import Message, Request, Response
from .recorder_health import HealthConfig, RecorderHealth, RecorderKey
from .sdp import Codec
from .session import (
    Destination,
    ForkedStream,
    Outgoing,
    Participant,
    RecordingSession,
    SessionConfig,
    SessionState,
)
from .transaction import TimerConfig, new_branch
from .transport import SipTransport, TransportError, client_tls_context
from .uri import SipUri, split_connector_uri

__all__ = [
    "ERR_ALREADY_STARTED",
    "ERR_BAD_CONNECTOR_URI",
    "ERR_ENGINE_APPLY",
    "ERR_ENGINE_FORKS",
    "ERR_MEDIA_UNREACHABLE",
    "ERR_SESSION_LOST",
    "ERR_SETUP_FAILED",
    "ERR_UNKNOWN_EDGE",
    "ERR_UNUSABLE_EDGE",
    "SipRecorderLinks",
]

log = logging.getLogger(__name__)

ERR_UNKNOWN_EDGE = 900020
ERR_UNUSABLE_EDGE = 900021
ERR_BAD_CONNECTOR_URI = 900022
ERR_ENGINE_FORKS = 900023
ERR_ALREADY_STARTED = 900024
ERR_SETUP_FAILED = 900030
ERR_SESSION_LOST = 900031
ERR_MEDIA_UNREACHABLE = 900032
ERR_ENGINE_APPLY = 900033

_LABELS = {Track.INBOUND: "1", Track.OUTBOUND: "2"}
"""Stable SDP/metadata labels: the same track always has the same label."""
_TRACKS = {
    "inbound_track": (Track.INBOUND,),
    "outbound_track": (Track.OUTBOUND,),
    "both_tracks": (Track.INBOUND, Track.OUTBOUND),
}
_DEAD_MEDIA_ERRNOS = {
    errno.ECONNREFUSED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    getattr(errno, "EHOSTDOWN", 112),
}
_PROBE_CACHE_SECONDS = 30.0
_MEDIA_GRACE_SECONDS = 1.0
"""After a failover, dead-media events are ignored this long (the engine's rate limit)."""


@dataclass
class _Stream:
    label: str
    fork: Fork
    keys: dict[str, SrtpKey]
    """Our key per offered suite, in the profile's order (empty: plain RTP)."""
    applied: tuple[str | None, bytes | None] = (None, None)
    """(suite, SRS key) installed in the fork; starts as the first suite's key."""


@dataclass
class _Link:
    request: SiprecStart
    edge: Edge
    session: RecordingSession
    streams: dict[str, _Stream]
    outbox: asyncio.Queue[Outgoing | None] = field(default_factory=asyncio.Queue)
    sender: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = None
    call_ids: set[str] = field(default_factory=set)
    resolved: dict[tuple[str, str, int], set[Destination]] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    reported: bool = False
    """The final event (stopped or error) has been emitted."""
    stop_requested: bool = False
    locally_paused: bool = False
    remotely_paused: bool = False
    started: bool = False
    created: float = field(default_factory=time.monotonic)
    """When start() took the request: the set-up time runs from here to the 2xx."""
    targets: tuple[str, ...] = ()
    """The connector's recorders (clean URIs, primary first): mid-call failover targets."""
    transport: str | None = None
    """The signalling transport start() chose for the connector (None: from each URI)."""
    failovers: int = 0
    """Mid-call failovers so far (bounded by ``max_failovers``)."""
    failover_from: tuple[str, str, int | None, str] | None = None
    """While a failover session is being set up: the lost recorder, why, its SIP status
    and phase (reported with the ``failover`` event, or in the error if none took over)."""
    participants: tuple[str, str] | None = None
    """The call's caller and callee after update_participants (a failover's metadata)."""
    media_grace_until: float = 0.0
    """Dead-media events before this (loop time) are the lost recorder's late ICMP."""

    @property
    def sid(self) -> str:
        return self.request.siprec_sid

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """The module's logger with this session's structured fields (top-level in JSON
        logs, see docs/operations.md): account, call, Siprec, connector and SIP Call-ID."""
        request = self.request
        fields = {"account_sid": request.account_sid, "call_sid": request.call_sid,
                  "siprec_sid": request.siprec_sid, "connector": request.connector.unique_name,
                  "sip_call_id": self.session.call_id}
        return logging.LoggerAdapter(log, {k: v for k, v in fields.items() if v})


def _participant(aor: str) -> Participant:
    # Metadata wants a URI; a bare E.164 number (the seeds allow one) becomes a tel: URI.
    return Participant(aor if ":" in aor else f"tel:{aor}")


# Fork counters that are packets lost before they reached the recorder (docs/api.md).
_DROPPED_COUNTERS = ("dropped_full", "send_errors", "srtp_errors", "oversize")

# The session layer's phase names -> the documented words of SiprecErrorPhase.
_PHASES = {"setup": "set-up", "established": "established", "keepalive": "established",
           "refresh": "refresh", "teardown": "teardown"}


def _safe_uri(uri: str) -> str:
    """The URI without a password (the only secret a SIP URI can carry)."""
    try:
        parsed = SipUri.parse(uri)
    except SipParseError:
        return "<invalid URI>"
    parsed.password = None
    return str(parsed)


def _short(text: str | None, limit: int = 160) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class SipRecorderLinks:
    """SIPREC recording sessions for the control service (implements ``RecorderLinks``).

    Create it inside the running loop, ``await open()``, then call ``start``/``stop``/...
    from the loop; feed engine events through :meth:`handle_engine_event`; ``await
    close()`` at shutdown.
    """

    def __init__(
        self,
        sink: LinkEventSink,
        edges: Sequence[Edge] = (),
        *,
        default_address: str = "127.0.0.1",
        sip_port: int = 0,
        tls_context: ssl.SSLContext | None = None,
        tls_server_context: ssl.SSLContext | None = None,
        tls_ca_file: str | None = None,
        tls_verify: bool = True,
        timers: TimerConfig | None = None,
        session_expires: int | None = 1800,
        keepalive_interval: float = 30.0,
        setup_timeout: float = 60.0,
        stop_timeout: float = 5.0,
        probe_timeout: float = 1.0,
        connect_timeout: float = 5.0,
        user_agent: str = "mediafork",
        listener_options: Mapping[str, Any] | None = None,
        health: HealthConfig | None = None,
        max_failovers: int = 2,
    ) -> None:
        """``edges``: named local addresses (none: one edge ``default`` on
        ``default_address``). ``sip_port``: the SIP port on every edge address (UDP and
        TCP; 0 = a free one per edge). TLS to SRSes verifies against ``tls_ca_file`` (else
        the system CAs) unless ``tls_context`` is given. ``tls_server_context`` (our
        certificate) opens a SIP TLS listener on the SIP port + 1 of every edge, which the
        Contact of TLS dialogs names; without it that Contact names the TCP listener.
        ``listener_options`` bound the
        inbound TCP/TLS listener (``admission``, ``idle_timeout``, ``tls_handshake_timeout``
        of :class:`~mediafork.sip.transport.SipTransport`). ``health``: OPTIONS health
        checks of the recorders named by :meth:`watch_recorders`; ``max_failovers``: mid-call
        failovers per Siprec (0: none). The other arguments tune every session (see
        :class:`~mediafork.sip.session.SessionConfig`)."""
        self._sink = sink
        self._response_counts: dict[str, int] = {}
        self._edges: dict[str, Edge] = {e.name: e for e in edges} or {
            "default": Edge("default", default_address, default=True)
        }
        if len(self._edges) != len(edges) and edges:
            raise ValueError("edge names must be unique")
        self._sip_port = sip_port
        self._default_address = default_address
        self._retiring: set[str] = set()
        """Addresses of edges a reload removed, still bound for sessions that use them."""
        self._tls_context = tls_context or (
            client_tls_context(tls_ca_file, verify=tls_verify)
            if tls_ca_file or not tls_verify
            else None
        )
        self._tls_server_context = tls_server_context
        self._timers = timers or TimerConfig()
        self._session_expires = session_expires
        self._keepalive_interval = keepalive_interval
        self._setup_timeout = setup_timeout
        self._stop_timeout = stop_timeout
        self._probe_timeout = probe_timeout
        self._connect_timeout = connect_timeout
        self._user_agent = user_agent
        self._listener_options = dict(listener_options or {})
        self._transport: SipTransport | None = None
        self._ports: dict[str, int] = {}
        self._unusable: dict[str, str] = {}
        self._links: dict[str, _Link] = {}
        self._by_call_id: dict[str, _Link] = {}
        self._by_fork: dict[int, _Link] = {}
        self._probes: dict[str, asyncio.Future[Response]] = {}
        self._rtt: dict[tuple[str, str], tuple[float, float | None]] = {}
        self._warned: set[tuple[str, str]] = set()
        self._senders: set[asyncio.Task[None]] = set()
        self._closed = False
        self._health = RecorderHealth(health or HealthConfig())
        self._health_targets: dict[RecorderKey, tuple[Connector, str, str | None, str | None]] = {}
        self._health_task: asyncio.Task[None] | None = None
        self._health_probes: set[asyncio.Task[None]] = set()
        self._max_failovers = max_failovers
        # Not registered anywhere: the daemon's collector yields it with the other metrics,
        # so several links (tests, embedders) can live in one process.
        self.setup_seconds = Histogram(
            "mediafork_siprec_setup_seconds",
            "From a Siprec's create to the recorder's 2xx, per connector.", ["connector"],
            buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0), registry=None)

    # --- lifecycle --------------------------------------------------------------------------

    def response_counts(self) -> dict[str, int]:
        """SIP responses received from recorders so far, by class (1xx..6xx): for metrics."""
        return dict(self._response_counts)

    def malformed_messages(self) -> int:
        """SIP dropped as malformed on every edge (datagrams, closed streams): for metrics."""
        return self._transport.malformed if self._transport is not None else 0

    async def open(self) -> None:
        """Bind the SIP sockets of every edge. An edge whose address cannot be bound is
        kept as unusable: starting a session on it raises ``LinkError`` naming it."""
        if self._transport is not None:
            return
        self._transport = SipTransport(
            self._on_message,
            self._on_transport_error,
            tls_context=self._tls_context,
            tls_server_context=self._tls_server_context,
            connect_timeout=self._connect_timeout,
            **self._listener_options,
        )
        for edge in self._edges.values():
            try:
                self._ports[edge.name] = await self._transport.listen(edge.address, self._sip_port)
            except OSError as exc:
                self._unusable[edge.name] = str(exc.strerror or exc)
                log.error("edge %s (%s) is unusable: %s", edge.name, edge.address, exc)

    async def update_edges(self, edges: Sequence[Edge]) -> list[str]:
        """Take a reloaded edge list: new edges are bound now (an edge that cannot be is
        kept as unusable, as at start), removed ones take no new session and their sockets
        close once the last session using the address has ended. Live sessions keep the
        edge they started on. Returns the unusable-edge lines, as :meth:`unusable_edges`."""
        if self._transport is None:
            raise RuntimeError("SipRecorderLinks.open() has not been awaited")
        wanted = {e.name: e for e in edges} or {
            "default": self._edges.get("default") or Edge("default", self._default_address,
                                                          default=True)}
        for name, edge in list(self._edges.items()):
            if wanted.get(name, edge).address != edge.address or name not in wanted:
                del self._edges[name]
                self._ports.pop(name, None)
                self._unusable.pop(name, None)
                self._retiring.add(edge.address)
        for name, edge in wanted.items():
            known = self._edges.get(name)
            self._edges[name] = edge  # a flag change (default) takes effect at once
            if known is not None:
                continue
            self._retiring.discard(edge.address)
            try:
                self._ports[name] = await self._transport.listen(edge.address, self._sip_port)
            except OSError as exc:
                self._unusable[name] = str(exc.strerror or exc)
                log.error("edge %s (%s) is unusable: %s", name, edge.address, exc)
        self._close_retired_edges()
        return self.unusable_edges()

    def _close_retired_edges(self) -> None:
        # A session that has reported its end only absorbs retransmissions from here on:
        # it no longer keeps a removed edge's sockets open.
        in_use = {link.edge.address for link in self._links.values() if not link.reported}
        in_use |= {e.address for e in self._edges.values()}
        for address in list(self._retiring):
            if address not in in_use:
                self._retiring.discard(address)
                if self._transport is not None:
                    self._transport.unlisten(address)

    def unusable_edges(self) -> list[str]:
        """One line per edge whose SIP sockets could not be bound at ``open()``, naming the
        edge, its address and port, and why (empty when every edge is usable)."""
        lines = []
        for name, reason in self._unusable.items():
            address = self._edges[name].address
            where = f"[{address}]" if ":" in address else address
            lines.append(f"edge {name} ({where}:{self._sip_port}): cannot bind SIP: {reason}")
        return lines

    def usable_edge_count(self) -> int:
        return len(self._edges) - len(self._unusable)

    def edge_states(self) -> dict[str, bool]:
        """Edge name -> whether its SIP sockets are bound (the edge can carry sessions)."""
        return {name: name not in self._unusable for name in self._edges}

    def recorder_reports(self) -> dict[str, tuple[int, float]]:
        """Per connector, over its live sessions' forked streams, what the recorders' RTCP
        receiver reports say: (packets lost in all, the worst interarrival jitter in
        seconds). Connectors without a live session are absent."""
        out: dict[str, tuple[int, float]] = {}
        for link in self._links.values():
            if link.reported:
                continue
            lost, jitter = out.get(link.request.connector.unique_name, (0, 0.0))
            for stream in link.streams.values():
                fork = stream.fork
                if fork.closed:
                    continue
                counters = fork.counters()
                if not counters.get("rr_last_ns"):
                    continue  # no report yet
                lost += max(0, int(counters.get("rr_cumulative_lost", 0)))
                jitter = max(jitter, counters.get("rr_jitter", 0) / fork.call.clock_rate)
            out[link.request.connector.unique_name] = (lost, jitter)
        return out

    @property
    def transport(self) -> SipTransport:
        """The SIP transport (tests set ``transport.tap`` to see messages)."""
        if self._transport is None:
            raise RuntimeError("SipRecorderLinks.open() has not been awaited")
        return self._transport

    def sip_port(self, edge: str) -> int | None:
        """The SIP port bound on ``edge`` (None if unusable)."""
        return self._ports.get(edge)

    def tls_port(self, edge: str) -> int | None:
        """The SIP TLS port bound on ``edge`` (None: no TLS listener, or unusable)."""
        edge_ = self._edges.get(edge)
        if self._transport is None or edge_ is None or edge not in self._ports:
            return None
        return self._transport.tls_port(edge_.address)

    async def close(self, timeout: float = 5.0) -> None:
        """BYE (or CANCEL) every session concurrently and wait up to ``timeout`` in all;
        sessions still unanswered then are reported stopped. Then close the sockets."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        live = [link for link in self._links.values() if not link.reported]
        if live:
            await asyncio.wait(
                [asyncio.ensure_future(self._stop(link, "shutdown", timeout)) for link in live],
                timeout=timeout,
            )
        for link in list(self._links.values()):
            self._report_end(link, LinkEvent(link.sid, "stopped"))
            self._drop(link)
        health = [t for t in (self._health_task, *self._health_probes) if t is not None]
        for task in health:
            task.cancel()
        if health:  # cancelled, they end at once: released here, not by the GC
            await asyncio.wait(health, timeout=1.0)
        for future in self._probes.values():
            future.cancel()
        senders = [t for t in self._senders if not t.done()]
        if senders:
            # Let the last queued messages (ACKs, BYEs) go out, briefly.
            _, pending = await asyncio.wait(senders, timeout=max(0.05, deadline - loop.time()))
            for task in pending:
                task.cancel()
        if self._transport is not None:
            await self._transport.close()

    # --- RecorderLinks ----------------------------------------------------------------------

    async def start(self, call: Call, request: SiprecStart) -> None:
        """Create the forks and send the INVITE; errors before sending raise ``LinkError``."""
        if self._transport is None:
            await self.open()
        if self._closed:
            raise LinkError("recorder links are shut down", ERR_ENGINE_FORKS)
        if request.siprec_sid in self._links:
            raise LinkError(f"Siprec {request.siprec_sid} is already running", ERR_ALREADY_STARTED)
        connector = request.connector
        srs, secure, edge_name, standbys = self._parse_connector(connector)
        transport: str | None = None
        if secure:
            explicit = SipUri.parse(srs).transport
            if explicit in ("udp", "tcp"):
                self._warn_clear_keys(connector, explicit)
            elif explicit is None:
                transport = "tls"  # secure media needs secure signalling: SDES keys are in it
        targets = (srs, *standbys)
        ordered = self._by_health(targets, transport)  # a down-marked primary goes last
        srs, standbys = ordered[0], tuple(ordered[1:])
        edge = await self._choose_edge(edge_name, connector, srs, transport)
        port = self._ports[edge.name]
        streams = self._create_forks(call, request, edge, secure, connector.profile.srtp_suites)
        wanted = request.codec
        codec = Codec(wanted.name, wanted.payload_type, wanted.clock_rate, wanted.channels,
                      wanted.fmtp)
        try:
            config = self._config(request, srs, standbys, transport, edge, port,
                                  self._forked_streams(streams, codec))
        except ValueError as exc:
            self._close_streams(streams)
            raise LinkError(
                f"connector {connector.unique_name} cannot be used: {exc}", ERR_BAD_CONNECTOR_URI
            ) from None
        link = _Link(request, edge, RecordingSession(config), {s.label: s for s in streams},
                     targets=targets, transport=transport)
        self._register(link)
        link.log.info(
            "Siprec %s: recording session to %s from edge %s (%s)",
            link.sid,
            _safe_uri(srs),
            edge.name,
            edge.address,
        )
        link.session.start(self._now())
        self._drive(link)

    async def hang_up(self, request: SiprecStart, dialog: Mapping[str, Any]) -> None:
        """BYE a recording session that a crashed process left open, from the dialog
        record its ``started`` event carried, with the connector's current credentials.
        Reports no link events (the Siprec was settled at restart). Returns once the
        session ended (answered, refused or unreachable) or the stop timeout passed."""
        if self._transport is None:
            await self.open()
        if self._closed or request.siprec_sid in self._links:
            return
        try:
            srs, _, edge_name, _ = self._parse_connector(request.connector)
            recorded_edge = dialog.get("edge")
            if isinstance(recorded_edge, str) and recorded_edge in self._edges:
                edge_name = recorded_edge
            transport = dialog.get("transport")
            if transport not in ("udp", "tcp", "tls"):
                transport = None
            edge = await self._choose_edge(edge_name, request.connector, srs, transport)
            # The stream is a placeholder (a BYE carries no SDP); a config needs one.
            placeholder = (ForkedStream("hangup", "inbound", 9, Codec("PCMU", 0, 8000)),)
            config = self._config(request, str(dialog.get("srs_uri") or srs), (), transport,
                                  edge, self._ports[edge.name], placeholder)
            session = RecordingSession.for_hangup(config, dialog)
        except (LinkError, ValueError, KeyError) as exc:
            log.warning("Siprec %s: cannot hang up the session left by the previous "
                        "process: %s", request.siprec_sid, exc)
            return
        # Already reported and stopping: no fork, no event, dropped once the BYE is done.
        link = _Link(request, edge, session, {}, reported=True, stop_requested=True)
        self._register(link)
        link.log.info("Siprec %s: BYE to %s for the session left by the previous process",
                 link.sid, _safe_uri(session.srs_uri))
        session.stop(self._now(), "engine restarted")
        self._drive(link)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(link.done.wait(), self._stop_timeout + 0.5)

    def _register(self, link: _Link) -> None:
        """Track a new link (by SID and by fork) and start its sender."""
        self._links[link.sid] = link
        for stream in link.streams.values():
            self._by_fork[stream.fork.id] = link
        link.sender = asyncio.ensure_future(self._send_loop(link))
        self._senders.add(link.sender)
        link.sender.add_done_callback(self._senders.discard)

    def _config(
        self,
        request: SiprecStart,
        srs: str,
        standbys: tuple[str, ...],
        transport: str | None,
        edge: Edge,
        port: int,
        streams: tuple[ForkedStream, ...],
    ) -> SessionConfig:
        connector = request.connector
        profile = connector.profile
        invite_headers, skipped = profile.parameter_headers(request.parameters)
        if skipped:
            log.warning("Siprec %s: %d custom parameter(s) not sent as headers (over "
                        "parameter_headers_max_bytes or a reserved name)",
                        request.siprec_sid, skipped)
        session_expires = (self._session_expires if profile.session_expires is None
                           else profile.session_expires or None)
        return SessionConfig(
            srs_uri=srs,
            local_address=edge.address,
            local_port=port,
            tls_port=self.transport.tls_port(edge.address),
            streams=streams,
            call_id=request.call_sid,
            caller=_participant(request.caller),
            callee=_participant(request.callee),
            standby_uris=standbys,
            transport=transport,  # type: ignore[arg-type]
            credentials_header=connector.credentials_header if connector.credentials else None,
            credentials_value=connector.credentials if connector.credentials_header else None,
            digest_username=connector.digest_username,
            digest_password=connector.digest_password,
            metadata_content_type=connector.metadata_content_type,
            custom_parameters=request.parameters,
            extra_headers=profile.headers,
            invite_headers=invite_headers,
            parameters_in_metadata=profile.parameters_in_metadata,
            group_name=profile.group_name,
            metadata_extensions=profile.extension_xml,
            timers=self._timers,
            session_expires=session_expires,
            keepalive_interval=profile.keepalive_interval or self._keepalive_interval,
            stop_timeout=self._stop_timeout,
            setup_timeout=profile.setup_timeout or self._setup_timeout,
            user_agent=self._user_agent,
            roster=request.roster,
            skip_failover_codes=frozenset(connector.skip_failover_codes),
        )

    @staticmethod
    def _forked_streams(streams: list[_Stream], codec: Codec) -> tuple[ForkedStream, ...]:
        return tuple(
            ForkedStream(
                s.label,
                "inbound" if s.fork.track is Track.INBOUND else "outbound",
                s.fork.local_address[1] if s.fork.local_address else 0,
                codec,
                keys=tuple((suite, key.master) for suite, key in s.keys.items()),
            )
            for s in streams
        )

    async def stop(self, siprec_sid: str, reason: str = "stopped") -> None:
        """BYE (or CANCEL while inviting), wait within the stop timeout, emit ``stopped``."""
        link = self._links.get(siprec_sid)
        if link is None or link.reported:
            return
        # The session reports Ended by itself after stop_timeout; the margin covers that.
        await self._stop(link, reason, self._stop_timeout + 0.5)

    async def pause(self, siprec_sid: str) -> None:
        """Stop sending at once, and tell the SRS with a re-INVITE (a=inactive)."""
        link = self._live(siprec_sid)
        if link is None:
            return
        link.locally_paused = True
        self._pause_forks(link)
        link.session.pause(self._now())
        self._drive(link)
        # The pause was queued without blocking the loop; return only once the worker
        # applied it, so that no packet leaves after pause() (a caller's guarantee).
        await self._settled(link)

    async def resume(self, siprec_sid: str) -> None:
        """Re-INVITE with sendonly; media flows again once the SRS accepts (Resumed)."""
        link = self._live(siprec_sid)
        if link is None:
            return
        link.locally_paused = False
        link.session.resume(self._now())
        self._drive(link)

    async def update_participants(self, call_sid: str, caller: str, callee: str) -> None:
        """Send partial metadata (re-INVITE) to every live session of the call."""
        for link in list(self._links.values()):
            if link.request.call_sid == call_sid and not link.reported:
                link.participants = (caller, callee)
                link.session.update_participants(
                    self._now(), _participant(caller), _participant(callee)
                )
                self._drive(link)

    async def call_event(self, call_sid: str, event: CallEvent) -> list[str]:
        """Send a call event's partial metadata to every live session of the call (a
        re-INVITE each, queued behind that session's earlier ones). Returns the Siprec SIDs
        it was queued for. The service checked the event against the call's roster, which
        every live session shares."""
        sent = []
        for link in list(self._links.values()):
            if link.request.call_sid != call_sid or link.reported:
                continue
            try:
                queued = link.session.call_event(self._now(), event)
            except CallEventError as exc:  # a session out of step with the call: say so
                link.log.warning("Siprec %s: call event not sent: %s", link.sid, exc)
                continue
            # A session started again for this Siprec (failover) begins from the call as
            # it is now, not as it was at the start.
            link.request = dataclasses.replace(link.request, roster=link.session.roster)
            if queued:
                sent.append(link.sid)
            self._drive(link)
        return sent

    def handle_engine_event(self, event: EngineEvent) -> None:
        """React to an engine event; a ``send_error`` saying the SRS's media address is
        unreachable (ICMP) fails that session ("dead SRS"). Other events are ignored."""
        if event.kind != "send_error" or event.fork_id is None:
            return
        link = self._by_fork.get(event.fork_id)
        if link is None or link.reported or not link.started:
            return
        if event.value not in _DEAD_MEDIA_ERRNOS:
            return
        if link.session.state is not SessionState.ESTABLISHED:
            return  # lost already: a failover is setting up, or the end is being reported
        if self._now() < link.media_grace_until:
            # ICMP for packets sent to the lost recorder can be reported after the new one
            # answered; the engine repeats a real one every second (rate limit), so a dead
            # new address is still found after this grace.
            return
        name = errno.errorcode.get(event.value, str(event.value))
        message = (
            f"SRS media unreachable ({name} on forked stream of track {event.track.label}) "
            f"during established phase, SRS {_safe_uri(link.session.srs_uri)}"
        )
        if self._fail_over(link, message, None, "established"):
            self._drive(link)
            return
        link.log.warning("Siprec %s: %s", link.sid, message)
        self._report_end(link, LinkEvent(link.sid, "error", ERR_MEDIA_UNREACHABLE, message,
                                         phase="established",
                                         recorder=_safe_uri(link.session.srs_uri)))
        # Best effort BYE; its outcome is not reported (the error already was).
        link.session.stop(self._now(), "media unreachable")
        self._drive(link)

    def stream_counters(self, siprec_sid: str) -> list[dict[str, Any]]:
        """What ``GET …/Siprec/{Sid}.json`` shows of a live Siprec's forked streams: packets
        sent, dropped on our side, and the recorder's last RTCP receiver report (None until
        one came). Empty once the Siprec ended (its forks are gone)."""
        link = self._links.get(siprec_sid)
        if link is None or link.reported:
            return []
        out = []
        for label, stream in sorted(link.streams.items()):
            fork = stream.fork
            counters = fork.counters()
            reported = bool(counters.get("rr_last_ns"))
            out.append({
                "label": label,
                "track": fork.track.label,
                "sent": int(counters.get("sent", 0)),
                # Lost on our side; "skipped" (paused, no destination yet) is not loss.
                "dropped": sum(int(counters.get(k, 0)) for k in _DROPPED_COUNTERS),
                "recorder_lost": max(0, int(counters["rr_cumulative_lost"])) if reported
                else None,
                "recorder_jitter_ms": round(
                    counters["rr_jitter"] * 1000 / fork.call.clock_rate, 3) if reported
                else None,
            })
        return out

    def session_state(self, siprec_sid: str) -> SessionState | None:
        """The recording session's state (for diagnostics and tests)."""
        link = self._links.get(siprec_sid)
        return link.session.state if link else None

    def forks(self, siprec_sid: str) -> list[Fork]:
        """The forks of a running Siprec (for counters)."""
        link = self._links.get(siprec_sid)
        return [s.fork for s in link.streams.values()] if link else []

    # --- starting ---------------------------------------------------------------------------

    @staticmethod
    def _parse_connector(connector: Connector) -> tuple[str, bool, str | None, tuple[str, ...]]:
        name = connector.unique_name
        try:
            srs, secure, edge = split_connector_uri(connector.srs)
            standbys: list[str] = []
            for uri in connector.standby_srs:
                clean, standby_secure, _ = split_connector_uri(uri)
                standbys.append(clean)
                secure = secure or standby_secure
            for uri in (srs, *standbys):
                if not SipUri.parse(uri).is_sip:
                    raise SipParseError("not a sip: or sips: URI")
        except (SipParseError, ValueError) as exc:
            raise LinkError(
                f"connector {name} has an invalid SRS URI: {exc}", ERR_BAD_CONNECTOR_URI
            ) from None
        return srs, secure, edge, tuple(standbys)

    def _warn_clear_keys(self, connector: Connector, transport: str) -> None:
        key = (connector.account_sid, connector.unique_name)
        if key in self._warned:
            return
        self._warned.add(key)
        log.warning(
            "connector %s is secure but its SRS URI forces transport=%s: "
            "SDES SRTP keys will cross the network in clear",
            connector.unique_name,
            transport,
        )

    async def _choose_edge(
        self, name: str | None, connector: Connector, srs: str, transport: str | None
    ) -> Edge:
        if name is not None:
            edge = self._edges.get(name)
            if edge is None:
                raise LinkError(
                    f"connector {connector.unique_name} names unknown edge {name!r}",
                    ERR_UNKNOWN_EDGE,
                )
            if name in self._unusable:
                raise LinkError(
                    f"edge {name!r} ({edge.address}) is unusable: {self._unusable[name]}",
                    ERR_UNUSABLE_EDGE,
                )
            return edge
        usable = [e for e in self._edges.values() if e.name not in self._unusable]
        if not usable:
            names = ", ".join(sorted(self._unusable))
            raise LinkError(f"no usable edge (unusable: {names})", ERR_UNUSABLE_EDGE)
        for edge in usable:
            if edge.default:
                return edge
        if any(e.default for e in self._edges.values()):
            default = next(e for e in self._edges.values() if e.default)
            raise LinkError(
                f"default edge {default.name!r} ({default.address}) is unusable: "
                f"{self._unusable[default.name]}",
                ERR_UNUSABLE_EDGE,
            )
        if len(usable) == 1:
            return usable[0]
        rtts = await asyncio.gather(*(self._rtt_to(e, connector, srs, transport) for e in usable))
        answered = [(rtt, i) for i, rtt in enumerate(rtts) if rtt is not None]
        if not answered:
            # Nobody answered OPTIONS: let the session itself fail (with a SIP status)
            # or fail over to a standby, from the first edge.
            log.warning(
                "no edge got an OPTIONS answer from %s; using %s", _safe_uri(srs), usable[0].name
            )
            return usable[0]
        return usable[min(answered)[1]]

    async def _rtt_to(
        self, edge: Edge, connector: Connector, srs: str, transport: str | None
    ) -> float | None:
        """OPTIONS round-trip from ``edge`` to the SRS (cached), None if no answer."""
        key = (edge.name, srs)
        now = self._now()
        cached = self._rtt.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        rtt = await self._probe(edge, connector, srs, transport)
        self._rtt[key] = (now + _PROBE_CACHE_SECONDS, rtt)
        log.debug("OPTIONS round-trip from edge %s to %s: %s", edge.name, _safe_uri(srs), rtt)
        return rtt

    async def _probe(
        self, edge: Edge, connector: Connector, srs: str, transport: str | None
    ) -> float | None:
        answer = await self._options(edge, connector, srs, transport, self._probe_timeout)
        return answer[0] if answer is not None else None

    async def _options(
        self, edge: Edge, connector: Connector, srs: str, transport: str | None, timeout: float
    ) -> tuple[float, Response] | None:
        """One out-of-dialog OPTIONS from ``edge``: (round-trip, final answer), or None when
        none came within ``timeout`` or the transport failed."""
        uri = SipUri.parse(srs)
        destination = _destination(uri, transport)
        kind = destination.transport
        port = self._ports[edge.name]
        address = f"[{edge.address}]" if ":" in edge.address else edge.address
        call_id = f"{secrets.token_hex(12)}@{edge.address}"
        request = Request("OPTIONS", str(SipUri(uri.scheme, uri.user, None, uri.host, uri.port)))
        h = request.headers
        h.add("Via", f"SIP/2.0/{kind.upper()} {address}:{port};branch={new_branch()};rport")
        h.add("Max-Forwards", "70")
        h.add("From", f"<sip:mediafork@{address}>;tag={secrets.token_hex(6)}")
        h.add("To", f"<{request.uri}>")
        h.add("Call-ID", call_id)
        h.add("CSeq", "1 OPTIONS")
        h.add("Accept", "application/sdp")
        h.add("User-Agent", self._user_agent)
        if connector.credentials_header and connector.credentials:
            h.add(connector.credentials_header, connector.credentials)
        for name, value in connector.profile.headers:  # a recorder may demand them on all
            h.add(name, value)
        data = request.to_bytes()
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._probes[call_id] = future
        started = self._now()
        try:
            deadline = started + timeout
            interval = self._timers.t1
            while not future.done() and self._now() < deadline:
                await self.transport.send(data, destination, edge.address)
                if kind != "udp":
                    interval = deadline - self._now()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        asyncio.shield(future), max(0.0, min(interval, deadline - self._now()))
                    )
                interval *= 2
            if future.done() and not future.cancelled():
                return self._now() - started, future.result()
            return None
        except TransportError as exc:
            log.debug("OPTIONS from edge %s failed: %s", edge.name, exc.reason)
            return None
        finally:
            self._probes.pop(call_id, None)

    def _create_forks(
        self, call: Call, request: SiprecStart, edge: Edge, secure: bool, suites: Sequence[str]
    ) -> list[_Stream]:
        streams: list[_Stream] = []
        try:
            for track in _TRACKS[request.track]:
                # One fresh key per offered suite; the fork starts with the first (the
                # answer's choice re-keys it in _apply_keys before any destination is set).
                keys = {s: SrtpKey.generate(SrtpProfile(s)) for s in suites} if secure else {}
                first = next(iter(keys.items()), (None, None))
                fork = call.add_fork(
                    track,
                    key=first[1],
                    local_address=edge.address,
                    cname=f"mediafork-{request.siprec_sid[-12:]}-{_LABELS[track]}",
                )
                streams.append(_Stream(_LABELS[track], fork, keys, (first[0], None)))
        except (EngineError, OSError, KeyError) as exc:
            self._close_streams(streams)
            raise LinkError(
                f"cannot create forked streams on edge {edge.name} ({edge.address}): {exc}",
                ERR_ENGINE_FORKS,
            ) from None
        return streams

    @staticmethod
    def _close_streams(streams: list[_Stream]) -> None:
        for stream in streams:
            with contextlib.suppress(Exception):
                stream.fork.close()

    # --- recorder health (OPTIONS) ------------------------------------------------------------

    def watch_recorders(self, connectors: Iterable[Connector]) -> None:
        """Health-check every distinct recorder (SRS and standbys) of ``connectors`` from now
        on (call at start and after a reload; see :mod:`.recorder_health`). Each recorder is
        probed from its connector's edge (else the default or first usable one), with the
        connector's credentials header, over the transport a session to it would use."""
        targets: dict[RecorderKey, tuple[Connector, str, str | None, str | None]] = {}
        for connector in connectors:
            try:
                srs, secure, edge, standbys = self._parse_connector(connector)
            except LinkError:
                continue  # the config check refuses such a connector; never probe it
            transport = _signalling_transport(srs, secure)
            for uri in (srs, *standbys):
                targets.setdefault(_recorder_key(uri, transport), (connector, uri, transport, edge))
        self._health_targets = targets
        self._health.set_targets(targets, self._now())
        if self._health.config.enabled and targets and self._health_task is None \
                and not self._closed:
            self._health_task = asyncio.ensure_future(self._health_loop())

    def recorder_states(self) -> dict[tuple[str, str], bool]:
        """(``host:port``, transport) -> up, for every health-checked recorder (metrics);
        empty when health checks are off (no mark to report)."""
        out: dict[tuple[str, str], bool] = {}
        if not self._health.config.enabled:
            return out
        for (transport, host, port), up in self._health.states().items():
            where = f"[{host}]" if ":" in host else host
            out[(f"{where}:{port}", transport)] = up
        return out

    def _by_health(self, uris: Sequence[str], transport: str | None) -> list[str]:
        return self._health.order(list(uris), [_recorder_key(u, transport) for u in uris])

    async def _health_loop(self) -> None:
        """Start the probes that are due; one in flight per recorder (RecorderHealth.due)."""
        while not self._closed:
            now = self._now()
            for key in self._health.due(now):
                task = asyncio.ensure_future(self._health_probe(key))
                self._health_probes.add(task)
                task.add_done_callback(self._health_probes.discard)
            deadline = self._health.next_deadline()
            wait = 1.0 if deadline is None else deadline - self._now()
            await asyncio.sleep(min(max(wait, 0.01), 1.0))  # wakes for reloaded targets too

    async def _health_probe(self, key: RecorderKey) -> None:
        status: int | None = None
        try:
            target = self._health_targets.get(key)
            edge = self._probe_edge(target[3]) if target is not None else None
            if target is not None and edge is not None:
                connector, uri, transport, _ = target
                answer = await self._options(edge, connector, uri, transport,
                                             self._health.config.timeout)
                status = answer[1].status if answer is not None else None
        except Exception:
            log.exception("OPTIONS health check of %s:%s failed", key[1], key[2])
        finally:
            changed = self._health.result(key, status, self._now())
        where = f"{key[1]}:{key[2]} ({key[0]})"
        if changed is False:
            log.warning("recorder %s is down: %d health checks in a row failed (last: %s); "
                        "new Siprecs try it last", where, self._health.config.down_after,
                        f"SIP {status}" if status is not None else "no answer")
        elif changed is True:
            log.info("recorder %s is up again (SIP %s to OPTIONS)", where, status)

    def _probe_edge(self, name: str | None) -> Edge | None:
        """The edge a health check leaves from: the connector's, else the default, else the
        first usable one (no round-trip race: a probe is not a session)."""
        usable = [e for e in self._edges.values() if e.name not in self._unusable]
        for edge in usable:
            if edge.name == name:
                return edge
        if name is not None:
            return None
        return next((e for e in usable if e.default), usable[0] if usable else None)

    # --- mid-call failover --------------------------------------------------------------------

    def _fail_over(self, link: _Link, cause: str, status: int | None, phase: str) -> bool:
        """The established session is lost: start one with the connector's other recorders
        (up ones first, in the connector's order; one pass, the session's own set-up
        failover). The forks stay; they get fresh SRTP keys and send nothing until the new
        recorder answered. False when there is nothing to fail over to (report the error)."""
        if link.stop_requested or link.reported or not link.targets:
            return False
        old = link.session
        lost = old.srs_uri
        if link.failovers >= self._max_failovers:
            link.log.warning("Siprec %s: recording session with %s lost; no failover "
                             "(max_failovers = %d reached)", link.sid, _safe_uri(lost),
                             self._max_failovers)
            return False
        candidates = self._by_health([u for u in link.targets if u != lost], link.transport)
        if not candidates:
            return False
        now = self._now()
        # The old dialog: a best-effort BYE (the session queued one when it failed), and no
        # more routing of its Call-ID to this link: stray requests get 481 from the links.
        if old.state is SessionState.ESTABLISHED:
            old.stop(now, "recorder lost")
        for out in old.messages_to_send():
            link.outbox.put_nowait(out)
        if self._by_call_id.get(old.call_id) is link:
            del self._by_call_id[old.call_id]
        link.call_ids.discard(old.call_id)
        for stream in link.streams.values():
            if stream.keys:  # secure: new keys for every offered suite, never the lost ones
                stream.keys = {s: SrtpKey.generate(SrtpProfile(s)) for s in stream.keys}
                stream.applied = (None, None)  # _apply_keys installs them on the answer
            self._fork_call(link, lambda fork=stream.fork: fork.clear_destination(wait=False))
        request = link.request
        config = old.config
        caller, callee = link.participants or (request.caller, request.callee)
        config = dataclasses.replace(
            config, srs_uri=candidates[0], standby_uris=tuple(candidates[1:]),
            streams=self._forked_streams(list(link.streams.values()), config.streams[0].codec),
            caller=_participant(caller), callee=_participant(callee),
            # The lost session's roster is the call as it is now: call events and
            # update_participants both changed it (request.roster misses the latter).
            roster=old.roster, metadata_seed=old.metadata_seed)
        link.session = RecordingSession(config)
        link.failovers += 1
        link.failover_from = (lost, cause, status, phase)
        link.remotely_paused = False
        link.log.warning("Siprec %s: recording session with %s lost (%s); failing over to %s "
                         "(failover %d of at most %d)", link.sid, _safe_uri(lost), _short(cause),
                         _safe_uri(candidates[0]), link.failovers, self._max_failovers)
        link.session.start(now, old.start_time)
        return True

    def _failed_over(self, link: _Link, event: ev.Established) -> None:
        """The failover session is up: media to the new recorder, the ``failover`` event."""
        assert link.failover_from is not None
        lost, cause, status, phase = link.failover_from
        link.failover_from = None
        if link.reported:
            return
        self._apply(link, event.streams)
        link.media_grace_until = self._now() + _MEDIA_GRACE_SECONDS
        if link.locally_paused:
            link.session.pause(self._now())  # the forks stay paused; tell the recorder
        else:
            for stream in link.streams.values():
                self._fork_call(link, lambda fork=stream.fork: fork.resume(wait=False))
        record = link.session.dialog_record()
        if record is not None:
            record["edge"] = link.edge.name
        link.log.info("Siprec %s: recording continues with %s after losing %s", link.sid,
                      _safe_uri(event.srs_uri), _safe_uri(lost))
        self._emit(LinkEvent(link.sid, "failover", error_message=cause, sip_status=status,
                             phase=phase, recorder=_safe_uri(event.srs_uri),
                             previous_recorder=_safe_uri(lost),
                             failover_count=link.failovers, dialog=record))

    def _failover_failed(self, link: _Link, event: ev.Failed) -> None:
        """No other recorder took the lost session over: the one ``siprec-error``."""
        assert link.failover_from is not None
        lost, cause, _, phase = link.failover_from
        link.failover_from = None
        message = (f"{_short(cause, 240)}; failover failed: "
                   f"{self._failure_message(link, event)}")
        link.log.warning("Siprec %s: %s", link.sid, message)
        self._report_end(link, LinkEvent(
            link.sid, "error", ERR_SESSION_LOST, message, sip_status=event.status,
            reason_header=event.reason_header, phase=phase,
            recorder=_safe_uri(link.session.srs_uri), previous_recorder=_safe_uri(lost)))

    # --- driving sessions -------------------------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _drive(self, link: _Link) -> None:
        """Move the session's output to the sender, act on its events, re-arm its timer."""
        for _ in range(100):  # handlers may call back into the session; bounded
            session = link.session  # a mid-call failover swaps it
            progressed = False
            for out in session.messages_to_send():
                link.outbox.put_nowait(out)
                progressed = True
            if session.call_id and session.call_id not in link.call_ids:
                link.call_ids.add(session.call_id)
                self._by_call_id[session.call_id] = link
            while (event := session.next_event()) is not None:
                progressed = True
                try:
                    self._on_event(link, event)
                except Exception:
                    link.log.exception("Siprec %s: error handling %s", link.sid, type(event).__name__)
            if not progressed:
                break
        if link.timer is not None:
            link.timer.cancel()
            link.timer = None
        deadline = link.session.get_timer()
        if deadline is not None:
            loop = asyncio.get_running_loop()
            link.timer = loop.call_at(deadline, self._on_timer, link, deadline)
        elif link.reported and link.outbox.empty():
            self._drop(link)

    def _on_timer(self, link: _Link, deadline: float) -> None:
        link.timer = None
        # call_at may fire a hair early; the session must see its deadline as reached.
        link.session.handle_timer(max(self._now(), deadline))
        self._drive(link)

    async def _send_loop(self, link: _Link) -> None:
        """Send one session's messages in order (TCP/TLS: connect first, in sequence)."""
        while True:
            out = await link.outbox.get()
            if out is None:
                return
            destination = out.destination
            try:
                peer = await self.transport.send(
                    out.message.to_bytes(), destination, link.edge.address
                )
            except TransportError as exc:
                link.log.info("Siprec %s: cannot send to %s: %s", link.sid, destination.host, exc.reason)
                link.session.handle_transport_error(self._now(), exc.reason, destination)
                self._drive(link)
                continue
            except Exception:
                link.log.exception("Siprec %s: send failed", link.sid)
                continue
            link.resolved.setdefault((destination.transport, *peer), set()).add(destination)

    def _on_message(
        self, message: Message, source: tuple[str, int], transport: str, local: str
    ) -> None:
        try:
            call_id = message.call_id
        except SipParseError:
            return
        if isinstance(message, Response):
            klass = f"{message.status // 100}xx"
            self._response_counts[klass] = self._response_counts.get(klass, 0) + 1
            probe = self._probes.get(call_id)
            if probe is not None:
                if message.status >= 200 and not probe.done():
                    probe.set_result(message)
                return
        link = self._by_call_id.get(call_id)
        if link is not None:
            link.session.handle_message(message, self._now(), source)
            self._drive(link)
            return
        if isinstance(message, Request) and message.method != "ACK":
            # Out of any session: OPTIONS pings are answered, the rest is 481 (§12.2.2).
            status = 200 if message.method == "OPTIONS" else 481
            headers = (
                [("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE")] if status == 200 else []
            )
            reply = build_response(message, status, to_tag=secrets.token_hex(4), headers=headers)
            self.transport.send_reply(reply.to_bytes(), source, transport, local)

    def _on_transport_error(
        self, local: str, transport: str, peer: tuple[str, int], reason: str
    ) -> None:
        """ICMP unreachable (UDP) or a lost connection: fail what was sent there."""
        for link in list(self._links.values()):
            if link.edge.address != local:
                continue
            destinations = link.resolved.get((transport, *peer))
            if not destinations:
                continue
            now = self._now()
            for destination in list(destinations):
                link.session.handle_transport_error(now, reason, destination)
            self._drive(link)

    # --- session events -> forks and link events --------------------------------------------

    def _on_event(self, link: _Link, event: ev.SessionEvent) -> None:
        if isinstance(event, ev.Established):
            if link.failover_from is not None:
                self._failed_over(link, event)
                return
            link.started = True
            if not link.reported:
                self._apply(link, event.streams)
                link.log.info(
                    "Siprec %s: recording session established with %s",
                    link.sid,
                    _safe_uri(event.srs_uri),
                )
                record = link.session.dialog_record()
                if record is not None:
                    record["edge"] = link.edge.name
                self.setup_seconds.labels(link.request.connector.unique_name).observe(
                    time.monotonic() - link.created)
                self._emit(LinkEvent(link.sid, "started", dialog=record))
        elif isinstance(event, ev.MediaUpdated):
            if not link.reported:
                self._apply(link, event.streams)
        elif isinstance(event, ev.Paused):
            if event.by_remote:
                link.remotely_paused = True
            self._pause_forks(link)
        elif isinstance(event, ev.Resumed):
            if event.by_remote:
                link.remotely_paused = False
            if not link.locally_paused and not link.remotely_paused and not link.reported:
                for stream in link.streams.values():
                    self._fork_call(link, lambda fork=stream.fork: fork.resume(wait=False))
        elif isinstance(event, ev.UpdateRejected):
            link.log.warning(
                "Siprec %s: SRS refused our %s re-INVITE: %s %s",
                link.sid,
                event.purpose,
                event.status,
                _short(event.reason),
            )
            # The session goes on with the SDP before the refused offer (RFC 3261 §14.1);
            # the forks follow the API, not the recorder's answer: a refused pause keeps them
            # paused (no media the user wanted withheld may leave), a refused resume sends
            # again (the user asked to record; an SRS still at a=inactive just drops it).
            if (event.purpose == "resume" and not link.locally_paused
                    and not link.remotely_paused and not link.reported):
                for stream in link.streams.values():
                    self._fork_call(link, lambda fork=stream.fork: fork.resume(wait=False))
        elif isinstance(event, ev.FailingOver):
            link.log.warning(
                "Siprec %s: SRS %s failed (%s %s); trying standby %s",
                link.sid,
                _safe_uri(event.failed_uri),
                event.status,
                _short(event.reason),
                _safe_uri(event.next_uri),
            )
        elif isinstance(event, ev.Failed):
            if link.stop_requested:
                self._report_end(link, LinkEvent(link.sid, "stopped"))
            elif link.failover_from is not None:
                self._failover_failed(link, event)
            elif event.phase != "setup" and self._fail_over(
                    link, self._failure_message(link, event), event.status,
                    _PHASES.get(event.phase, "established")):
                pass  # a new session with the next recorder is being set up
            else:
                code = ERR_SETUP_FAILED if event.phase == "setup" else ERR_SESSION_LOST
                message = self._failure_message(link, event)
                link.log.warning("Siprec %s: %s", link.sid, message)
                self._report_end(link, LinkEvent(
                    link.sid, "error", code, message, sip_status=event.status,
                    reason_header=event.reason_header,
                    phase=_PHASES.get(event.phase, "established"),
                    recorder=_safe_uri(link.session.srs_uri)))
        elif isinstance(event, ev.Ended):
            link.log.info(
                "Siprec %s: recording session ended (%s)",
                link.sid,
                "by the SRS" if event.by_remote else "by us",
            )
            self._report_end(link, LinkEvent(link.sid, "stopped", by_remote=event.by_remote))

    def _failure_message(self, link: _Link, event: ev.Failed) -> str:
        status = f"SIP {event.status} " if event.status is not None else ""
        what = (
            "recording session setup failed" if event.phase == "setup" else "recording session lost"
        )
        parts = [f"{what}: {status}{_short(event.reason)} during {event.phase} phase"]
        parts.append(f"SRS {_safe_uri(link.session.srs_uri)}")
        if event.reason_header:
            parts.append(f"Reason: {_short(event.reason_header)}")
        if event.warning:
            parts.append(f"Warning: {_short(event.warning)}")
        return ", ".join(parts)

    def _apply(self, link: _Link, streams: Iterable[ev.StreamDestination]) -> None:
        """Point each fork where the SRS wants it, with the keys of the selected suite."""
        for dest in streams:
            stream = link.streams.get(dest.label)
            if stream is None:
                continue
            try:
                self._apply_keys(link, stream, dest)
                # Queued, not awaited: the event loop must not block on a busy
                # media worker (the change is applied in order with the others).
                if dest.port is None or dest.address is None:
                    stream.fork.clear_destination(wait=False)
                    continue
                if not _is_ip(dest.address) or (dest.rtcp and not _is_ip(dest.rtcp[0])):
                    asyncio.ensure_future(self._apply_resolved(link, stream, dest))
                    continue
                stream.fork.set_destination((dest.address, dest.port), dest.rtcp, wait=False)
            except EngineError as exc:
                self._engine_failed(link, exc)
                return

    async def _apply_resolved(
        self, link: _Link, stream: _Stream, dest: ev.StreamDestination
    ) -> None:
        """The SDP named a host instead of an address (legal, rare): resolve it first."""
        assert dest.address is not None and dest.port is not None
        try:
            address, _ = await self.transport.resolve(
                dest.address, dest.port, "udp", link.edge.address
            )
            rtcp = dest.rtcp
            if rtcp is not None:
                rtcp = await self.transport.resolve(rtcp[0], rtcp[1], "udp", link.edge.address)
            if not link.reported:
                stream.fork.set_destination((address, dest.port), rtcp, wait=False)
        except (TransportError, EngineError) as exc:
            self._engine_failed(link, exc)

    def _apply_keys(self, link: _Link, stream: _Stream, dest: ev.StreamDestination) -> None:
        ours = stream.keys.get(dest.suite) if dest.suite is not None else None
        if ours is None:
            return
        remote = link.session.remote_key(dest.label)
        if (dest.suite, remote) == stream.applied:
            return
        profile = ours.profile
        remote_key: SrtpKey | None = None
        if remote is not None:
            try:
                remote_key = SrtpKey(profile, remote)
            except ValueError:
                # A key of the wrong length only costs SRTCP authentication, not the media.
                link.log.warning(
                    "Siprec %s: SRS SRTP key for stream %s is unusable", link.sid, dest.label
                )
        stream.fork.rotate_key(ours, remote_key)
        stream.applied = (dest.suite, remote)

    def _engine_failed(self, link: _Link, exc: Exception) -> None:
        message = f"media engine could not apply the SRS answer: {exc}"
        link.log.error("Siprec %s: %s", link.sid, message)
        self._report_end(link, LinkEvent(link.sid, "error", ERR_ENGINE_APPLY, message,
                                         phase="established" if link.started else "set-up",
                                         recorder=_safe_uri(link.session.srs_uri)))
        link.session.stop(self._now(), "media error")
        self._drive(link)

    def _pause_forks(self, link: _Link) -> None:
        for stream in link.streams.values():
            if not stream.fork.closed:
                self._fork_call(link, lambda fork=stream.fork: fork.pause(wait=False))

    async def _settled(self, link: _Link) -> None:
        engines = {s.fork.call.engine for s in link.streams.values() if not s.fork.closed}
        for engine in engines:  # in practice one: every fork of a link is on one call
            try:
                await engine.settled()
            except (EngineError, RuntimeError) as exc:  # engine closed, or worker stuck
                link.log.warning("Siprec %s: fork pause not confirmed: %s", link.sid, exc)

    def _fork_call(self, link: _Link, method: object) -> None:
        try:
            method()  # type: ignore[operator]
        except EngineError as exc:
            # The call ended under us: its forks are gone already, nothing to do.
            link.log.debug("Siprec %s: fork operation skipped: %s", link.sid, exc)

    # --- endings ----------------------------------------------------------------------------

    def _live(self, siprec_sid: str) -> _Link | None:
        link = self._links.get(siprec_sid)
        return None if link is None or link.reported or link.stop_requested else link

    async def _stop(self, link: _Link, reason: str, wait: float) -> None:
        if not link.stop_requested:
            link.stop_requested = True
            self._close_forks(link)  # nothing more to record: stop the media now
            link.session.stop(self._now(), reason)
            self._drive(link)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(link.done.wait(), wait)
        self._report_end(link, LinkEvent(link.sid, "stopped"))

    def _report_end(self, link: _Link, event: LinkEvent) -> None:
        link.done.set()  # the session is over (a hang-up link reports nothing, see hang_up)
        if link.reported:
            return
        link.reported = True
        self._close_forks(link)
        link.done.set()
        self._emit(event)
        if self._retiring:  # a reload removed the edge this session was using
            self._close_retired_edges()

    def _close_forks(self, link: _Link) -> None:
        for stream in link.streams.values():
            self._by_fork.pop(stream.fork.id, None)
            try:
                stream.fork.close()
            except Exception as exc:
                link.log.debug("Siprec %s: closing fork: %s", link.sid, exc)

    def _drop(self, link: _Link) -> None:
        """Forget a finished link (its session has no more timers)."""
        if link.timer is not None:
            link.timer.cancel()
            link.timer = None
        if link.sender is not None and not link.sender.done():
            link.outbox.put_nowait(None)  # sends what is queued (a last ACK/BYE), then ends
        for call_id in link.call_ids:
            if self._by_call_id.get(call_id) is link:
                del self._by_call_id[call_id]
        if self._links.get(link.sid) is link:
            del self._links[link.sid]

    def _emit(self, event: LinkEvent) -> None:
        try:
            self._sink(event)
        except Exception:
            log.exception("link event sink failed for Siprec %s", event.siprec_sid)


def _destination(uri: SipUri, transport: str | None) -> Destination:
    """Where a request to ``uri`` goes, as a session would send it (``transport``: the
    connector's, None = from the URI)."""
    kind = uri.transport or ("tls" if uri.scheme == "sips" else transport or "udp")
    host = uri.param("maddr") or uri.host
    return Destination(host.strip("[]"), uri.port or (5061 if kind == "tls" else 5060), kind)


def _recorder_key(uri: str, transport: str | None) -> RecorderKey:
    destination = _destination(SipUri.parse(uri), transport)
    return destination.transport, destination.host, destination.port


def _signalling_transport(srs: str, secure: bool) -> str | None:
    """Secure media needs secure signalling (SDES keys are in it): TLS unless the URI names
    a transport; else None (from each URI)."""
    return "tls" if secure and SipUri.parse(srs).transport is None else None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
