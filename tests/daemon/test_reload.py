"""Reload without dropping calls: SIGHUP, `mediafork reload` and the control socket re-read
the file; accounts, connectors, edges, callback settings and the log level change while a
call and its Siprec go on; an invalid file is refused whole and changes nothing."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from .harness import (
    ACCOUNT,
    TOKEN,
    CallbackSink,
    DaemonProcess,
    Recorder,
    call_sid,
    send_tones,
    wait_until,
    write_config,
)

NEW_TOKEN = "rotated-daemon-token-" + "r5" * 8


def _config(tmp_path: Path, recorder: Recorder, *, token: str = TOKEN, second: Recorder | None
            = None, edge2: bool = False, level: str = "info", srs: str | None = None) -> Path:
    connectors = [{"unique_name": "Default", "srs": srs or recorder.uri}]
    if second is not None:
        connectors.append({"unique_name": "Second Recorder ü",
                           "srs": second.uri + (";edge=backup" if edge2 else "")})
    extra = (f'\n[control_socket]\npath = "run/mediafork.sock"\n\n'
             f'[logging]\nlevel = "{level}"\n\n'
             '[[edges]]\nname = "main"\naddress = "127.0.0.1"\ndefault = true\n')
    if edge2:
        extra += '\n[[edges]]\nname = "backup"\naddress = "127.0.0.2"\n'
    previous = tmp_path / "mediafork.toml"
    ports = re.search(r"port_range = \[\d+, \d+\]", previous.read_text()).group(0) \
        if previous.exists() else None
    path = write_config(tmp_path, connectors=connectors, extra=extra)
    text = path.read_text().replace(f'auth_token = "{TOKEN}"', f'auth_token = "{token}"')
    if ports:  # the media range needs a restart: keep the running one
        text = re.sub(r"port_range = \[\d+, \d+\]", ports, text)
    path.write_text(text)
    return path


def _listens_on(pid: int, ip: str) -> bool:
    """Whether process *pid* has a TCP socket listening on *ip* (from /proc: its socket
    inodes against the kernel's TCP table, so other processes' sockets do not count)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().name
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    want = socket.inet_aton(ip)[::-1].hex().upper()  # /proc/net/tcp: little-endian hex
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and local.startswith(want + ":") and inode in inodes:
            return True
    return False


def _reload_cli(daemon: DaemonProcess, tmp_path: Path, token: str) -> subprocess.CompletedProcess:
    env = {**daemon.env, "MEDIAFORK_ACCOUNT_SID": ACCOUNT, "MEDIAFORK_AUTH_TOKEN": token}
    return subprocess.run([sys.executable, "-m", "mediafork.cli", "reload", "--control-socket",
                           str(tmp_path / "run" / "mediafork.sock")],
                          capture_output=True, text=True, timeout=30, env=env)


