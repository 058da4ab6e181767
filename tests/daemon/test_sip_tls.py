"""The daemon's SIP TLS listener (SIP port + 1, where a TLS dialog's Contact points): it
speaks TLS with the configured server certificate, or a generated one under embedded
defaults, and answers SIP on it; a bad certificate pair stops the config load."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mediafork.daemon.config import ConfigError, load_config
from mediafork.sip.message import Response, StreamFramer
from mediafork.tlsutil import self_signed

from .harness import DaemonProcess, free_tcp_port, write_config

OPTIONS = (
    b"OPTIONS sip:mediafork@127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bK-daemon-tls\r\n"
    b"From: <sip:recorder@127.0.0.1>;tag=rec\r\nTo: <sip:mediafork@127.0.0.1>\r\n"
    b"Call-ID: daemon-tls-probe\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def _options_over_tls(port: int, context: ssl.SSLContext) -> tuple[Response, bytes]:
    """OPTIONS on a TLS connection we open; (the answer, the server's DER certificate)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(OPTIONS)
        framer = StreamFramer()
        while True:
            data = tls.recv(65536)
            assert data, "closed without an answer"
            for message in framer.feed(data):
                assert isinstance(message, Response)
                cert = tls.getpeercert(binary_form=True)
                assert cert is not None
                return message, cert


def _der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def test_the_configured_server_certificate_answers_on_the_sip_port_plus_one(
        tmp_path: Path, spawn: Callable[..., DaemonProcess]) -> None:
    cert, key = self_signed(tmp_path / "certs", "sip-server")
    port = free_tcp_port()
    config = write_config(tmp_path, extra=(
        f'\n[sip.tls]\nserver_cert_file = "{cert}"\nserver_key_file = "{key}"\n'))
    config.write_text(config.read_text().replace("[sip]\nport = 0", f"[sip]\nport = {port}"))
    daemon = spawn(["--config", str(config)]).start()
    # Verified against the configured certificate, name (127.0.0.1) included.
    answer, served = _options_over_tls(port + 1, ssl.create_default_context(cafile=str(cert)))
    assert answer.status == 200
    assert served == _der(cert)
    assert daemon.stop() == 0


def test_the_daemons_tls_listener_keeps_the_sip_listener_bounds(
        tmp_path: Path, spawn: Callable[..., DaemonProcess]) -> None:
    cert, key = self_signed(tmp_path / "certs", "sip-server")
    port = free_tcp_port()
    config = write_config(tmp_path, extra=(
        f'\n[sip.tls]\nserver_cert_file = "{cert}"\nserver_key_file = "{key}"\n'))
    config.write_text(config.read_text().replace(
        "[sip]\nport = 0", f"[sip]\nport = {port}\ntls_handshake_timeout = 0.5\n"
                          "max_connections_per_peer = 2"))
    daemon = spawn(["--config", str(config)]).start()

    def closed_after(sock: socket.socket, limit: float) -> float:
        start = time.monotonic()
        sock.settimeout(limit)
        try:
            while sock.recv(4096):
                pass
        except ConnectionResetError:
            pass
        return time.monotonic() - start

    silent = []
    for _ in range(3):  # TCP connects that never start a handshake, from one peer
        sock = socket.socket()
        sock.bind(("127.0.0.2", 0))
        sock.connect(("127.0.0.1", port + 1))
        silent.append(sock)
    try:
        assert closed_after(silent[2], 2.0) < 0.4  # over the per-peer cap: reset at once
        for sock in silent[:2]:  # the handshake timeout closes the others
            assert closed_after(sock, 5.0) < 3.0
        # Another peer still gets TLS and an answer.
        answer, _ = _options_over_tls(port + 1, ssl.create_default_context(cafile=str(cert)))
        assert answer.status == 200
    finally:
        for sock in silent:
            sock.close()
    assert daemon.stop() == 0


def test_embedded_defaults_generate_a_certificate_for_the_tls_listener(
        tmp_path: Path, spawn: Callable[..., DaemonProcess]) -> None:
    port, data = free_tcp_port(), tmp_path / "data"
    daemon = spawn(["--data", str(data), "--listen", "127.0.0.1:0", "--sip-port", str(port),
                    "--recorder-port", "0"]).start()
    generated = data / "tls" / "sip.crt"
    assert (data / "tls" / "sip.key").stat().st_mode & 0o077 == 0
    answer, served = _options_over_tls(
        port + 1, ssl.create_default_context(cafile=str(generated)))
    assert answer.status == 200
    assert served == _der(generated)
    assert "BEGIN" not in daemon.stdout + daemon.stderr  # no key material in the logs
    assert daemon.stop() == 0


def test_a_server_key_that_does_not_match_its_certificate_stops_the_load(
        tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path / "a", "one")
    _, other_key = self_signed(tmp_path / "b", "two")
    config = write_config(tmp_path, extra=(
        f'\n[sip.tls]\nserver_cert_file = "{cert}"\nserver_key_file = "{other_key}"\n'))
    with pytest.raises(ConfigError, match=r"^sip\.tls\.server_key_file: .*do not load"):
        load_config(config)
    config = write_config(tmp_path, extra=f'\n[sip.tls]\nserver_cert_file = "{cert}"\n')
    with pytest.raises(ConfigError, match="go together"):
        load_config(config)


def test_a_held_tls_port_stops_the_start_naming_it(
        tmp_path: Path, spawn: Callable[..., DaemonProcess]) -> None:
    port = free_tcp_port()
    with socket.socket() as held:
        held.bind(("127.0.0.1", port + 1))
        held.listen()
        daemon = spawn(["--data", str(tmp_path / "data"), "--listen", "127.0.0.1:0",
                        "--sip-port", str(port), "--recorder-port", "0"])
        code = daemon.spawn().wait(timeout=30)
    assert code != 0
    assert f"edge default (127.0.0.1:{port}): cannot bind SIP" in daemon.stderr
    assert f"TLS port {port + 1}: " in daemon.stderr, daemon.stderr
