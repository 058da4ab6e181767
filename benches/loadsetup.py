"""Shared set-up for the end-to-end load measurements (benches and scripts/load):
N calls with ingress sockets, one both-tracks fork each (two SRTP forked
streams), a paced C load generator and a sink, all on 127.0.0.1."""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import threading
import time
from dataclasses import dataclass

from mediafork.engine import DEFAULT_TICK, Engine, SrtpKey, Track
from mediafork.media import _fastpath
from mediafork.media.sockets import udp_socket
from mediafork.media.srtp import outbound_session

PPS = 50
PAYLOAD = 160  # PCMU 20 ms -> 172-byte RTP packets


@dataclass
class LoadResult:
    calls: int
    generated: int
    received_by_engine: int
    forwarded: int
    sent_by_engine: int
    dropped_inside: int
    sink_received: int
    cpu_us_per_pkt: float
    loss_pct: float
    command_ms: list[float] | None = None
    """With ``probe_commands``: round trips (add a fork, pause it, remove it) timed
    while the load runs: how long a control operation waits for a busy worker."""

    @property
    def zero_loss(self) -> bool:
        return self.generated > 0 and self.sink_received >= self.generated and self.dropped_inside == 0


def _sinks(n: int) -> list[socket.socket]:
    return [udp_socket("127.0.0.1", 0, receive_buffer=16 << 20) for _ in range(n)]


def _run_generator(dests, duration, sinks, result):
    gen = udp_socket("127.0.0.1", 0, send_buffer=8 << 20)
    try:
        result.update(_fastpath.run_loadgen(gen.fileno(), dests, PPS, PAYLOAD, 0, duration, 0.5,
                                            [s.fileno() for s in sinks]))
    finally:
        gen.close()


def _wait_until_drained(calls, forks, limit: float = 5.0) -> None:
    """Counters are read once the worker has caught up with what was sent."""
    deadline = time.monotonic() + limit
    last = -1
    while time.monotonic() < deadline:
        now = sum(f.counters()["sent"] for f in forks)
        if now == last:
            return
        last = now
        time.sleep(0.2)


def _probe_commands(call, sink: socket.socket, until: float) -> list[float]:
    """Time waited control operations on an idle spare call until ``until``."""
    times = []
    while time.monotonic() < until:
        t0 = time.perf_counter()
        fork = call.add_fork(Track.INBOUND, key=SrtpKey.generate(),
                             destination=sink.getsockname())
        fork.pause()
        fork.close()
        times.append((time.perf_counter() - t0) * 1e3 / 3)
        time.sleep(0.02)
    return times


def bench_io() -> str:
    """The engine's I/O backend for the benches: ``MEDIAFORK_BENCH_IO`` (auto, io_uring or
    epoll; default auto, what a daemon picks), so each path can be measured on its own."""
    return os.environ.get("MEDIAFORK_BENCH_IO", "auto")


def bench_tick() -> float | None:
    """The engine's tick for the benches: ``MEDIAFORK_BENCH_TICK_US`` (microseconds; unset:
    the engine's default, what a daemon runs with)."""
    value = os.environ.get("MEDIAFORK_BENCH_TICK_US")
    return None if value in (None, "") else int(value) / 1e6


def resolved_bench_tick_us() -> int:
    """The tick the benches' engines run with, in microseconds."""
    tick = bench_tick()
    return round((DEFAULT_TICK if tick is None else tick) * 1e6)


def resolved_bench_io() -> str:
    """The backend :func:`bench_io` resolves to on this machine ("auto" names none)."""
    with Engine(port_range=(20000, 20009), io=bench_io()) as engine:
        return engine.io_backend


