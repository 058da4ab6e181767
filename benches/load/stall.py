"""Does a media-worker stall turn ingress backlog into ring drops? (docs/reliability.md,
"Load and soak", finding 2.)

10 calls with one SRTP fork per track, a paced C generator in another process, and this
process stopped with SIGSTOP for SECONDS. The 1 MiB ingress buffers hold the backlog; what
the worker then drops at the forks' 64-slot rings while catching up is printed.

    python -m benches.load.stall 2.0
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from mediafork.engine import Engine, SrtpKey, Track
from mediafork.media.sockets import udp_socket

_GENERATOR = (
    "import json, sys\n"
    "from mediafork.media import _fastpath\n"
    "from mediafork.media.sockets import udp_socket\n"
    "g = udp_socket('127.0.0.1', 0, send_buffer=8 << 20)\n"
    "d = [tuple(x) for x in json.loads(sys.argv[1])]\n"
    "print(json.dumps(_fastpath.run_loadgen(g.fileno(), d, 50, 160, 0, 6.0, 0.5, [])))\n"
)


def main(stall: float) -> dict[str, int]:
    engine = Engine(port_range=(40000, 40999))
    sink = udp_socket("127.0.0.1", 0, receive_buffer=16 << 20)
    try:
        dests, forks = [], []
        for i in range(10):
            call = engine.add_call(f"CA{i:032x}", record_slots=0)
            for track in Track:
                dests.append(list(call.ingress[track]))
                forks.append(call.add_fork(track, key=SrtpKey.generate(),
                                           destination=sink.getsockname()))
        gen = subprocess.Popen([sys.executable, "-c", _GENERATOR, json.dumps(dests)],
                               stdout=subprocess.PIPE)
        time.sleep(2)
        # A helper stops and continues this process (the worker with it), not the generator.
        subprocess.Popen(["sh", "-c", f"kill -STOP {os.getpid()}; sleep {stall}; "
                                      f"kill -CONT {os.getpid()}"])
        time.sleep(stall + 3)
        generated = json.loads(gen.communicate()[0])["sent"]
        time.sleep(0.5)
        counters = [f.counters() for f in forks]
        return {
            "stall_ms": int(stall * 1000),
            "generated": generated,
            "received": sum(c.counters()[t.label]["received"] for c in engine.calls
                            for t in Track),
            "ring_full": sum(c["dropped_full"] for c in counters),
            "sent": sum(c["sent"] for c in counters),
        }
    finally:
        engine.close()
        sink.close()


if __name__ == "__main__":
    print(json.dumps(main(float(sys.argv[1]) if len(sys.argv) > 1 else 2.0)))
