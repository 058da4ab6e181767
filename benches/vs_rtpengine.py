"""mediafork against rtpengine doing the same job, pure forking, in one harness.

    python -m benches.vs_rtpengine --calls 100,500,1000 --seconds 8

Each cell is N calls of two tracks (PCMU 20 ms, 172-byte packets, 50 pps per track) played
by the C paced generator of the end-to-end bench (benches/loadsetup.py) and forked
``forks`` times per call (2: one fork of both tracks, 4: two), plain RTP or SRTP, to the
same four C sinks:

* ``mediafork``: the :class:`~mediafork.engine.Engine` (one media worker) in this process,
  as in ``run_engine_load``; CPU = the worker thread's time.
* ``rtpengine``: Debian's rtpengine-daemon (userspace forwarding, ``--table=-1``, started
  by pid on loopback, ``--num-threads=1``), each track a ``publish`` and each forked stream
  a ``subscribe request``/``subscribe answer`` whose answer names a sink (RTP/SAVP with an
  SDES key for SRTP); CPU = the process's utime + stime from /proc.
* ``floor``: the cheapest plain C loop over the same sockets (``run_floor_load``).

CPU per forked packet = CPU over the traffic window / forked packets counted at the sinks
(after a warm-up). The engine under test is pinned to CPU 0 and the generator/sink (and
the latency probes) to CPU 1 when the machine has two CPUs. Added latency: a few extra
probe calls (plain RTP, so the send timestamp in the payload stays readable; the added
latency is scheduling, not cipher) forked to sockets of this process, p50/p99 in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import json
import os
import re
import secrets
import socket
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from mediafork.engine import Engine, SrtpKey, Track
from mediafork.mediasource.local_rtpengine import LocalRtpengine, find_rtpengine, media_port
from mediafork.mediasource.ng import NgTiming
from mediafork.mediasource.ng_client import NgClient

from .load.driver import _cpu_seconds, percentile
from .loadsetup import (
    PPS,
    _run_generator,
    _sinks,
    bench_io,
    bench_tick,
    resolved_bench_io,
    resolved_bench_tick_us,
    run_floor_load,
)

HOST = "127.0.0.1"
PROBE_MAGIC = b"MFVSRTPE"
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benches" / "results" / "vs_rtpengine.json"
DEFAULT_CALLS = (100, 500, 1000)
# (forks per call, srtp): the cells of every load step
DEFAULT_CELLS = ((2, False), (2, True), (4, True))


def _pinning() -> bool:
    """``MEDIAFORK_BENCH_PIN=0`` turns pinning off: on a machine shared with other work a
    pinned engine cannot move away from a busy CPU."""
    return (os.cpu_count() or 1) >= 2 and os.environ.get("MEDIAFORK_BENCH_PIN", "1") != "0"


def _pin(cpu: int) -> None:
    """Pin the calling thread (Linux: pid 0 is the thread) when there is a CPU to spare."""
    if _pinning():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})


def _unpin() -> None:
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))


def _pin_process(pid: int, cpu: int) -> bool:
    """Pin every thread of a running process (rtpengine) to ``cpu``."""
    if not _pinning():
        return False
    ok = False
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(tid), {cpu})
            ok = True
    return ok


class Probes:
    """Probe streams with a send timestamp in the payload; each forked copy lands on one of
    this process's sockets, which gives the added latency."""

    def __init__(self, streams: int) -> None:
        self.send = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.send.bind((HOST, 0))
        self.receivers: list[socket.socket] = []
        self.latency_us: list[float] = []
        self.streams = streams
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def receiver(self) -> tuple[str, int]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((HOST, 0))
        self.receivers.append(sock)
        return sock.getsockname()

    def play(self, destinations: list[tuple[str, int]], seconds: float) -> None:
        self._threads = [threading.Thread(target=self._send, args=(destinations, seconds),
                                          daemon=True),
                         threading.Thread(target=self._receive, daemon=True)]
        for thread in self._threads:
            thread.start()

    def _send(self, destinations: list[tuple[str, int]], seconds: float) -> None:
        _pin(1)
        start = time.monotonic()
        for n in range(int(seconds * PPS)):
            if self._stop.wait(max(0.0, start + n / PPS - time.monotonic())):
                return
            for i, dest in enumerate(destinations):
                header = struct.pack("!BBHII", 0x80, 0, n & 0xFFFF, n * 160, 0x7100 + i)
                payload = PROBE_MAGIC + struct.pack("!Q", time.monotonic_ns())
                self.send.sendto(header + payload + b"\xff" * (160 - len(payload)), dest)

    def _receive(self) -> None:
        import selectors

        _pin(1)
        selector = selectors.DefaultSelector()
        for sock in self.receivers:
            selector.register(sock, selectors.EVENT_READ)
        while not self._stop.is_set():
            for key, _ in selector.select(0.1):
                data = key.fileobj.recv(2048)  # type: ignore[union-attr]
                now = time.monotonic_ns()
                at = data.find(PROBE_MAGIC)
                if at >= 12:
                    self.latency_us.append((now - struct.unpack("!Q", data[at + 8:at + 16])[0])
                                           / 1000)
        selector.close()

    def summary(self) -> dict[str, float | int | None]:
        lat = sorted(self.latency_us)
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        return {"p50_ms": None if p50 is None else p50 / 1000,
                "p99_ms": None if p99 is None else p99 / 1000, "samples": len(lat)}

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(2)
        self._threads = []
        for sock in [self.send, *self.receivers]:
            sock.close()
        self.receivers = []


