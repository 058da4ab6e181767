"""The whole rtpengine chain under load: rtpengine relays both legs of N calls and forks
them to mediafork (``media_source``), mediafork forks each call to a recorder.

    python -m benches.rtpengine_chain --calls 500 --seconds 20   # bounded: about 45 s

Processes, each measured from /proc/PID/stat (utime + stime) over the traffic window only:

* ``rtpengine`` (Debian's rtpengine-daemon, userspace forwarding, ``--endpoint-learning=off``
  so it sends to the addresses the SDPs name), started by hand on loopback, stopped by pid;
* ``mediafork`` (``mediafork serve`` with one ``[[media_sources]]``), a child process;
* ``recorder``: the reference recorder in sink mode (real SIP; its SDP answers point the
  forks at the C sinks of ``gen-forks``, as in benches/load);
* ``gen-legs``: the C paced generator (benches/load/procs.py) playing both parties of every
  call (PCMU 20 ms, 50 pps per party) to rtpengine, its sinks the parties' receive ports;
* ``gen-forks``: the C sinks counting what mediafork forked to the recorder.

A few extra *probe* calls are played by this process with a send timestamp in each payload;
their Siprecs go to sipp (an SRS answering with this process's sockets), which gives the
added latency of the chain (party -> rtpengine -> mediafork -> recorder), p50/p99; the
callee's socket gives rtpengine's own leg latency. Results: JSON on stdout and in
benches/results/rtpengine_chain.json (not committed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from mediafork.mediasource.local_rtpengine import (
    LocalRtpengine,
    find_rtpengine,
    media_port,
    party_sdp,
)
from mediafork.mediasource.ng import NgTiming
from mediafork.mediasource.ng_client import NgClient

from .load.driver import Child, _cpu_seconds, parse_metrics, percentile

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benches" / "results" / "rtpengine_chain.json"
SRS_SCENARIO = ROOT / "tests" / "sip_e2e" / "scenarios" / "srs_answer.xml"
PPS = 50
PROBE_MAGIC = b"MFPROBE!"
API = "/2010-04-01"


@dataclass(frozen=True)
class Legs:
    """One call as rtpengine relays it: where each party sends (rtpengine's ports)."""

    call_id: str
    caller_tag: str
    callee_tag: str
    caller_sends_to: tuple[str, int]
    callee_sends_to: tuple[str, int]


def _sid(i: int) -> str:
    return "CA" + f"{i:032x}"


def _udp(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, port))
    return sock


class Probes:
    """The probe calls' parties (this process): paced RTP with a send timestamp, and the
    sockets where the recorder (sipp's SDP) and the callees receive."""

    def __init__(self, count: int) -> None:
        self.parties = [(_udp(), _udp()) for _ in range(count)]  # (caller, callee)
        self.recorder = (_udp(), _udp())  # sipp's SDP: label 1, label 2 (all probe calls)
        self.sent = 0
        self.chain_us: list[float] = []
        self.leg_us: list[float] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def play(self, destinations: list[tuple[tuple[str, int], tuple[str, int]]],
             seconds: float) -> None:
        self._threads = [threading.Thread(target=self._send, args=(destinations, seconds),
                                          daemon=True),
                         threading.Thread(target=self._receive, daemon=True)]
        for thread in self._threads:
            thread.start()

    def _send(self, destinations: list[tuple[tuple[str, int], tuple[str, int]]],
              seconds: float) -> None:
        start = time.monotonic()
        for n in range(int(seconds * PPS)):
            if self._stop.wait(max(0.0, start + n / PPS - time.monotonic())):
                return
            for i, ((caller, callee), (a_to, b_to)) in enumerate(zip(self.parties, destinations,
                                                                       strict=True)):
                for k, (sock, dest) in enumerate(((caller, a_to), (callee, b_to))):
                    header = struct.pack("!BBHII", 0x80, 0, n & 0xFFFF, n * 160,
                                         0x7000 + 2 * i + k)
                    payload = PROBE_MAGIC + struct.pack("!Q", time.monotonic_ns())
                    sock.sendto(header + payload + b"\xff" * (160 - len(payload)), dest)
                    self.sent += 1

    def _receive(self) -> None:
        import selectors

        selector = selectors.DefaultSelector()
        for sock in self.recorder:
            selector.register(sock, selectors.EVENT_READ, self.chain_us)
        for _, callee in self.parties:
            selector.register(callee, selectors.EVENT_READ, self.leg_us)
        while not self._stop.is_set():
            for key, _ in selector.select(0.1):
                data = key.fileobj.recv(2048)  # type: ignore[union-attr]
                now = time.monotonic_ns()
                at = data.find(PROBE_MAGIC)
                if at >= 12:
                    sent = struct.unpack("!Q", data[at + 8:at + 16])[0]
                    key.data.append((now - sent) / 1000)
        selector.close()

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(2)
        for caller, callee in self.parties:
            caller.close()
            callee.close()
        for sock in self.recorder:
            sock.close()


