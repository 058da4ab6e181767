"""Run a server until killed; prints its base URL on stdout. Used by the crash test.

Its connectors (in the TOML given) point at recorders running in the test process.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]  # + tests/

from harness import LoopThread, Server  # noqa: E402

from mediafork.daemon.config import load_config  # noqa: E402

if __name__ == "__main__":
    server = Server(load_config(sys.argv[1]), LoopThread())
    print(server.base_url, flush=True)
    while True:
        time.sleep(60)