def test_reload_applies_live_changes_while_the_siprec_goes_on(
        tmp_path: Path, recorder: Recorder, sink: CallbackSink,
        spawn: Callable[..., DaemonProcess]) -> None:
    second = Recorder(tmp_path / "srs-2")
    try:
        config = _config(tmp_path, recorder)
        daemon = spawn(["--config", str(config)]).start()
        sid = call_sid(0x61)
        ingress = daemon.register_call(sid)
        created = daemon.start_siprec(sid, "live", sink.url)
        assert created.status_code == 201, created.text
        siprec = created.json()["sid"]
        wait_until(lambda: "siprec-started" in sink.events(siprec), 10, "siprec-started")
        media_server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # one port, as a PBX
        send_tones(ingress, packets=20, sock=media_server)
        wait_until(lambda: recorder.summaries()[0]["totals"]["packets"] >= 40, 10, "media")

        # New token, a second connector on a new edge, debug logging: applied by SIGHUP.
        _config(tmp_path, recorder, token=NEW_TOKEN, second=second, edge2=True, level="debug")
        subprocess.run([sys.executable, "-m", "mediafork.cli", "reload", "--pid",
                        str(daemon.proc.pid)], check=True, timeout=30, env=daemon.env,
                       capture_output=True)
        wait_until(lambda: "configuration reloaded" in daemon.stderr, 10, "the reload")
        line = next(x for x in daemon.stderr.splitlines() if "configuration reloaded" in x)
        assert "connector 'Second Recorder ü'" in line and "edge backup" in line
        assert NEW_TOKEN not in daemon.stderr and TOKEN not in daemon.stderr

        # The live Siprec never noticed: still in progress, media still reaches the recorder.
        assert daemon.get("/v1/Calls", auth=(ACCOUNT, TOKEN)).status_code == 401
        view = daemon.get(f"/v1/Calls/{sid}", auth=(ACCOUNT, NEW_TOKEN)).json()
        assert [s["status"] for s in view["siprecs"]] == ["in-progress"]
        before = recorder.summaries()[0]["totals"]["packets"]
        send_tones(ingress, packets=20, sock=media_server)
        wait_until(lambda: recorder.summaries()[0]["totals"]["packets"] >= before + 40, 10,
                   "media after the reload")
        media_server.close()
        assert recorder.summaries()[0]["state"] != "ended"

        # The new connector works on the same call, from the new edge.
        form = {"Name": "second", "ConnectorName": "Second Recorder ü", "Track": "inbound_track",
                "StatusCallback": sink.url}
        answer = daemon.post_form(f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{sid}/Siprec.json",
                                  form, auth=(ACCOUNT, NEW_TOKEN))
        assert answer.status_code == 201, answer.text
        wait_until(lambda: "siprec-started" in sink.events(answer.json()["sid"]), 10,
                   "siprec-started on the new connector")
        metrics = daemon.metrics()
        assert 'mediafork_config_reloads_total{outcome="applied"} 1.0' in metrics
        assert 'mediafork_edge_up{edge="backup"} 1.0' in metrics
        assert re.search(r"DEBUG", daemon.stderr)  # [logging] level took effect
        assert _listens_on(daemon.proc.pid, "127.0.0.2")  # the new edge's SIP TCP listener

        # An invalid file is refused whole: the running configuration stays.
        bad = _config(tmp_path, recorder, token="short", second=second, edge2=True)
        refused = _reload_cli(daemon, tmp_path, NEW_TOKEN)
        assert refused.returncode == 1
        assert re.search(r"accounts\[0\]\.auth_token: .*at least 16 characters", refused.stderr)
        assert daemon.get("/v1/Calls", auth=(ACCOUNT, NEW_TOKEN)).status_code == 200
        assert 'mediafork_config_reloads_total{outcome="refused"} 1.0' in daemon.metrics()
        assert bad.exists()

        # Removing the edge closes its SIP sockets once its session has ended.
        daemon.post_form(f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{sid}/Siprec/second.json",
                         {"Status": "stopped"}, auth=(ACCOUNT, NEW_TOKEN))
        wait_until(lambda: "siprec-stopped" in sink.events(answer.json()["sid"]), 10,
                   "the second Siprec stopped")
        _config(tmp_path, recorder, token=NEW_TOKEN, second=second, edge2=False, level="debug")
        done = _reload_cli(daemon, tmp_path, NEW_TOKEN)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "reloaded: 0 added, 1 changed, 1 removed"  # connector, edge
        assert 'mediafork_edge_up{edge="backup"}' not in daemon.metrics()
        # The removed edge's SIP listener is closed: its last session has ended.
        wait_until(lambda: not _listens_on(daemon.proc.pid, "127.0.0.2"), 5,
                   "the removed edge's listener to close")
        assert daemon.stop() == 0
    finally:
        second.close()


def test_embedded_defaults_have_nothing_to_reload(tmp_path: Path,
                                                   spawn: Callable[..., DaemonProcess]) -> None:
    daemon = spawn(["--data", str(tmp_path / "d"), "--listen", "127.0.0.1:0", "--sip-port",
                    "0", "--recorder-port", "0"]).start()
    daemon.proc.send_signal(1)  # SIGHUP
    wait_until(lambda: "reload refused" in daemon.stderr, 10, "the refusal")
    assert "no file to re-read" in daemon.stderr
    assert daemon.get("/healthz", auth=None).status_code == 200
    assert daemon.stop() == 0
