"""A connector's SIP profile through the whole daemon: TOML → REST-created Siprec → the
reference recorder (suite, decrypted media, parameters), and `mediafork reload` applying
a changed profile to new Siprecs while the live one keeps its own."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from .harness import (
    ACCOUNT,
    API,
    CallbackSink,
    DaemonProcess,
    Recorder,
    call_sid,
    send_tones,
    wait_until,
    write_config,
)

TENANT = "acme-tenant-token-77"


def _config(tmp_path: Path, recorder: Recorder, suite: str, previous: Path | None = None) -> Path:
    extra = ("\n[connectors.sip]\n"
             f'srtp_suites = ["{suite}", "AES_CM_128_HMAC_SHA1_80"]\n'
             'parameters_as = "both"\n'
             '\n[connectors.sip.headers]\n'
             f'X-Tenant = "{TENANT}"\n')
    path = write_config(tmp_path, connectors=[{"unique_name": "Default",
                                               "srs": recorder.uri + ";transport=udp;secure=true"}],
                        extra=extra)
    if previous is not None:  # the media range needs a restart: keep the running one
        old = next(x for x in previous.read_text().splitlines() if x.startswith("port_range"))
        new = next(x for x in path.read_text().splitlines() if x.startswith("port_range"))
        path.write_text(path.read_text().replace(new, old))
    return path


def _siprec(daemon: DaemonProcess, sid: str, name: str, sink: CallbackSink) -> str:
    answer = daemon.post_form(f"{API}/Accounts/{ACCOUNT}/Calls/{sid}/Siprec.json", {
        "Name": name, "Track": "inbound_track", "StatusCallback": sink.url,
        "Parameter1.Name": "Agent Name", "Parameter1.Value": "Zoë Müller"})
    assert answer.status_code == 201, answer.text
    siprec = answer.json()["sid"]
    wait_until(lambda: "siprec-started" in sink.events(siprec), 10, f"{name} started")
    return siprec


def test_profile_reaches_the_recorder_and_reload_applies_to_new_siprecs(
        tmp_path: Path, recorder: Recorder, sink: CallbackSink,
        spawn: Callable[..., DaemonProcess]) -> None:
    config = _config(tmp_path, recorder, "AEAD_AES_256_GCM")
    daemon = spawn(["--config", str(config)]).start()
    sid = call_sid(0x71)
    ingress = daemon.register_call(sid)
    _siprec(daemon, sid, "first", sink)
    media_server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    send_tones({"inbound": ingress["inbound"]}, packets=20, sock=media_server)
    wait_until(lambda: recorder.summaries()[0]["totals"]["packets"] >= 20, 10, "media")
    (first,) = recorder.summaries()
    assert [s["srtp_suite"] for s in first["streams"]] == ["AEAD_AES_256_GCM"]
    assert first["totals"]["srtp_auth_failures"] == 0
    assert first["parameters"] == {"Agent Name": "Zoë Müller"}

    # A new suite order: applied by reload to the next Siprec, not to the live one.
    _config(tmp_path, recorder, "AEAD_AES_128_GCM", previous=config)
    subprocess.run([sys.executable, "-m", "mediafork.cli", "reload", "--pid",
                    str(daemon.proc.pid)], check=True, timeout=30, env=daemon.env,
                   capture_output=True)
    wait_until(lambda: "configuration reloaded" in daemon.stderr, 10, "the reload")
    line = next(x for x in daemon.stderr.splitlines() if "configuration reloaded" in x)
    assert "connector 'Default'" in line
    _siprec(daemon, sid, "second", sink)
    send_tones({"inbound": ingress["inbound"]}, packets=20, sock=media_server)
    media_server.close()
    wait_until(lambda: len(recorder.summaries()) == 2
               and recorder.summaries()[1]["totals"]["packets"] >= 20, 10, "media, second")
    first, second = recorder.summaries()
    assert [s["srtp_suite"] for s in first["streams"]] == ["AEAD_AES_256_GCM"]
    assert [s["srtp_suite"] for s in second["streams"]] == ["AEAD_AES_128_GCM"]
    assert second["totals"]["srtp_auth_failures"] == 0
    assert TENANT not in daemon.stderr  # header values are never logged
    assert daemon.stop() == 0