def _traffic(dests: list[tuple[str, int]], seconds: float, warmup: float, sinks: list[socket.socket],
             cpu: Any, probes: Probes, probe_dests: list[tuple[str, int]]) -> dict[str, Any]:
    """Play the load, measure ``cpu()`` between warm-up and the end of sending; returns the
    generator's counters, the CPU seconds of the window and its share of the packets."""
    result: dict = {}

    def generate() -> None:
        _pin(1)
        _run_generator(dests, seconds, sinks, result)

    gen = threading.Thread(target=generate)
    gen.start()
    probes.play(probe_dests, seconds)
    time.sleep(warmup)
    cpu0, t0 = cpu(), time.monotonic()
    time.sleep(max(0.1, seconds - warmup - 0.2))
    cpu1, t1 = cpu(), time.monotonic()
    gen.join()
    probes.close()
    result["window_cpu"] = cpu1 - cpu0
    result["window_seconds"] = t1 - t0
    result["window_fraction"] = (t1 - t0) / seconds
    return result


def _cell(calls: int, forks: int, srtp: bool, gen: dict[str, Any], probes: Probes
          ) -> dict[str, Any]:
    expected = gen["sent"] * forks // 2
    # Forked packets in the window: what reached the sinks, in the window's share of time.
    window_packets = max(1.0, gen["sink_received"] * gen["window_fraction"])
    return {
        "calls": calls, "forks": forks, "srtp": srtp,
        "generated": gen["sent"], "sink_received": gen["sink_received"],
        "loss_pct": round(100.0 * max(0, expected - gen["sink_received"]) / max(1, expected), 4),
        "cpu_us_per_pkt": round(gen["window_cpu"] * 1e6 / window_packets, 3),
        # CPU seconds per second of the window: 1.0 is the whole of the (pinned) core.
        "core_busy": round(gen["window_cpu"] / max(1e-9, gen["window_seconds"]), 3),
        **probes.summary(),
    }


