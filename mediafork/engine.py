"""The embedding API: an Engine owns the media worker; Calls have two tracks;
Forks are SRTP (or plain RTP) copies of one track sent to a recorder.

    with Engine() as engine:
        call = engine.add_call("CA...", ingress=True)      # sockets for the media server
        fork = call.add_fork(Track.INBOUND, key=SrtpKey.generate(),
                             destination=("127.0.0.1", 40000))

Embedded use without sockets: ``add_call(..., ingress=False)`` then
``call.push(Track.INBOUND, packet)`` and, for forks made with ``drain=True``,
``fork.drain()`` returns the protected packets for the host to send.

Changes to calls and forks are applied by the worker between batches; each
method here returns once the worker has applied it. Counters can be read at
any time from any thread.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import os
import secrets
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .media import _fastpath
from .media.sockets import EGRESS_BUFFER, INGRESS_BUFFER, PortAllocator
from .media.srtp import (
    SRTP_TRANSFORMS,
    SrtpKey,
    SrtpProfile,
    inbound_session,
    lean_transform_available,
    outbound_session,
)

__all__ = [
    "Call",
    "Engine",
    "EngineError",
    "EngineEvent",
    "Fork",
    "SrtpKey",
    "SrtpProfile",
    "Track",
    "MAX_FORKS_PER_CALL",
    "is_rtcp",
]

MAX_FORKS_PER_CALL = 4
IO_BACKENDS = ("auto", "io_uring", "epoll")
# A wake handles what became ready during the last tick (see docs/dataplane.md,
# "I/O backends", for the measurement behind the default).
DEFAULT_TICK = 0.0
MAX_TICK = 0.001  # well under the 5 ms of added latency a recorder tolerates
log = logging.getLogger(__name__)
_FORK_ACTIVE, _FORK_PAUSED = 0, 1


class EngineError(Exception):
    """A request the engine cannot carry out (limits, closed objects, bad arguments)."""


class Track(enum.IntEnum):
    """The two directions of a call, as in the seeds: inbound is the audio the
    platform receives from the caller, outbound the audio it sends to them."""

    INBOUND = 0
    OUTBOUND = 1

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class EngineEvent:
    """Something the control plane must act on, reported by the worker."""

    kind: str
    """``send_error`` (value: errno, e.g. ECONNREFUSED for ICMP port unreachable),
    ``rtcp_send_error`` (the same for the fork's RTCP socket: the recorder may simply
    not listen for RTCP, so this is no reason to give up on the stream),
    ``no_media`` (value: ms without ingress media), ``media_resumed``, ``rtcp_report``
    (first receiver report from the recorder)."""
    call_sid: str | None
    """The call concerned (None if it has already been removed)."""
    fork_id: int | None
    """The fork concerned, for fork events."""
    track: Track
    """The track concerned."""
    value: int
    """Event-specific number, see ``kind``."""
    time_ns: int
    """CLOCK_MONOTONIC time the worker saw it."""


_EVENT_KINDS = {
    _fastpath.EVENT_SEND_ERROR: "send_error",
    _fastpath.EVENT_NO_MEDIA: "no_media",
    _fastpath.EVENT_MEDIA_RESUMED: "media_resumed",
    _fastpath.EVENT_RTCP_REPORT: "rtcp_report",
    _fastpath.EVENT_RTCP_SEND_ERROR: "rtcp_send_error",
}


def is_rtcp(packet: bytes) -> bool:
    """RFC 5761 §4 demultiplexing: RTCP packet types 192..223 in the second byte."""
    return len(packet) >= 8 and packet[0] >> 6 == 2 and 192 <= packet[1] <= 223


_NOT_SUMMED = ("rr_", "last_")


def _accumulate(totals: dict[str, int], call: Call) -> None:
    for track_counters in call.counters().values():
        for name, value in track_counters.items():
            if not name.startswith(_NOT_SUMMED):
                totals[f"ingress_{name}"] = totals.get(f"ingress_{name}", 0) + value
    for fork in call.forks:
        for name, value in fork.counters().items():
            if not name.startswith(_NOT_SUMMED):
                totals[f"fork_{name}"] = totals.get(f"fork_{name}", 0) + value


DEFAULT_RELATCH_AFTER = 3.0
"""Seconds the latched media source must be silent before another sender may take its
place: long enough that a stranger cannot cut into a live stream, short enough that a
media server that moved ports (re-INVITE, failover) is followed within a few seconds."""


def _relatch_seconds(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 3600:
        raise EngineError(f"relatch_after must be a number of seconds from 0 to 3600, got {value!r}")
    return float(value)


def _power_of_two(n: int, name: str) -> int:
    if n < 2 or n & (n - 1):
        raise EngineError(f"{name} must be a power of two >= 2, got {n}")
    return n


class Engine:
    """The media engine: its worker threads, the calls they forward, their forks.

    With ``workers`` > 1 each worker is an independent C engine with its own thread, epoll
    set and rings; a call (with its forks) lives on the worker that had the fewest calls
    when it was added, so nothing is shared per packet. Counters and events cover all."""

    def __init__(
        self,
        *,
        media_address: str = "127.0.0.1",
        port_range: tuple[int, int] = (30000, 39999),
        push_ring_slots: int = 8192,
        event_ring_slots: int = 4096,
        max_packet: int = 1024,
        threaded: bool = True,
        coalesce: float | None = None,
        workers: int = 1,
        latch: bool = True,
        relatch_after: float = DEFAULT_RELATCH_AFTER,
        io: str = "auto",
        tick: float | None = None,
        srtp_transform: str = "auto",
    ) -> None:
        """``latch``, ``relatch_after``: the default media source latching of calls (see
        :meth:`add_call`). ``io``: the I/O backend, "auto" (the default: io_uring where the
        kernel allows it, else epoll with a warning saying why), "io_uring" (refuse to
        start without it) or "epoll"; the one in use is
        :attr:`io_backend`. ``tick``: seconds a worker lets pass between two wakes so
        that one wake serves every socket that became ready meanwhile (0: wake per
        readiness; at most 1 ms). ``coalesce`` is its former name. ``srtp_transform``:
        what protects the RTP of AES-CM forks, "auto" (the lean sender transform of
        csrc/srtp_cm.h where the build has it, else libsrtp) or "libsrtp"; the one in use is
        :attr:`srtp_transform`."""
        if io not in IO_BACKENDS:
            raise EngineError(f"io must be one of {', '.join(IO_BACKENDS)}, got {io!r}")
        if srtp_transform not in SRTP_TRANSFORMS:
            raise EngineError(f"srtp_transform must be one of {', '.join(SRTP_TRANSFORMS)}, "
                              f"got {srtp_transform!r}")
        if tick is None:
            tick = DEFAULT_TICK if coalesce is None else coalesce
        if isinstance(tick, bool) or not isinstance(tick, (int, float)) or not 0 <= tick <= MAX_TICK:
            raise EngineError(f"tick must be between 0 and {MAX_TICK} seconds, got {tick!r}")
        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 64:
            raise EngineError(f"workers must be an integer from 1 to 64, got {workers!r}")
        self.latch = bool(latch)
        # "srtp_cm" or "libsrtp": what AES-CM forks' RTP goes through (GCM: always libsrtp).
        self._srtp_mode = srtp_transform
        self.srtp_transform = ("srtp_cm" if srtp_transform == "auto" and lean_transform_available()
                               else "libsrtp")
        self.relatch_after = _relatch_seconds(relatch_after)
        if workers > 1 and not threaded:
            raise EngineError("an engine driven by run_once() has a single worker")
        self.media_address = media_address
        self.ports = PortAllocator(*port_range)
        self.max_packet = max_packet
        push_ring_slots = _power_of_two(push_ring_slots, "push_ring_slots")
        event_ring_slots = _power_of_two(event_ring_slots, "event_ring_slots")
        self._cores: list[Any] = []
        try:
            for _ in range(workers):
                self._cores.append(_fastpath.CEngine(
                    push_ring_slots, event_ring_slots, max_packet, round(tick * 1e6), io))
            if threaded:
                for core in self._cores:
                    core.start()
        except BaseException:
            for core in self._cores:  # no half-built engine keeps threads or descriptors
                core.close()
            raise
        self._core = self._cores[0]  # the only one unless workers > 1 (run_once, benches)
        self.tick = float(tick)
        reason = self._core.io_fallback_reason
        if reason:
            log.warning("media I/O backend: epoll (io_uring unavailable: %s)", reason)
        else:
            log.info("media I/O backend: %s", self.io_backend)
        log.info("SRTP transform for AES-CM forks: %s", self.srtp_transform)
        self._load = [0] * workers  # live calls per worker
        self._calls: dict[str, Call] = {}
        self._calls_by_id: dict[int, Call] = {}
        # counters of calls and forks that have ended, so totals never go back
        self._retired: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._closed = False

    # -- lifecycle ---------------------------------------------------------
    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def threaded(self) -> bool:
        return bool(self._core.started)

    @property
    def io_backend(self) -> str:
        """The I/O backend the workers use: "io_uring" or "epoll"."""
        return str(self._core.io_backend)

    @property
    def workers(self) -> int:
        """How many media worker threads (C engines) share the calls."""
        return len(self._cores)

    def close(self) -> None:
        """Remove every call, stop the worker. Idempotent."""
        if self._closed:
            return
        for call in list(self._calls.values()):
            call.close()
        for core in self._cores:
            core.close()
        self._closed = True

    def run_once(self, max_wait: float = 0.0) -> None:
        """Drive one worker iteration from this thread (``threaded=False`` only):
        reads ingress sockets, sends queued packets, runs RTCP timers."""
        self._core.iterate(int(max_wait * 1000))

    async def settled(self, timeout: float = 5.0) -> None:
        """Return once the worker has applied every command queued so far.

        The awaitable twin of ``wait=True``: queue changes with ``wait=False`` (the event
        loop never blocks on a busy worker), then await this where later behaviour must
        see them, e.g. no packet may leave a fork after a pause returns. Polls a counter;
        the worker normally applies commands within microseconds."""
        self._check_open()
        if not self._core.started:  # commands are applied at submission without a worker
            return
        pending = [(core, core.last_ticket()) for core in self._cores]
        deadline = asyncio.get_running_loop().time() + timeout
        delay = 0.0002
        while pending := [(c, t) for c, t in pending if not c.applied(t)]:
            if asyncio.get_running_loop().time() > deadline:
                raise _fastpath.WorkerTimeout(
                    f"media worker did not apply queued commands within {timeout:g} s"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.005)

    # -- calls ---------------------------------------------------------------
    def add_call(
        self,
        call_sid: str,
        *,
        clock_rate: int = 8000,
        dtmf_payload_type: int | None = 101,
        ingress: bool = True,
        ingress_address: str | None = None,
        no_media_timeout: float = 0.0,
        record_slots: int = 1024,
        latch: bool | None = None,
        relatch_after: float | None = None,
    ) -> Call:
        """Register a call. With ``ingress`` the worker receives its two tracks on
        two UDP ports it allocates (see ``Call.ingress``); without, the host pushes.

        ``latch`` (default: the engine's): a track with no source set by
        :meth:`Call.expect_source` accepts RTP only from the first address:port that sends
        it valid RTP; other senders are dropped and counted (``source_rejected``). Another
        sender takes over only after the latched one was silent for ``relatch_after``
        seconds. ``latch=False`` accepts any sender. Pushed packets are not filtered."""
        self._check_open()
        if not call_sid:
            raise EngineError("call_sid is required")
        if record_slots:
            _power_of_two(record_slots, "record_slots")
        latch = self.latch if latch is None else bool(latch)
        relatch_after = (self.relatch_after if relatch_after is None
                         else _relatch_seconds(relatch_after))
        with self._lock:
            if call_sid in self._calls:
                raise EngineError(f"call {call_sid} is already registered")
            fds = (-1, -1)
            ingress_ports: dict[Track, tuple[str, int]] = {}
            if ingress:
                address = ingress_address or self.media_address
                socks = self.ports.bind(address, 2, receive_buffer=INGRESS_BUFFER)
                for track, sock in zip(Track, socks, strict=True):
                    ingress_ports[track] = sock.getsockname()[:2]
                fds = tuple(s.detach() for s in socks)  # the C call owns them now
            dtmf = -1 if dtmf_payload_type is None else int(dtmf_payload_type)
            worker = min(range(len(self._cores)), key=self._load.__getitem__)
            try:
                core = _fastpath.CCall(
                    next(self._ids), dtmf, clock_rate, record_slots, self.max_packet, *fds,
                    latch, int(relatch_after * 1e9),
                )
            except BaseException:
                for fd in fds:
                    if fd >= 0:
                        os.close(fd)
                raise
            self._cores[worker].add_call(core, int(no_media_timeout * 1000))
            self._load[worker] += 1
            call = Call(self, call_sid, core, ingress_ports, clock_rate, worker)
            self._calls[call_sid] = call
            self._calls_by_id[core.id] = call
            return call

    def get_call(self, call_sid: str) -> Call | None:
        return self._calls.get(call_sid)

    @property
    def calls(self) -> list[Call]:
        return list(self._calls.values())

    def _forget(self, call: Call) -> None:
        with self._lock:
            if self._calls.pop(call.sid, None) is not None:
                self._load[call.worker] -= 1
            self._calls_by_id.pop(call._core.id, None)

    # -- events and counters ----------------------------------------------
    @property
    def event_fd(self) -> int:
        """The first worker's event descriptor (all of them: ``event_fds``)."""
        return self._core.event_fd

    @property
    def event_fds(self) -> list[int]:
        """Readable when events are queued: give each to ``loop.add_reader`` and call
        ``poll_events()`` (which reads every worker's events) when one is."""
        return [core.event_fd for core in self._cores]

    def poll_events(self) -> list[EngineEvent]:
        """Every event the workers have queued (in order per worker); never blocks."""
        events = []
        raw: list[tuple[int, int, int, int, int, int]] = []
        for core in self._cores:
            # One native read takes at most 1,024 and resets the descriptor: read until
            # the ring is empty, or the rest would wait for the next event to wake us.
            while batch := core.read_events():
                raw.extend(batch)
        for kind, call_id, fork_id, track, value, time_ns in raw:
            call = self._calls_by_id.get(call_id)
            events.append(
                EngineEvent(
                    kind=_EVENT_KINDS.get(kind, str(kind)),
                    call_sid=call.sid if call else None,
                    fork_id=fork_id or None,
                    track=Track(track & 1),
                    value=value,
                    time_ns=time_ns,
                )
            )
        return events

    def counters(self) -> dict[str, int]:
        """Engine-wide counters (loops, busy time, pushes, events, live calls and forks),
        summed over the workers."""
        self._check_open()
        summed: dict[str, int] = {}
        for core in self._cores:
            for name, value in core.counters().items():
                summed[name] = summed.get(name, 0) + value
        return summed

    def totals(self) -> dict[str, int]:
        """Monotonic sums over every call and fork this engine has had, live or
        ended: track counters prefixed ``ingress_``, fork counters ``fork_``
        (``rr_*`` report snapshots and timestamps are not summed)."""
        self._check_open()
        with self._lock:
            totals = dict(self._retired)
            for call in self._calls.values():
                _accumulate(totals, call)
        return totals

    def _retire(self, call: Call) -> None:
        with self._lock:
            _accumulate(self._retired, call)

    def worker_cpu_seconds(self) -> float:
        """CPU time the worker threads have used, together (0 when not threaded)."""
        self._check_open()
        return sum(core.worker_cpu_ns() for core in self._cores) / 1e9

    def worker_stats(self) -> list[dict[str, float]]:
        """Per worker: live ``calls``, ``loops``, ``busy_seconds`` (working, not waiting)
        and ``cpu_seconds``: a saturated worker shows even when the others are idle."""
        self._check_open()
        stats = []
        for core, calls in zip(self._cores, self._load, strict=True):
            counters = core.counters()
            stats.append({
                "calls": calls,
                "loops": counters["loops"],
                "busy_seconds": counters["busy_ns"] / 1e9,
                "cpu_seconds": core.worker_cpu_ns() / 1e9,
            })
        return stats

    @staticmethod
    def live_allocations() -> int:
        """Data-plane allocations alive in this process (debug accounting)."""
        return int(_fastpath.live_allocations())

    @staticmethod
    def open_media_sockets() -> int:
        """UDP sockets the data plane holds for calls and forks in this process (ingress,
        fork RTP and RTCP). Falls back as soon as a call or fork is closed."""
        return int(_fastpath.open_sockets())

    def _check_open(self) -> None:
        if self._closed:
            raise EngineError("engine is closed")


class Call:
    """A live call: two tracks in, up to four forks out, optional recording tap."""

    def __init__(
        self,
        engine: Engine,
        sid: str,
        core: Any,
        ingress: dict[Track, tuple[str, int]],
        clock_rate: int,
        worker: int = 0,
    ) -> None:
        self.engine = engine
        self.sid = sid
        self._core = core
        self.worker = worker
        """Index of the worker (C engine) this call and its forks live on."""
        self._worker = engine._cores[worker]
        self.ingress = ingress
        """Track -> (address, port) where the media server must send that track."""
        self.clock_rate = clock_rate
        self._forks: dict[int, Fork] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"Call(sid={self.sid!r}, forks={len(self._forks)}, closed={self._closed})"

    @property
    def forks(self) -> list[Fork]:
        return list(self._forks.values())

    @property
    def closed(self) -> bool:
        return self._closed

    def add_fork(
        self,
        track: Track,
        *,
        key: SrtpKey | None = None,
        remote_key: SrtpKey | None = None,
        destination: tuple[str, int] | None = None,
        rtcp_destination: tuple[str, int] | None = None,
        drain: bool = False,
        local_address: str | None = None,
        ssrc: int | None = None,
        cname: str | None = None,
        rtcp_interval: float = 5.0,
        ring_slots: int | None = None,
    ) -> Fork:
        """Fork one track. ``key`` makes it SRTP; ``remote_key`` authenticates the
        recorder's SRTCP reports. With ``drain`` the host takes packets with
        ``Fork.drain()``; otherwise the worker sends them from a UDP socket bound
        on ``local_address`` (the edge) to ``destination`` once one is set."""
        self._check_open()
        track = Track(track)
        if len(self._forks) >= MAX_FORKS_PER_CALL:
            raise EngineError(f"a call has at most {MAX_FORKS_PER_CALL} forked streams")
        slots = _power_of_two(ring_slots or (1024 if drain else 64), "ring_slots")
        fd = rtcp_fd = -1
        local: tuple[str, int] | None = None
        if not drain:
            address = local_address or self.engine.media_address
            rtp_sock, rtcp_sock = self.engine.ports.bind(
                address, 1, rtcp_pairs=True, send_buffer=EGRESS_BUFFER, report_errors=True
            )
            local = rtp_sock.getsockname()[:2]
            fd, rtcp_fd = rtp_sock.detach(), rtcp_sock.detach()  # the C fork owns them now
        fork_id = next(self.engine._ids)
        ssrc = secrets.randbits(32) if ssrc is None else ssrc & 0xFFFFFFFF
        cname_bytes = (cname or f"mediafork-{self.sid[-12:]}").encode("ascii", "replace")[:63]
        try:
            core = _fastpath.CFork(
                fork_id,
                int(track),
                ssrc,
                secrets.randbits(16),
                secrets.randbits(32),
                fd,
                rtcp_fd,
                slots,
                self.engine.max_packet,
                cname_bytes,
                int(rtcp_interval * 1e9),
            )
        except BaseException:
            for descriptor in (fd, rtcp_fd):
                if descriptor >= 0:
                    os.close(descriptor)
            raise
        try:
            tx = outbound_session(key, ssrc, self.engine._srtp_mode) if key else None
            rx = inbound_session(remote_key) if remote_key else None
            self._worker.add_fork(self._core, core, tx, rx)
        except ValueError as exc:
            core.release()  # the worker refused it: its sockets close now
            raise EngineError(str(exc)) from None
        except BaseException:
            if not core.linked:
                core.release()
            raise
        fork = Fork(self, core, track, ssrc, key, local, drain)
        self._forks[fork_id] = fork
        if destination is not None:
            fork.set_destination(destination, rtcp_destination)
        return fork

    def push(self, track: Track, packet: bytes) -> bool:
        """Hand one RTP packet of ``track`` to the engine (embedded ingress)."""
        data = np.frombuffer(packet, dtype=np.uint8)
        lengths = np.array([len(packet)], dtype=np.uint32)
        return self.push_many(track, data, np.zeros(1, dtype=np.uint32), lengths) == 1

    def push_many(
        self,
        track: Track,
        buffer: Any,
        offsets: Sequence[int] | np.ndarray,
        lengths: Sequence[int] | np.ndarray,
    ) -> int:
        """Push a batch: packet i is ``buffer[offsets[i]:offsets[i] + lengths[i]]``.
        One lock and one wakeup for the whole batch. Returns how many were queued
        (the rest found the ingress ring full and were dropped and counted)."""
        self._check_open()
        data = np.frombuffer(buffer, dtype=np.uint8) if not isinstance(buffer, np.ndarray) else buffer
        return int(
            self._worker.push(
                self._core,
                int(Track(track)),
                np.ascontiguousarray(data, dtype=np.uint8),
                np.ascontiguousarray(offsets, dtype=np.uint32),
                np.ascontiguousarray(lengths, dtype=np.uint32),
            )
        )

    def expect_source(self, track: Track, address: str | None, port: int | None = None) -> None:
        """Accept ingress for ``track`` only from ``address`` (and ``port``);
        ``None`` accepts any. Others are dropped and counted (source_rejected)."""
        self._check_open()
        mode = 0 if address is None else (2 if port else 1)
        self._worker.set_track_source(self._core, int(Track(track)), mode, address or "", port or 0)

    def record(self, tracks: Iterable[Track]) -> None:
        """Tap ``tracks`` for local recording (empty: stop tapping)."""
        self._check_open()
        mask = 0
        for t in tracks:
            mask |= 1 << int(Track(t))
        self._worker.set_recording(self._core, mask)

    def drain_recording(self, max_packets: int = 1024) -> dict[str, np.ndarray]:
        """Packets tapped for recording since the last call, as numpy arrays:
        track, seq, timestamp, payload_type, marker, arrival_ns, offset, length, payload."""
        self._check_open()
        # Room for G.711 up to 40 ms per packet; a packet that does not fit
        # stays in the ring for the next drain, so nothing is lost by a cap.
        return self._core.drain_recording(max_packets, max(64 * 1024, max_packets * 400))

    def counters(self) -> dict[str, dict[str, int]]:
        """Per-track ingress counters."""
        return {t.label: dict(self._core.track_counters(int(t))) for t in Track}

    def close(self) -> None:
        """Stop every fork and remove the call from the worker. Idempotent."""
        if self._closed:
            return
        forks = [f._core for f in self._forks.values()]
        self._worker.remove_call(self._core, forks)
        self.engine._retire(self)  # counters are final now that the worker let go
        # The worker has let go: sockets, rings and SRTP contexts are freed now, not when
        # the garbage collector finds these objects (ports must be free for the next call).
        for fork in self._forks.values():
            fork._core.release()
            fork._closed = True
        self._core.release()
        self._closed = True
        self.engine._forget(self)

    def _check_open(self) -> None:
        if self._closed:
            raise EngineError(f"call {self.sid} has ended")


class Fork:
    """One forked stream: a track of a call, rewritten onto its own SSRC and
    sequence/timestamp bases and protected with its own SRTP key."""

    def __init__(
        self,
        call: Call,
        core: Any,
        track: Track,
        ssrc: int,
        key: SrtpKey | None,
        local_address: tuple[str, int] | None,
        drain: bool,
    ) -> None:
        self.call = call
        self._core = core
        self.track = track
        self.ssrc = ssrc
        self.key = key
        self.local_address = local_address
        """(address, port) the fork sends RTP from; offered in SDP. RTCP uses port + 1
        (``rtcp_local_address``). None in drain mode."""
        self.drain_mode = drain
        self.destination: tuple[str, int] | None = None
        self.paused = False
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"Fork(id={self.id}, call={self.call.sid!r}, track={self.track.label}, "
            f"ssrc={self.ssrc:#010x}, secure={self.key is not None}, closed={self._closed})"
        )

    @property
    def id(self) -> int:
        return int(self._core.id)

    @property
    def rtcp_local_address(self) -> tuple[str, int] | None:
        """Where the recorder's RTCP reports arrive and our sender reports leave from."""
        if self.local_address is None:
            return None
        return self.local_address[0], self.local_address[1] + 1

    @property
    def closed(self) -> bool:
        return self._closed

    def set_destination(
        self,
        destination: tuple[str, int],
        rtcp_destination: tuple[str, int] | None = None,
        *,
        wait: bool = True,
    ) -> None:
        """Where to send (numeric IP). RTCP goes to ``rtcp_destination``, by default port + 1.

        ``wait=False`` queues the change and returns at once: an event loop should not
        block on a busy worker. Commands are applied in order, by the worker's next loop;
        packets that arrive (or are pushed) before then still see the previous state."""
        self._check_open()
        host, port = destination
        if not 0 < port < 65536:
            raise EngineError(f"invalid destination port {port}")
        rtcp_host, rtcp_port = rtcp_destination or (host, port + 1 if port < 65535 else port)
        try:
            self.call._worker.set_fork_destination(self._core, host, port, rtcp_host,
                                                   rtcp_port, wait)
        except ValueError as exc:
            raise EngineError(str(exc)) from None
        self.destination = (host, port)

    def clear_destination(self, *, wait: bool = True) -> None:
        """Stop sending (answer with port 0) without breaking sequence continuity."""
        self._check_open()
        self.call._worker.clear_fork_destination(self._core, wait)
        self.destination = None

    def pause(self, *, wait: bool = True) -> None:
        self._check_open()
        self.call._worker.set_fork_state(self._core, _FORK_PAUSED, wait)
        self.paused = True

    def resume(self, *, wait: bool = True) -> None:
        self._check_open()
        self.call._worker.set_fork_state(self._core, _FORK_ACTIVE, wait)
        self.paused = False

    def rotate_key(self, key: SrtpKey | None, remote_key: SrtpKey | None = None) -> None:
        """Switch to new SRTP keys (e.g. after an SDES re-offer)."""
        self._check_open()
        tx = outbound_session(key, self.ssrc, self.call.engine._srtp_mode) if key else None
        rx = inbound_session(remote_key) if remote_key else None
        self.call._worker.set_fork_srtp(self._core, tx, rx)
        self.key = key

    def drain(self, max_packets: int = 256) -> list[bytes]:
        """Protected packets queued for this fork (drain mode): RTP, and RTCP
        sender reports (tell them apart with :func:`is_rtcp`)."""
        self._check_open()
        return self._core.drain(max_packets)

    def counters(self) -> dict[str, int]:
        return dict(self._core.counters())

    def close(self) -> None:
        """Remove this fork; once the worker has let go, its sockets close and its SRTP
        contexts (keys) are freed, before this returns. Idempotent."""
        if self._closed:
            return
        if not self.call.closed:
            self.call._worker.remove_fork(self._core)
            final = {f"fork_{k}": v for k, v in self.counters().items() if not k.startswith(_NOT_SUMMED)}
            with self.call.engine._lock:
                retired = self.call.engine._retired
                for name, value in final.items():
                    retired[name] = retired.get(name, 0) + value
            self._core.release()
        self.call._forks.pop(self.id, None)
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise EngineError(f"fork {self.id} is closed")
