"""systemd Type=notify: READY=1 once every listener is bound, STOPPING=1 on SIGTERM, and
watchdog pings that stop when a media worker stops making progress. A real notification
socket (what systemd listens on) receives them."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from mediafork.daemon import systemd
from mediafork.engine import Engine

from .harness import DaemonProcess, write_config


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.1)
    yield sock
    sock.close()


def _messages(sock: socket.socket, seconds: float) -> list[str]:
    got, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
    return got


def test_ready_after_listeners_watchdog_pings_and_stopping(
        tmp_path: Path, notify_socket: socket.socket,
        spawn: Callable[..., DaemonProcess]) -> None:
    config = write_config(tmp_path)
    daemon = spawn(["--config", str(config)], env={
        "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"})
    proc = daemon.spawn()
    ready = None
    deadline = time.monotonic() + 20
    while ready is None and time.monotonic() < deadline:
        assert proc.poll() is None, daemon.stderr
        for message in _messages(notify_socket, 0.2):
            if "READY=1" in message.split("\n"):
                ready = message
    assert ready is not None, "no READY=1"
    assert f"MAINPID={proc.pid}" in ready
    base = ready.split("STATUS=serving on ")[1].split("\n")[0]
    # READY means ready: the API answers at once, with nothing left starting.
    assert requests.get(base + "/readyz", timeout=5).json() == {"status": "ready"}
    pings = [m for m in _messages(notify_socket, 1.5) if m == "WATCHDOG=1"]
    assert len(pings) >= 4, pings  # every 0.2 s while the media workers advance
    proc.send_signal(signal.SIGTERM)
    after = _messages(notify_socket, 1.0)
    assert any(m.startswith("STOPPING=1") for m in after), after
    assert proc.wait(timeout=20) == 0


def test_abstract_namespace_socket_and_no_socket() -> None:
    name = f"mediafork-test-{secrets.token_hex(4)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        assert systemd.notify("READY=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(100) == b"READY=1"
    assert systemd.notify("READY=1", {}) is False  # not under systemd: nothing happens
    # A supervisor that went away does not take the daemon down.
    assert systemd.notify("READY=1", {"NOTIFY_SOCKET": "/nonexistent/notify.sock"}) is False


def test_watchdog_interval_is_for_this_process_only() -> None:
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000",
                                      "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000",
                                      "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert systemd.watchdog_interval({}) is None


def test_watchdog_withholds_pings_while_a_worker_makes_no_progress(
        tmp_path: Path, notify_socket: socket.socket) -> None:
    # An engine without its thread advances only when run_once() is called: a real worker
    # loop that we can stop and restart at will.
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
    with Engine(threaded=False, port_range=(44000, 44099)) as engine:
        async def scenario() -> tuple[int, int, int]:
            dog = systemd.Watchdog(0.1, lambda: [int(w["loops"]) for w in
                                                 engine.worker_stats()], env)
            dog.start()
            await asyncio.sleep(0.55)  # stuck: no run_once
            stuck_pings = dog.pings
            for _ in range(40):  # running again, several loops per watchdog interval
                engine.run_once()
                await asyncio.sleep(0.02)
            await dog.stop()
            return stuck_pings, dog.pings, dog.withheld

        stuck_pings, pings, withheld = asyncio.run(scenario())
    assert stuck_pings == 0 and withheld >= 4
    assert pings >= 3
    received = [m for m in _messages(notify_socket, 0.3) if m == "WATCHDOG=1"]
    assert len(received) == pings
