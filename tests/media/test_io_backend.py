"""The I/O backend choice: named, validated, visible, and released with the engine."""

from __future__ import annotations

import logging

import pytest

from mediafork.engine import Engine, EngineError
from tests.io_uring_support import IO_URING_REFUSED, auto_backend

from .conftest import open_descriptors


def test_the_engine_uses_the_backend_asked_for(io_backend: str) -> None:
    with Engine(port_range=(36000, 36099)) as e:
        assert e.io_backend == io_backend
        assert e.workers == 1


def test_auto_prefers_io_uring_and_logs_the_choice(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mediafork.engine"), \
            Engine(io="auto", port_range=(36000, 36099)) as e:
        expected = "epoll" if IO_URING_REFUSED else "io_uring"
        assert e.io_backend == expected
    [line] = [r.getMessage() for r in caplog.records if "media I/O backend" in r.getMessage()]
    assert line.startswith(f"media I/O backend: {expected}")


def test_the_default_is_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``io`` an engine takes io_uring where the kernel allows it (the autouse
    fixture pins every other test to one backend; undo that here)."""
    monkeypatch.setitem(Engine.__init__.__kwdefaults__, "io", "auto")
    with Engine(port_range=(36000, 36099)) as e:
        assert e.io_backend == auto_backend()
    monkeypatch.undo()
    assert Engine.__init__.__kwdefaults__["io"] == "auto"


def test_bad_backend_and_tick_are_refused_before_anything_is_made() -> None:
    before = open_descriptors()
    with pytest.raises(EngineError, match="io must be one of"):
        Engine(io="kqueue")
    with pytest.raises(EngineError, match="tick must be between"):
        Engine(tick=0.5)
    assert open_descriptors() == before


def test_each_worker_has_its_own_backend_and_gives_it_back(io_backend: str) -> None:
    """A ring (or epoll set) per worker; closing the engine closes its descriptors (the
    autouse descriptor check after the test) whatever the backend."""
    before = open_descriptors()
    e = Engine(workers=2, port_range=(36000, 36099))
    assert e.io_backend == io_backend
    assert open_descriptors() > before
    e.close()
    assert open_descriptors() == before