def _config(workdir: Path, ng: tuple[str, int], recorder_port: int, sipp_port: int | None,
            sid: str, token: str, calls: int) -> Path:
    probe = (f'[[connectors]]\naccount_sid = "{sid}"\nunique_name = "Probe"\n'
             f'srs = "sip:srs@{HOST}:{sipp_port};transport=udp"\n') if sipp_port else ""
    path = workdir / "mediafork.toml"
    path.write_text(f"""
[api]
listen = "{HOST}:0"
[storage]
path = "{workdir / 'mediafork.db'}"
[media]
address = "{HOST}"
port_range = [36000, 47999]
[[accounts]]
sid = "{sid}"
auth_token = "{token}"
max_calls = {calls + 100}
max_siprecs = {calls + 100}
[[connectors]]
account_sid = "{sid}"
unique_name = "Default"
srs = "sip:recorder@{HOST}:{recorder_port}"
{probe}
[sip]
port = 0
[[media_sources]]
name = "rtpengine1"
kind = "rtpengine"
ng = "{ng[0]}:{ng[1]}"
timeout = 5.0
max_outstanding = 4096
""")
    return path


async def _setup_calls(client: NgClient, count: int, sinks: list[int], probes: Probes
                       ) -> list[Legs]:
    """Offer/answer through rtpengine for every call, as the proxy would. The load calls'
    parties receive on gen-legs' sinks; the probe calls' on this process's sockets."""
    sem = asyncio.Semaphore(32)

    async def one(i: int) -> Legs:
        async with sem:
            call_id = f"bench-{i}-{secrets.token_hex(4)}@{HOST}"
            if i < count:
                return await _two_legs(client, call_id, sinks[i % len(sinks)],
                                       sinks[(i + 1) % len(sinks)])
            caller, callee = probes.parties[i - count]
            return await _two_legs(client, call_id, caller.getsockname()[1],
                                   callee.getsockname()[1])

    return list(await asyncio.gather(*(one(i) for i in range(count + len(probes.parties)))))


async def _two_legs(client: NgClient, call_id: str, a_port: int, b_port: int) -> Legs:
    a_tag, b_tag = f"{call_id}-a", f"{call_id}-b"
    offer = await client.request({"command": "offer", "call-id": call_id, "from-tag": a_tag,
                                  "sdp": party_sdp(a_port)})
    answer = await client.request({"command": "answer", "call-id": call_id, "from-tag": a_tag,
                                   "to-tag": b_tag, "sdp": party_sdp(b_port)})
    # A sends to the port of the SDP rtpengine gave A (the answer), B to the offer's.
    return Legs(call_id, a_tag, b_tag, (HOST, media_port(answer.get("sdp"))),
                (HOST, media_port(offer.get("sdp"))))


