"""The child processes of the load test, each started by ``driver.py`` as
``python -m benches.load.procs <role> ...`` and talking to it with JSON lines:

* ``generator``: binds the sink sockets (the ports the recorder answers with), prints them,
  reads the ingress addresses and a duration from stdin, runs ``_fastpath.run_loadgen``
  (a paced C generator: PCMU 20 ms at 50 pps per stream, and a C sink that only counts) and
  prints its counters. Bounded by the duration it is given.
* ``recorder``: the reference recorder with ``sink_ports`` (SIP real, media counted by the
  generator's sink), until SIGTERM or stdin closes; prints a summary of its sessions.

Both die with their parent (PR_SET_PDEATHSIG), so nothing outlives a killed driver.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import os
import resource
import signal
import socket
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

PPS = 50
PAYLOAD = 160  # PCMU 20 ms: 172-byte RTP packets
SINK_PORT_BASE = 61000
"""Sinks bind above the kernel's ephemeral range (32768-60999 by default) and above the
daemon's media range, so nobody else can take their ports between bind and use."""


def die_with_parent() -> None:
    """PR_SET_PDEATHSIG(SIGTERM): a killed driver takes its children with it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def raise_nofile(want: int = 65536) -> int:
    """As many descriptors as allowed (root may raise the hard limit too)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in (max(want, hard), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(target, hard)))
            return target
        except (ValueError, OSError):
            continue
    return soft


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# --- generator + sink ----------------------------------------------------------------------

def _bind_sinks(count: int, host: str) -> tuple[list[socket.socket], list[socket.socket]]:
    """``count`` RTP sinks on even ports, each with its RTCP port + 1 bound (and never read:
    the forks' sender reports must not count as media nor draw ICMP errors)."""
    from mediafork.media.sockets import udp_socket

    rtp: list[socket.socket] = []
    rtcp: list[socket.socket] = []
    port = SINK_PORT_BASE
    while len(rtp) < count and port < 65534:
        try:
            a = udp_socket(host, port, receive_buffer=32 << 20)
        except OSError:
            port += 2
            continue
        try:
            b = udp_socket(host, port + 1)
        except OSError:
            a.close()
            port += 2
            continue
        rtp.append(a)
        rtcp.append(b)
        port += 2
    if len(rtp) < count:
        raise OSError("no free sink ports")
    return rtp, rtcp


def run_generator(args: argparse.Namespace) -> int:
    from mediafork.media import _fastpath
    from mediafork.media.sockets import udp_socket

    sinks, rtcp = _bind_sinks(args.sinks, args.host)
    emit({"sink_ports": [s.getsockname()[1] for s in sinks]})
    line = sys.stdin.readline()
    if not line:
        return 1
    order = json.loads(line)
    dests = [tuple(d) for d in order["dests"]]
    gen = udp_socket(args.host, 0, send_buffer=8 << 20)
    cpu0, t0 = _cpu_seconds(), time.monotonic()
    emit({"started": True})
    try:
        # Releases the GIL and returns after duration + drain: bounded by construction.
        result = _fastpath.run_loadgen(gen.fileno(), dests, PPS, PAYLOAD, 0,
                                       float(order["duration"]), float(order["drain"]),
                                       [s.fileno() for s in sinks])
    finally:
        gen.close()
    result = dict(result)
    result["cpu_seconds"] = _cpu_seconds() - cpu0
    result["wall_seconds"] = time.monotonic() - t0
    result["streams"] = len(dests)
    emit({"result": result})
    # Keep the sink ports bound (no longer read) until the driver is done: forks still
    # sending after the generator's time is up must not draw ICMP port-unreachable errors
    # that would show as send errors inside mediafork.
    sys.stdin.read()
    for s in sinks + rtcp:
        s.close()
    return 0


# --- recorder ------------------------------------------------------------------------------

async def _recorder_main(args: argparse.Namespace) -> int:
    from mediafork.srs.server import ReferenceRecorder

    recorder = ReferenceRecorder(
        host=args.host, port=0, tcp=True, tls_cert=args.tls_cert, tls_key=args.tls_key,
        out_dir=Path(args.out), sink_ports=tuple(args.sink_ports),
    )
    await recorder.start()
    emit({"udp": recorder.address[1], "tls": recorder.tls_address[1]
          if recorder.tls_address else None})
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # stdin closing (the driver is gone) stops us too.
    loop.add_reader(sys.stdin.fileno(),
                    lambda: stop.set() if not os.read(sys.stdin.fileno(), 4096) else None)
    await stop.wait()
    loop.remove_reader(sys.stdin.fileno())
    states = Counter(s.state for s in recorder.sessions)
    ended_by = Counter(s.ended_by or "-" for s in recorder.sessions)
    warnings = Counter(w for s in recorder.sessions for w in s.warnings)
    streams = sum(sum(r is not None for r in s.receivers) for s in recorder.sessions)
    live = sum(s.live for s in recorder.sessions)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(recorder.stop(bye_timeout=1.0), 20)
    emit({"summary": {
        "sessions": len(recorder.sessions), "live_at_stop": live, "streams": streams,
        "states": dict(states), "ended_by": dict(ended_by),
        "warnings": dict(warnings.most_common(5)), "requests": recorder.requests_seen,
        "bad_messages": recorder.bad_messages,
    }})
    return 0


def run_recorder(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="recorder %(levelname)s %(message)s")
    try:
        import uvloop

        return uvloop.run(_recorder_main(args))
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run(_recorder_main(args))


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    raise_nofile()
    parser = argparse.ArgumentParser(prog="benches.load.procs")
    sub = parser.add_subparsers(dest="role", required=True)
    g = sub.add_parser("generator")
    g.add_argument("--host", default="127.0.0.1")
    g.add_argument("--sinks", type=int, default=8)
    r = sub.add_parser("recorder")
    r.add_argument("--host", default="127.0.0.1")
    r.add_argument("--out", required=True)
    r.add_argument("--tls-cert")
    r.add_argument("--tls-key")
    r.add_argument("--sink-ports", type=int, nargs="+", required=True)
    args = parser.parse_args(argv)
    if args.role == "generator":
        return run_generator(args)
    return run_recorder(args)


if __name__ == "__main__":
    sys.exit(main())
