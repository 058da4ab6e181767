"""`mediafork srs` command line: argument checks and a real process answering and exiting."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest

from mediafork.sip.message import Response, parse_message
from mediafork.srs.cli import build_parser, config_from_args, main


def test_flags_map_onto_the_config():
    args = build_parser().parse_args([
        "--listen", "127.0.0.1:5999", "--tcp", "--out", "/tmp/x", "--answer", "486",
        "--hangup-after", "3", "--require-auth", "u:p:w", "--credentials-header", "X-K=a=b",
        "--no-answer",
    ])
    config = config_from_args(args)
    assert (config.host, config.port, config.tcp) == ("127.0.0.1", 5999, True)
    assert config.answer == 486 and config.no_answer and config.hangup_after == 3.0
    assert config.require_auth == ("u", "p:w")
    assert config.credentials_header == ("X-K", "a=b")
    assert "p:w" not in repr(config) and "a=b" not in repr(config)  # secrets stay out of repr


@pytest.mark.parametrize("argv", [
    ["--answer", "99"], ["--listen", "nowhere"], ["--tls-cert", "c.pem"],
    ["--require-auth", "nopassword"], ["--credentials-header", "novalue"],
])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_process_answers_options_and_exits_cleanly_on_sigterm(tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mediafork.srs", "--listen", f"127.0.0.1:{port}",
         "--out", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(2)]
        assert any(f"mediafork srs: listening on 127.0.0.1:{port}" in x for x in lines), lines
        options = (
            f"OPTIONS sip:recorder@127.0.0.1:{port} SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKcli1\r\n"
            "From: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:recorder@127.0.0.1>\r\n"
            "Call-ID: cli-probe\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            deadline = time.monotonic() + 5
            while True:
                sock.sendto(b"not sip at all", ("127.0.0.1", port))
                sock.sendto(options, ("127.0.0.1", port))
                try:
                    data, _ = sock.recvfrom(65536)
                    break
                except TimeoutError:
                    assert time.monotonic() < deadline
        response = parse_message(data)
        assert isinstance(response, Response) and response.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_media_ports_come_from_the_flag_or_the_environment(monkeypatch):
    from mediafork.srs.cli import build_parser, config_from_args

    monkeypatch.setenv("MEDIAFORK_SRS_MEDIA_PORTS", "41000-41099")
    monkeypatch.setenv("MEDIAFORK_SRS_LISTEN", "127.0.0.3:5090")
    monkeypatch.setenv("MEDIAFORK_SRS_OUT", "/tmp/srs-out")
    config = config_from_args(build_parser().parse_args([]))
    assert config.media_ports == (41000, 41099)
    assert (config.host, config.port, str(config.out_dir)) == ("127.0.0.3", 5090, "/tmp/srs-out")
    config = config_from_args(build_parser().parse_args(["--media-ports", "42000-42003"]))
    assert config.media_ports == (42000, 42003)
    monkeypatch.setenv("MEDIAFORK_SRS_MEDIA_PORTS", "42000-42001")
    with pytest.raises(SystemExit):
        build_parser().parse_args([])