def run_mediafork(calls: int, forks: int, srtp: bool, seconds: float, warmup: float = 1.5,
                  probe_calls: int = 2) -> dict[str, Any]:
    """One cell through mediafork's Engine (one worker, pinned to CPU 0)."""
    sinks = _sinks(4)
    probes = Probes(2 * probe_calls)
    per_track = forks // 2
    _pin(0)  # the worker thread inherits the affinity of the thread that starts it
    try:
        engine = Engine(port_range=(20000, 59999), workers=1, io=bench_io(), tick=bench_tick())
    finally:
        _unpin()
    call_objs = []
    try:
        dests, probe_dests = [], []
        for i in range(calls + probe_calls):
            call = engine.add_call(f"CA{i:032x}", record_slots=0)
            call_objs.append(call)
            for track in Track:
                if i < calls:
                    dests.append(call.ingress[track])
                else:
                    probe_dests.append(call.ingress[track])
                for k in range(per_track):
                    probe = i >= calls
                    dest = probes.receiver() if probe else \
                        sinks[(2 * i + track + k) % len(sinks)].getsockname()
                    call.add_fork(track, key=SrtpKey.generate() if srtp and not probe else None,
                                  destination=dest)
        gen = _traffic(dests, seconds, warmup, sinks, engine.worker_cpu_seconds, probes,
                       probe_dests)
        return _cell(calls, forks, srtp, gen, probes)
    finally:
        probes.close()
        for call in call_objs:
            call.close()
        call_objs.clear()
        engine.close()
        for s in sinks:
            s.close()
        gc.collect()


def _publish_sdp(port: int) -> str:
    return ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\n"
            "a=sendonly\r\n")


def _answer_sdp(offer: str, port: int) -> str:
    """The sink's recvonly answer to a subscription offer: every offered format, and for
    RTP/SAVP the first offered crypto suite with a key of our own."""
    m = re.search(r"^m=audio \d+ (\S+) ([\d ]+)", offer, re.MULTILINE)
    if m is None:
        raise RuntimeError("rtpengine's subscription offer has no audio stream")
    proto, formats = m.group(1), m.group(2).strip()
    lines = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
             f"m=audio {port} {proto} {formats}"]
    lines += re.findall(r"^(a=(?:rtpmap|fmtp):.*?)\r?$", offer, re.MULTILINE)
    if "SAVP" in proto:
        crypto = re.search(r"^a=crypto:(\d+) (\S+) ", offer, re.MULTILINE)
        if crypto is None:
            raise RuntimeError("rtpengine's RTP/SAVP offer has no crypto line")
        key = base64.b64encode(secrets.token_bytes(30)).decode()
        lines.append(f"a=crypto:{crypto.group(1)} {crypto.group(2)} inline:{key}")
    lines.append("a=recvonly")
    return "\r\n".join(lines) + "\r\n"


async def _rtpengine_calls(client: NgClient, calls: int, forks: int, srtp: bool,
                           sinks: list[tuple[str, int]], probe_calls: int, probes: Probes,
                           blackhole: int) -> tuple[list[tuple[str, int]], list[tuple[str, int]],
                                                    list[str]]:
    sem = asyncio.Semaphore(48)
    per_track = forks // 2

    async def one(i: int) -> tuple[list[tuple[str, int]], str]:
        probe = i >= calls
        call_id = f"vs-{i}-{secrets.token_hex(4)}"
        published = []
        async with sem:
            for track in range(2):
                tag = f"{call_id}-{track}"
                reply = await client.request({"command": "publish", "call-id": call_id,
                                              "from-tag": tag, "sdp": _publish_sdp(blackhole)})
                published.append((HOST, media_port(reply.get("sdp"))))
                for k in range(per_track):
                    sub = f"{tag}-s{k}"
                    offer = await client.request({
                        "command": "subscribe request", "call-id": call_id, "from-tag": tag,
                        "to-tag": sub, "ICE": "remove",
                        "transport-protocol": "RTP/SAVP" if srtp and not probe else "RTP/AVP"})
                    dest = probes.receiver() if probe else sinks[(2 * i + track + k) % len(sinks)]
                    await client.request({"command": "subscribe answer", "call-id": call_id,
                                          "to-tag": sub,
                                          "sdp": _answer_sdp(str(offer.get("sdp")), dest[1])})
        return published, call_id

    done = await asyncio.gather(*(one(i) for i in range(calls + probe_calls)))
    dests = [d for pub, _ in done[:calls] for d in pub]
    probe_dests = [d for pub, _ in done[calls:] for d in pub]
    return dests, probe_dests, [cid for _, cid in done]


