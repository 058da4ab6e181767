"""The data-plane demo: one synthetic call, both tracks forked over SRTP to
two local recorder sockets, every packet decrypted and checked with an
independent libsrtp session, and a summary. Exits non-zero when a check fails."""

from __future__ import annotations

import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field

from pylibsrtp import Policy, Session

from .engine import Engine, SrtpKey, SrtpProfile, Track, is_rtcp
from .synth import tone_packets

TONES = {Track.INBOUND: 440.0, Track.OUTBOUND: 1000.0}


@dataclass
class RecorderStats:
    packets: int = 0
    decrypted: int = 0
    rtcp: int = 0
    auth_failures: int = 0
    dtmf_seen: int = 0
    seq_gaps: int = 0
    last_seq: int | None = None
    payloads: list[bytes] = field(default_factory=list)


def _recorder(sock: socket.socket, key: SrtpKey, stats: RecorderStats, stop: threading.Event) -> None:
    session = Session(Policy(key=key.master, ssrc_type=Policy.SSRC_ANY_INBOUND,
                             srtp_profile=key.profile.pylibsrtp_profile))
    sock.settimeout(0.1)
    while not stop.is_set():
        try:
            data = sock.recv(2048)
        except TimeoutError:
            continue
        stats.packets += 1
        try:
            if is_rtcp(data):
                session.unprotect_rtcp(data)
                stats.rtcp += 1
                continue
            plain = session.unprotect(data)
        except Exception:
            stats.auth_failures += 1
            continue
        stats.decrypted += 1
        _, pt, seq = struct.unpack("!BBH", plain[:4])
        if pt & 0x7F == 101:
            stats.dtmf_seen += 1
        if stats.last_seq is not None and (seq - stats.last_seq) & 0xFFFF != 1:
            stats.seq_gaps += 1
        stats.last_seq = seq
        stats.payloads.append(plain[12:])


def run(seconds: float = 3.0, out=sys.stdout) -> int:
    recorders = {t: socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for t in Track}
    for s in recorders.values():
        s.bind(("127.0.0.1", 0))
    media_server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    media_server.bind(("127.0.0.1", 0))
    stop = threading.Event()
    profiles = {Track.INBOUND: SrtpProfile.AES_CM_128_HMAC_SHA1_80,
                Track.OUTBOUND: SrtpProfile.AEAD_AES_128_GCM}
    keys = {t: SrtpKey.generate(profiles[t]) for t in Track}
    stats = {t: RecorderStats() for t in Track}
    threads = [threading.Thread(target=_recorder, args=(recorders[t], keys[t], stats[t], stop))
               for t in Track]
    for t in threads:
        t.start()
    sent = {t: [] for t in Track}
    try:
        with Engine() as engine:
            call = engine.add_call("CA" + "d3" * 16, dtmf_payload_type=101)
            for t in Track:
                call.expect_source(t, "127.0.0.1")
            # the demo recorders take RTCP on their RTP port (rtcp-mux)
            forks = {t: call.add_fork(t, key=keys[t], destination=recorders[t].getsockname(),
                                      rtcp_destination=recorders[t].getsockname(),
                                      rtcp_interval=1.0) for t in Track}
            print(f"call {call.sid}: inbound -> {call.ingress[Track.INBOUND]}, "
                  f"outbound -> {call.ingress[Track.OUTBOUND]}", file=out)
            streams = {t: list(tone_packets(TONES[t], seconds, ssrc=0x1000 + t, dtmf_every=25))
                       for t in Track}
            start = time.monotonic()
            for i in range(max(len(s) for s in streams.values())):
                for t in Track:
                    if i < len(streams[t]):
                        pkt = streams[t][i]
                        media_server.sendto(pkt, call.ingress[t])
                        if pkt[1] & 0x7F != 101:
                            sent[t].append(pkt[12:])
                due = start + (i + 1) * 0.02
                time.sleep(max(0.0, due - time.monotonic()))
                if i % 25 == 0:
                    fwd = sum(f.counters()["sent"] for f in forks.values())
                    print(f"\r  forwarding: {fwd} packets sent over SRTP", end="", file=out)
            time.sleep(0.3)
            counters = {t: forks[t].counters() for t in Track}
            ingress = call.counters()
    finally:
        stop.set()
        for th in threads:
            th.join()
        for s in [*recorders.values(), media_server]:
            s.close()
    print("", file=out)
    ok = True
    print(f"{'fork':10} {'suite':24} {'sent':>6} {'recv':>6} {'srtp ok':>8} {'rtcp':>5} "
          f"{'dtmf in':>8} {'dtmf out':>9} {'gaps':>5} payload", file=out)
    for t in Track:
        s, c = stats[t], counters[t]
        identical = s.payloads == sent[t]
        good = (identical and s.auth_failures == 0 and s.dtmf_seen == 0 and s.seq_gaps == 0
                and c["sent"] == len(sent[t]) and s.rtcp >= 1)
        ok &= good
        print(f"{t.label:10} {keys[t].profile.value:24} {c['sent']:>6} {s.packets - s.rtcp:>6} "
              f"{s.decrypted:>8} {s.rtcp:>5} {ingress[t.label]['filtered_dtmf']:>8} "
              f"{s.dtmf_seen:>9} {s.seq_gaps:>5} {'identical' if identical else 'DIFFERENT'}",
              file=out)
    print("result:", "all checks passed" if ok else "CHECKS FAILED", file=out)
    return 0 if ok else 1
