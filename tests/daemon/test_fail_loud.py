"""A daemon that cannot do its job says so: a SIP port held by someone else stops the start
(or, when the operator opts in, starts degraded with /readyz 503 naming it); /readyz answers
503 while no Siprec could start; flags and MEDIAFORK_* variables move every port."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from mediafork.daemon.config import ConfigError, load_config, with_overrides
from mediafork.daemon.process import Daemon

from .harness import DaemonProcess, call_sid, free_tcp_port, write_config


@contextmanager
def held_sip_port() -> Iterator[int]:
    """A port taken on UDP and TCP, as a colocated PBX holds 5060."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    port = udp.getsockname()[1]
    tcp = socket.socket()
    try:
        tcp.bind(("127.0.0.1", port))
        tcp.listen()
    except OSError:
        pass  # the UDP port alone already makes the edge unusable
    try:
        yield port
    finally:
        udp.close()
        tcp.close()


def test_a_held_sip_port_stops_the_start_naming_edge_address_and_port(
        tmp_path: Path, spawn: Callable[..., DaemonProcess]) -> None:
    with held_sip_port() as port:
        daemon = spawn(["--data", str(tmp_path / "data"), "--listen", "127.0.0.1:0",
                        "--sip-port", str(port), "--recorder-port", "0"])
        proc = daemon.spawn()
        code = proc.wait(timeout=30)
    assert code != 0
    assert "mediafork ready" not in daemon.stdout
    err = daemon.stderr
    assert f"edge default (127.0.0.1:{port}): cannot bind SIP" in err, err
    assert "start_degraded" in err  # says how to opt in


def test_start_degraded_is_opt_in_and_readyz_names_the_edge(
        tmp_path: Path, spawn: Callable[..., DaemonProcess]) -> None:
    with held_sip_port() as port:
        config = write_config(tmp_path, extra="")
        text = config.read_text().replace("[sip]\nport = 0",
                                          f"[sip]\nport = {port}\nstart_degraded = true")
        config.write_text(text)
        daemon = spawn(["--config", str(config)]).start()
        ready = daemon.get("/readyz", auth=None)
        assert ready.status_code == 503
        body = ready.json()
        assert body["status"] == "unavailable"
        assert any(f"edge default (127.0.0.1:{port})" in p for p in body["problems"]), body
        assert any("no usable edge" in p for p in body["problems"]), body
        assert daemon.get("/healthz", auth=None).status_code == 200  # alive, not ready
        assert daemon.stop() == 0


def test_flags_and_environment_move_every_port(
        tmp_path: Path, spawn: Callable[..., DaemonProcess]) -> None:
    api_port, sip_port = free_tcp_port(), free_tcp_port()
    env = {"MEDIAFORK_LISTEN": f"127.0.0.1:{api_port}", "MEDIAFORK_SIP_PORT": str(sip_port),
           "MEDIAFORK_MEDIA_PORTS": "42000-42011", "MEDIAFORK_DATA": str(tmp_path / "d1"),
           "MEDIAFORK_RECORDER_PORT": "0"}
    daemon = spawn([], env=env).start()
    assert daemon.base_url == f"http://127.0.0.1:{api_port}"
    assert (tmp_path / "d1" / "mediafork.db").is_file()
    # The daemon holds the SIP port it was told to.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe, pytest.raises(OSError):
        probe.bind(("127.0.0.1", sip_port))
    account, token = (tmp_path / "d1" / "auth_token").read_text().strip().split(":")
    answer = requests.post(daemon.base_url + "/v1/Calls", auth=(account, token), timeout=5,
                           json={"call_sid": call_sid(7), "account_sid": account,
                                 "from": "sip:a@pbx.example", "to": "sip:b@pbx.example"})
    assert answer.status_code == 201, answer.text
    ports = [a["port"] for a in answer.json()["ingress"].values()]
    assert all(42000 <= p <= 42011 for p in ports), ports
    assert daemon.stop() == 0

    # A flag wins over its variable.
    flag_port = free_tcp_port()
    daemon = spawn(["--listen", f"127.0.0.1:{flag_port}"], env=env).start()
    assert daemon.base_url == f"http://127.0.0.1:{flag_port}"
    assert daemon.stop() == 0


@pytest.mark.parametrize("variable, value, message", [
    ("MEDIAFORK_MEDIA_PORTS", "42000-42001", "--media-ports: must hold at least 4 ports"),
    ("MEDIAFORK_MEDIA_PORTS", "42000", "--media-ports: must be FIRST-LAST"),
    ("MEDIAFORK_SIP_PORT", "70000", "--sip-port: must be a port number"),
    ("MEDIAFORK_LISTEN", "nowhere", "--listen: must be HOST:PORT"),
])
def test_bad_overrides_are_refused_with_the_flag_named(
        tmp_path: Path, spawn: Callable[..., DaemonProcess], variable: str, value: str,
        message: str) -> None:
    daemon = spawn(["--data", str(tmp_path / "d")], env={variable: value})
    assert daemon.spawn().wait(timeout=30) == 2
    assert message in daemon.stderr, daemon.stderr


def test_with_overrides_checks_like_the_file(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    moved = with_overrides(config, listen="127.0.0.2:9000", sip_port="0",
                           media_ports="30000-30003")
    assert (moved.api.host, moved.api.port, moved.sip.port) == ("127.0.0.2", 9000, 0)
    assert moved.media.port_range == (30000, 30003)
    with pytest.raises(ConfigError, match="--media-ports"):
        with_overrides(config, media_ports="30003-30000")


def test_readyz_reports_an_unwritable_store_and_exhausted_media_ports(tmp_path: Path) -> None:
    config = with_overrides(load_config(write_config(tmp_path)), media_ports="43000-43007")

    async def scenario() -> None:
        daemon = Daemon(config)
        await daemon.start()
        try:
            assert await daemon.readiness_problems() == []
            # The store turns read-only under the daemon (a remounted file system, say):
            # SQLite itself refuses the probe's write.
            await daemon.store.run(lambda: daemon.store._store._db.execute(
                "PRAGMA query_only = ON"))
            # Two calls take the 4 even ports (2 each); the third finds none.
            assert daemon.engine is not None
            daemon.engine.add_call(call_sid(1))
            daemon.engine.add_call(call_sid(2))
            with pytest.raises(Exception, match="no free media ports"):
                daemon.engine.add_call(call_sid(3))
            daemon._readiness = None  # skip the 2 s cache
            problems = await daemon.readiness_problems()
            assert any("is not writable" in p for p in problems), problems
            assert any("media port range 43000-43007 is exhausted" in p for p in problems)
            daemon.engine.get_call(call_sid(2)).close()
            await daemon.store.run(lambda: daemon.store._store._db.execute(
                "PRAGMA query_only = OFF"))
            daemon.engine.add_call(call_sid(4))  # a successful allocation clears it
            daemon._readiness = None
            assert await daemon.readiness_problems() == []
        finally:
            await daemon.shutdown()

    asyncio.run(scenario())


def test_check_config_validates_without_starting(tmp_path: Path) -> None:
    import subprocess
    import sys

    from .harness import TREE

    good = write_config(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(TREE)}
    done = subprocess.run([sys.executable, "-m", "mediafork.cli", "check-config", str(good)],
                          capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 0, done.stderr
    assert "OK (1 accounts" in done.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace("[sip]\nport = 0", "[sip]\nport = 99999"))
    done = subprocess.run([sys.executable, "-m", "mediafork.cli", "check-config", str(bad)],
                          capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 2
    assert "sip.port: must be a port number" in done.stderr