async def run(calls: int = 500, seconds: float = 20.0, probes: int = 4,
              say: Any = print, rtpengine_threads: int = 8) -> dict[str, Any]:
    binary = find_rtpengine()
    if binary is None:
        raise SystemExit("rtpengine is not installed (Debian package rtpengine-daemon)")
    sipp = shutil.which("sipp")
    began = time.monotonic()
    load_before = os.getloadavg()[0]  # a shared machine: other work competes for the CPUs
    with tempfile.TemporaryDirectory(prefix="mf-rtpe-bench-") as tmp:
        workdir = Path(tmp)
        rtpengine = LocalRtpengine(binary, workdir / "rtpengine.log", port_min=20000,
                                   port_max=29999, extra=("--endpoint-learning=off",
                                                          f"--num-threads={rtpengine_threads}"))
        children: list[Child] = []
        probe = Probes(probes if sipp else 0)
        sipp_proc = None
        blackhole = _udp()
        client: NgClient | None = None
        legs: list[Legs] = []
        try:
            await rtpengine.start()
            py = sys.executable
            gen_legs = await Child.start("gen-legs", [py, "-m", "benches.load.procs",
                                                      "generator", "--sinks", "8"], workdir)
            children.append(gen_legs)
            leg_sinks = await gen_legs.read("sink_ports", 20)
            gen_forks = await Child.start("gen-forks", [py, "-m", "benches.load.procs",
                                                        "generator", "--sinks", "8"], workdir)
            children.append(gen_forks)
            fork_sinks = await gen_forks.read("sink_ports", 20)
            recorder = await Child.start("recorder", [
                py, "-m", "benches.load.procs", "recorder", "--out", str(workdir / "srs"),
                "--sink-ports", *map(str, fork_sinks)], workdir)
            children.append(recorder)
            rec_port = (await recorder.read("udp", 30))["udp"]
            sipp_port = None
            if sipp and probes:
                sipp_port = _free_udp_port()
                r1, r2 = (s.getsockname()[1] for s in probe.recorder)
                sipp_proc = await asyncio.create_subprocess_exec(
                    sipp, "-sf", str(SRS_SCENARIO), "-i", HOST, "-p", str(sipp_port),
                    "-t", "u1", "-m", str(probes), "-aa", "-nostdin",
                    "-timeout", f"{int(seconds + 60)}s",
                    "-key", "rec_ip", HOST, "-key", "rec_port1", str(r1),
                    "-key", "rec_port2", str(r2), "-key", "rec_proto", "RTP/AVP",
                    "-key", "crypto1", "a=ptime:20", "-key", "crypto2", "a=ptime:20",
                    stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL)
            sid, token = "AC" + secrets.token_hex(16), secrets.token_hex(16)
            conf = _config(workdir, rtpengine.ng, rec_port, sipp_port, sid, token, calls)
            daemon = await Child.start("mediafork", [
                py, "-c", "import sys; from mediafork.cli import main; sys.exit(main())",
                "serve", "--config", str(conf), "--log-level", "warning"], workdir)
            children.append(daemon)
            base = await daemon.read("ready", 60)

            client = await NgClient.connect(rtpengine.ng, timing=NgTiming(timeout=5.0),
                                            max_outstanding=4096)
            t = time.monotonic()
            legs = await _setup_calls(client, calls, leg_sinks, probe)
            sources = [{"name": "rtpengine1", "call_id": c.call_id,
                        "inbound_tag": c.caller_tag, "outbound_tag": c.callee_tag}
                       for c in legs]
            say(f"{len(legs)} two-leg calls through rtpengine in {time.monotonic() - t:.1f} s")
            auth = {"Authorization": aiohttp.encode_basic_auth(sid, token)}
            async with aiohttp.ClientSession(headers=auth) as http:
                t = time.monotonic()
                await _register(http, base, sources)
                say(f"registered by reference (media_source) in {time.monotonic() - t:.1f} s")
                t = time.monotonic()
                await _siprecs(http, base, sid, len(sources), calls)
                say(f"{len(sources)} Siprecs started (rtpengine subscribed) in "
                    f"{time.monotonic() - t:.1f} s")
                await asyncio.sleep(1.0)  # the recorder's answers applied

                pids = {"rtpengine": rtpengine.pid, "mediafork": daemon.pid,
                        "recorder": recorder.pid, "gen-legs": gen_legs.pid,
                        "gen-forks": gen_forks.pid}
                before_metrics = parse_metrics(await _text(http, f"{base}/metrics"))
                cpu0 = {name: _cpu_seconds(pid) for name, pid in pids.items() if pid}
                t0 = time.monotonic()
                dests = [list(c.caller_sends_to) for c in legs[:calls]] + \
                        [list(c.callee_sends_to) for c in legs[:calls]]
                gen_forks.send({"dests": [[HOST, blackhole.getsockname()[1]]],
                                "duration": seconds, "drain": 1.0})
                gen_legs.send({"dests": dests, "duration": seconds, "drain": 1.0})
                probe.play([(c.caller_sends_to, c.callee_sends_to) for c in legs[calls:]],
                           seconds)
                legs_result = await gen_legs.read("result", seconds + 30)
                forks_result = await gen_forks.read("result", seconds + 30)
                window = time.monotonic() - t0
                cpu = {name: _cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()
                       if pid}
                after_metrics = parse_metrics(await _text(http, f"{base}/metrics"))
                probe.close()
                await _end_calls(http, base, len(sources))
        finally:
            probe.close()
            blackhole.close()
            if client is not None:
                for call in legs:  # the proxy's BYE
                    with contextlib.suppress(Exception):
                        await client.request({"command": "delete", "call-id": call.call_id,
                                              "from-tag": call.caller_tag})
                client.close()
            for child in reversed(children):
                await child.stop(timeout=10)
            if sipp_proc is not None and sipp_proc.returncode is None:
                sipp_proc.kill()
                await sipp_proc.wait()
            rtpengine.stop()

    def delta(name: str) -> float:
        return after_metrics.get(name, 0.0) - before_metrics.get(name, 0.0)

    sent = legs_result["sent"]
    # The probe calls' packets that made it through are the latency samples (each was
    # received once by mediafork and forked once to the probe recorder): not load.
    probed = len(probe.chain_us)
    ingress = delta("mediafork_packets_received_total") - probed
    forked = delta("mediafork_packets_sent_total") - probed
    to_recorder = forks_result["sink_received"]
    chain = sorted(probe.chain_us)
    leg = sorted(probe.leg_us)
    result = {
        "calls": calls, "probe_calls": len(probe.parties), "seconds": seconds,
        "window_seconds": round(window, 2),
        "party_packets_sent": sent,
        "rtpengine_legs_delivered": legs_result["sink_received"],
        "mediafork_ingress_received": int(ingress),
        "mediafork_forks_sent": int(forked),
        "recorder_received": to_recorder,
        "loss_legs_pct": round(100 * (1 - legs_result["sink_received"] / sent), 4),
        "loss_rtpengine_to_mediafork_pct": round(100 * (1 - ingress / sent), 4),
        "loss_mediafork_to_recorder_pct": round(100 * (1 - to_recorder / forked), 4)
        if forked > 0 else None,
        "loss_end_to_end_pct": round(100 * (1 - to_recorder / sent), 4),
        "host_load_average_before": load_before,
        "cpu_seconds": {k: round(v, 3) for k, v in cpu.items()},
        # Per packet a party sent: rtpengine forwards it once and forks it once, mediafork
        # forks it once; the generators' own share is the cost of the test harness.
        "cpu_us_per_party_packet": {k: round(1e6 * v / sent, 3) for k, v in cpu.items()},
        # Per packet each one really handled (what it received): the cost that does not
        # shrink when packets are dropped before a process sees them.
        "cpu_us_per_packet_handled": {
            "rtpengine": _per(cpu.get("rtpengine"), legs_result["sink_received"]),
            "mediafork": _per(cpu.get("mediafork"), ingress),
        },
        "chain_latency_us": {"p50": percentile(chain, 50), "p99": percentile(chain, 99),
                             "samples": len(chain)},
        "rtpengine_leg_latency_us": {"p50": percentile(leg, 50), "p99": percentile(leg, 99),
                                     "samples": len(leg)},
        "total_seconds": round(time.monotonic() - began, 1),
        "rtpengine_version": _rtpengine_version(binary),
        "rtpengine_threads": rtpengine_threads,
        "cpus": os.cpu_count(),
    }
    return result