async def run_rtpengine(calls: int, forks: int, srtp: bool, seconds: float, warmup: float = 1.5,
                        probe_calls: int = 2, binary: str | None = None) -> dict[str, Any]:
    """One cell through a private rtpengine (one thread, pinned to CPU 0)."""
    binary = binary or find_rtpengine()
    if binary is None:
        raise RuntimeError("rtpengine is not installed (Debian package rtpengine-daemon)")
    sinks = _sinks(4)
    probes = Probes(2 * probe_calls)
    blackhole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blackhole.bind((HOST, 0))
    with tempfile.TemporaryDirectory(prefix="mf-vs-rtpe-") as tmp:
        rtpengine = LocalRtpengine(binary, Path(tmp) / "rtpengine.log", port_min=30000,
                                   port_max=59999,
                                   extra=("--endpoint-learning=off", "--num-threads=1",
                                          "--log-level=3"))
        client: NgClient | None = None
        try:
            await rtpengine.start()
            pid = rtpengine.pid
            assert pid is not None
            pinned = _pin_process(pid, 0)
            client = await NgClient.connect(rtpengine.ng, timing=NgTiming(timeout=10.0),
                                            max_outstanding=4096)
            dests, probe_dests, _ids = await _rtpengine_calls(
                client, calls, forks, srtp, [s.getsockname() for s in sinks], probe_calls,
                probes, blackhole.getsockname()[1])
            _pin_process(pid, 0)  # threads started since
            gen = await asyncio.to_thread(_traffic, dests, seconds, warmup, sinks,
                                          lambda: _cpu_seconds(pid), probes, probe_dests)
            cell = _cell(calls, forks, srtp, gen, probes)
            cell["pinned"] = pinned
            return cell
        finally:
            probes.close()
            if client is not None:
                client.close()
            rtpengine.stop()
            blackhole.close()
            for s in sinks:
                s.close()


def run_floor(calls: int, forks: int, seconds: float, tick_us: int = 200) -> dict[str, Any]:
    """The cheapest of the two C floors at this load (forker pinned to CPU 0)."""
    best: dict[str, Any] | None = None
    for mode in ("mmsg", "io_uring"):
        try:
            pin = _pinning()
            r = run_floor_load(calls, seconds, mode, forks_per_track=forks // 2, tick_us=tick_us,
                               forwarder_cpu=0 if pin else None,
                               generator_cpu=1 if pin else None)
        except OSError:
            continue
        if best is None or r.cpu_us_per_pkt < best["cpu_us_per_pkt"]:
            best = {"mode": mode, "cpu_us_per_pkt": round(r.cpu_us_per_pkt, 3),
                    "loss_pct": round(r.loss_pct, 4)}
    return best or {"skipped": "neither floor can run here"}


# rtpengine at this share of its pinned core or more counts as saturated.
SATURATED_CORE = 0.95


def saturated(cell: dict[str, Any], pinned: bool) -> bool:
    """An engine losing packets, or using its whole pinned core, is saturated: its CPU per
    packet is then flattered by the work it did not do or by ever larger batches (its p99
    latency grows to tens of milliseconds), and a ratio against it is no floor. The issue
    called rtpengine at 1,000 calls saturated on CPU alone, before it lost anything."""
    return cell["loss_pct"] > 0.1 or (pinned and cell.get("core_busy", 0.0) >= SATURATED_CORE)


