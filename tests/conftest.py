"""Shared by every suite: ``tests/`` on ``sys.path``, so a harness can import the helpers kept
here (``fdcheck``) and another suite's harness (``daemon.harness``) the same way whichever
folder pytest was pointed at."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = str(Path(__file__).resolve().parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)