def run_engine_load(calls: int, duration: float, warmup: float = 1.0, *,
                    probe_commands: bool = False, workers: int = 1) -> LoadResult:
    """Forward `calls` calls through mediafork (``workers`` media threads) for `duration`
    seconds."""
    sinks = _sinks(4)
    rtcp_sink = udp_socket("127.0.0.1", 0)
    engine = Engine(port_range=(20000, 59999), workers=workers, io=bench_io(), tick=bench_tick())
    dests, forks, call_objs = [], [], []
    call = None
    try:
        for i in range(calls):
            call = engine.add_call(f"CA{i:032x}", record_slots=0)
            call_objs.append(call)
            for track in Track:
                dests.append(call.ingress[track])
                forks.append(call.add_fork(
                    track, key=SrtpKey.generate(),
                    destination=sinks[(2 * i + track) % len(sinks)].getsockname(),
                    rtcp_destination=rtcp_sink.getsockname(),
                ))
        result: dict = {}
        t = threading.Thread(target=_run_generator, args=(dests, duration, sinks, result))
        t.start()
        time.sleep(warmup)
        cpu0, fwd0 = engine.worker_cpu_seconds(), sum(f.counters()["forwarded"] for f in forks)
        window_end = time.monotonic() + max(0.1, duration - warmup - 0.2)
        command_ms = None
        if probe_commands:
            spare = engine.add_call("CA-probe", ingress=False, record_slots=0)
            command_ms = _probe_commands(spare, rtcp_sink, window_end)
            spare.close()
        time.sleep(max(0.0, window_end - time.monotonic()))
        cpu1, fwd1 = engine.worker_cpu_seconds(), sum(f.counters()["forwarded"] for f in forks)
        t.join()
        _wait_until_drained(call_objs, forks)
        fc = [f.counters() for f in forks]
        received = sum(c.counters()[t.label]["received"] for c in call_objs for t in Track)
        dropped = sum(c["dropped_full"] + c["send_errors"] + c["srtp_errors"] for c in fc)
        generated = result["sent"]
        window = max(1, fwd1 - fwd0)
        return LoadResult(
            calls=calls,
            generated=generated,
            received_by_engine=received,
            forwarded=sum(c["forwarded"] for c in fc),
            sent_by_engine=sum(c["sent"] for c in fc),
            dropped_inside=dropped + (generated - received),
            sink_received=result["sink_received"],
            cpu_us_per_pkt=(cpu1 - cpu0) * 1e6 / window,
            loss_pct=100.0 * max(0, generated - result["sink_received"]) / max(1, generated),
            command_ms=command_ms,
        )
    finally:
        engine.close()
        for s in sinks:
            s.close()
        rtcp_sink.close()
        # Calls and forks close their sockets when collected; steps of thousands of
        # calls would otherwise pile descriptors up until the cyclic GC runs.
        call_objs.clear()
        forks.clear()
        call = None  # noqa: F841 - drop the last reference before collecting
        gc.collect()


def run_raw_load(calls: int, duration: float, *, shared_socket: bool = False) -> tuple[float, int, int]:
    """Baseline: the same streams through a plain C recv+send loop. Stream i
    is received on its own ingress socket and, as a forwarder of independent
    streams must, sent from its own egress socket to the same sinks as the
    engine uses (``shared_socket`` sends everything from one socket instead).
    Returns (cpu_us_per_pkt, generated, forwarded)."""
    sinks = _sinks(4)
    ingress: list[socket.socket] = []
    egress: list[socket.socket] = []
    port = 20000
    try:
        while len(ingress) < 2 * calls:
            with contextlib.suppress(OSError):
                ingress.append(udp_socket("127.0.0.1", port, receive_buffer=1 << 20))
            port += 2
        streams = len(ingress)
        if shared_socket:
            egress = [udp_socket("127.0.0.1", 0, send_buffer=8 << 20)]
            out_fds = [egress[0].fileno()] * streams
        else:
            egress = [udp_socket("127.0.0.1", 0, send_buffer=1 << 19) for _ in range(streams)]
            out_fds = [s.fileno() for s in egress]
        dests = [sinks[i % len(sinks)].getsockname() for i in range(streams)]
        result: dict = {}
        raw: dict = {}

        def forward():
            raw["r"] = _fastpath.raw_forward([s.fileno() for s in ingress], out_fds, dests,
                                             1 << 62, duration + 0.3)

        fwd = threading.Thread(target=forward)
        fwd.start()
        gen = threading.Thread(target=_run_generator,
                               args=([s.getsockname() for s in ingress], duration, sinks, result))
        gen.start()
        gen.join()
        fwd.join()
        forwarded, cpu_ns, _wall = raw["r"]
        return cpu_ns / 1e3 / max(1, forwarded), result["sent"], forwarded
    finally:
        for s in ingress + egress + sinks:
            s.close()