def run(calls_steps: list[int], seconds: float, cells: tuple[tuple[int, bool], ...]
        = DEFAULT_CELLS, say: Any = print) -> dict[str, Any]:
    """Every cell, engines interleaved per cell (mediafork, rtpengine), the floor per
    (calls, forks). Returns {"cells": [...], "floor": [...], ...}."""
    binary = find_rtpengine()
    out: dict[str, Any] = {"seconds": seconds, "cpus": os.cpu_count(), "cells": [],
                           "floor": [], "pinned": _pinning(),
                           "load_average_before": os.getloadavg()[0],
                           "engine_io": resolved_bench_io(),
                           "engine_tick_us": resolved_bench_tick_us()}
    if binary is None:
        out["skipped"] = "rtpengine is not installed (Debian package rtpengine-daemon)"
    else:
        out["rtpengine_version"] = _version(binary)
    for calls in calls_steps:
        # The floor of the plot's cells (2 forks per call) only: keeps scripts/bench short.
        for forks in sorted({f for f, _ in cells if f == 2}) or [min(f for f, _ in cells)]:
            floor = run_floor(calls, forks, seconds)
            floor.update(calls=calls, forks=forks)
            out["floor"].append(floor)
            say(f"floor {calls} calls {forks} forks: {floor}")
        for forks, srtp in cells:
            mf = run_mediafork(calls, forks, srtp, seconds)
            say(f"mediafork {calls} calls {forks} forks srtp={srtp}: {mf}")
            cell: dict[str, Any] = {"calls": calls, "forks": forks, "srtp": srtp,
                                    "mediafork": mf}
            if binary is not None:
                rt = asyncio.run(asyncio.wait_for(
                    run_rtpengine(calls, forks, srtp, seconds, binary=binary), seconds + 120))
                say(f"rtpengine {calls} calls {forks} forks srtp={srtp}: {rt}")
                cell["rtpengine"] = rt
                cell["cpu_ratio"] = round(mf["cpu_us_per_pkt"] / rt["cpu_us_per_pkt"], 3) \
                    if rt["cpu_us_per_pkt"] > 0 else None
                cell["rtpengine_saturated"] = saturated(rt, out["pinned"])
            out["cells"].append(cell)
    # The low-load floor: mediafork's cost at 100 calls against 500 (2 SRTP forks),
    # only where both ran without loss (a lossy cell's cost per packet is flattered).
    mf = {c["calls"]: c["mediafork"] for c in out["cells"] if c["forks"] == 2 and c["srtp"]}
    if 100 in mf and 500 in mf and mf[100]["loss_pct"] <= 0.1 and mf[500]["loss_pct"] <= 0.1:
        out["mediafork_cpu_100_vs_500"] = round(
            mf[100]["cpu_us_per_pkt"] / mf[500]["cpu_us_per_pkt"], 3)
    for calls in (500, 1000):
        for cell in out["cells"]:
            if cell["calls"] == calls and cell["forks"] == 2 and cell["srtp"] \
                    and cell.get("cpu_ratio") is not None:
                out[f"vs_rtpengine_cpu_ratio_{calls}"] = cell["cpu_ratio"]
    return out


def _version(binary: str) -> str:
    import subprocess

    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=5)
        lines = (done.stdout + done.stderr).strip().splitlines()
        return lines[0] if lines else "?"
    return "?"


def steps_from_env() -> list[int]:
    raw = os.environ.get("MEDIAFORK_BENCH_RTPENGINE_CALLS", ",".join(map(str, DEFAULT_CALLS)))
    return [int(x) for x in raw.split(",") if x.strip()]


def seconds_from_env() -> float:
    return float(os.environ.get("MEDIAFORK_BENCH_RTPENGINE_SECONDS", "5"))


def main(argv: list[str] | None = None) -> int:
    import resource

    parser = argparse.ArgumentParser(prog="benches.vs_rtpengine")
    parser.add_argument("--calls", default=",".join(map(str, steps_from_env())))
    parser.add_argument("--seconds", type=float, default=seconds_from_env())
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    steps = [int(x) for x in args.calls.split(",") if x]
    result = run(steps, args.seconds, say=lambda s: print(s, file=sys.stderr))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