def _per(cpu: float | None, packets: float) -> float | None:
    return round(1e6 * cpu / packets, 3) if cpu is not None and packets > 0 else None


async def _text(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url) as r:
        return await r.text()


async def _register(http: aiohttp.ClientSession, base: str, sources: list[dict[str, Any]]
                    ) -> None:
    sem = asyncio.Semaphore(16)

    async def one(i: int) -> None:
        body = {"call_sid": _sid(i), "from": f"sip:+1555{i:07d}@pbx.example",
                "to": "sip:+15559870000@pbx.example", "media_source": sources[i]}
        async with sem, http.post(f"{base}/v1/Calls", json=body) as r:
            if r.status != 201:
                raise RuntimeError(f"register call {i}: {r.status} {await r.text()}")

    await asyncio.gather(*(one(i) for i in range(len(sources))))


async def _siprecs(http: aiohttp.ClientSession, base: str, sid: str, total: int,
                   load_calls: int) -> None:
    sem = asyncio.Semaphore(16)

    async def one(i: int) -> None:
        form = {"Name": "bench", "Track": "both_tracks",
                "ConnectorName": "Default" if i < load_calls else "Probe"}
        url = f"{base}{API}/Accounts/{sid}/Calls/{_sid(i)}/Siprec.json"
        async with sem, http.post(url, data=form) as r:
            if r.status != 201:
                raise RuntimeError(f"Siprec on call {i}: {r.status} {await r.text()}")

    await asyncio.gather(*(one(i) for i in range(total)))


async def _end_calls(http: aiohttp.ClientSession, base: str, total: int) -> None:
    sem = asyncio.Semaphore(16)

    async def one(i: int) -> None:
        async with sem, http.delete(f"{base}/v1/Calls/{_sid(i)}") as r:
            await r.read()

    await asyncio.gather(*(one(i) for i in range(total)), return_exceptions=True)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _rtpengine_version(binary: str) -> str:
    import subprocess

    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=5)
        out = done.stdout + done.stderr
        return out.strip().splitlines()[0] if out.strip() else "?"
    return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benches.rtpengine_chain")
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="traffic window (the whole run is about 25 s longer)")
    parser.add_argument("--probes", type=int, default=4)
    parser.add_argument("--rtpengine-threads", type=int, default=8)
    args = parser.parse_args(argv)
    if not 1 <= args.calls <= 1000 or not 1 <= args.seconds <= 40:
        parser.error("--calls 1-1000 and --seconds 1-40 (the run stays under a minute)")
    result = asyncio.run(asyncio.wait_for(
        run(args.calls, args.seconds, args.probes, say=lambda s: print(s, file=sys.stderr),
            rtpengine_threads=args.rtpengine_threads),
        args.seconds + 60))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
