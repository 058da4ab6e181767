"""Security suites: share the real-daemon stack of tests/badinput (mfstack.py) and the
child-process daemon of tests/daemon (harness.py, imported as ``daemon.harness``)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (HERE.parents[1], HERE.parent, HERE.parent / "badinput"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
