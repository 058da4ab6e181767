"""Fixtures for the RecordingManager tests; the stack itself is in manager_stack.py (a unique
module name, so it never clashes with another folder's conftest when the suites run together)."""

from manager_stack import run, run_asyncio  # noqa: F401 - pytest fixtures