@dataclass
class FloorResult:
    mode: str
    calls: int
    generated: int
    received: int
    forwarded: int
    sink_received: int
    cpu_us_per_pkt: float
    """Forwarder thread CPU per forked packet (the whole loop, as for the engine's window)."""
    syscalls_per_pkt: float
    loss_pct: float
    sink_bytes: int = 0


def run_floor_load(calls: int, duration: float, mode: str = "mmsg", *, forks_per_track: int = 1,
                   tick_us: int = 200, srtp: bool = False, forwarder_cpu: int | None = None,
                   generator_cpu: int | None = None) -> FloorResult:
    """The honest floor (csrc/bench.c ``mf_bench_floor_forward``): the same streams and
    sinks as :func:`run_engine_load`, each ingress socket copied to ``forks_per_track`` fork
    sockets of its own by the cheapest plain C loop batched by a tick (``mmsg``: epoll +
    recvmmsg + sendmmsg; ``io_uring``: multishot recv + one submission per tick). Raises
    OSError when the backend cannot run here (io_uring disabled). With ``srtp`` each fork
    socket has a libsrtp session protecting its copies, as the engine's SRTP forks do
    (the end-to-end bench's forks are SRTP). ``forwarder_cpu`` and
    ``generator_cpu`` pin those threads (benches/vs_rtpengine.py)."""
    sinks = _sinks(4)
    ingress: list[socket.socket] = []
    egress: list[socket.socket] = []
    sessions: list = []
    port = 20000
    try:
        while len(ingress) < 2 * calls:
            with contextlib.suppress(OSError):
                ingress.append(udp_socket("127.0.0.1", port, receive_buffer=1 << 20))
            port += 2
        streams = len(ingress)
        egress = [udp_socket("127.0.0.1", 0, send_buffer=1 << 19)
                  for _ in range(streams * forks_per_track)]
        if srtp:
            sessions = [outbound_session(SrtpKey.generate()) for _ in egress]
        dests = [sinks[i % len(sinks)].getsockname() for i in range(len(egress))]
        result: dict = {}
        out: dict = {}

        def pin(cpu: int | None) -> None:
            if cpu is not None and (os.cpu_count() or 1) > cpu:
                os.sched_setaffinity(0, {cpu})  # Linux: the calling thread

        def forward() -> None:
            pin(forwarder_cpu)
            try:
                out["r"] = _fastpath.floor_forward(mode, [s.fileno() for s in ingress],
                                                   [s.fileno() for s in egress], dests,
                                                   tick_us, duration + 0.3,
                                                   sessions if srtp else None)
            except OSError as exc:
                out["error"] = exc

        fwd = threading.Thread(target=forward)
        fwd.start()
        def generate() -> None:
            pin(generator_cpu)
            _run_generator([s.getsockname() for s in ingress], duration, sinks, result)

        gen = threading.Thread(target=generate)
        gen.start()
        gen.join()
        fwd.join()
        if "error" in out:
            raise out["error"]
        r = out["r"]
        expected = result["sent"] * forks_per_track
        return FloorResult(
            mode=mode, calls=calls, generated=result["sent"], received=r["received"],
            forwarded=r["forwarded"], sink_received=result["sink_received"],
            cpu_us_per_pkt=r["cpu_ns"] / 1e3 / max(1, r["forwarded"]),
            syscalls_per_pkt=r["syscalls"] / max(1, r["forwarded"]),
            sink_bytes=result["sink_bytes"],
            loss_pct=100.0 * max(0, expected - result["sink_received"]) / max(1, expected))
    finally:
        for s in ingress + egress + sinks:
            s.close()
        for session in sessions:
            session.close()
