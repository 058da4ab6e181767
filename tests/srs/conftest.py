"""Fixtures for the reference recorder tests: a bounded asyncio runner and a TLS certificate."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from mediafork.tlsutil import self_signed


@pytest.fixture
def run() -> Callable[[Coroutine[Any, Any, Any]], Any]:
    """Run a coroutine on a fresh loop, bounded so a hung socket fails the test instead."""

    def runner(coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        async def bounded() -> Any:
            return await asyncio.wait_for(coro, timeout)

        return asyncio.run(bounded())

    return runner


@pytest.fixture
def uvrun() -> Callable[[Coroutine[Any, Any, Any]], Any]:
    """Like ``run`` but on uvloop, the loop the daemon uses."""
    uvloop = pytest.importorskip("uvloop")

    def runner(coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        async def bounded() -> Any:
            return await asyncio.wait_for(coro, timeout)

        return uvloop.run(bounded())

    return runner


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (srs-test.crt, srs-test.key)."""
    return self_signed(tmp_path_factory.mktemp("tls"), "srs-test", "127.0.0.1", days=1)
