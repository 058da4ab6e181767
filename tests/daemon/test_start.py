"""`mediafork serve` starts from a config file and from no file."""

from __future__ import annotations

import signal
import stat
from collections.abc import Callable
from pathlib import Path

import requests

from .harness import (
    ACCOUNT,
    CONNECTOR_SECRET,
    TOKEN,
    CallbackSink,
    DaemonProcess,
    Recorder,
    call_sid,
    send_tones,
    wait_until,
    write_config,
)


def test_serves_from_a_config_file_and_records_to_its_connector(
        tmp_path: Path, recorder: Recorder, sink: CallbackSink,
        spawn: Callable[..., DaemonProcess]) -> None:
    config = write_config(tmp_path, connectors=[{"unique_name": "Default", "srs": recorder.uri}])
    daemon = spawn(["--config", str(config)]).start()
    assert daemon.get("/readyz", auth=None).json() == {"status": "ready"}
    # Nothing generated: a config file brings its own accounts.
    assert "Generated account" not in daemon.stdout
    assert daemon.get("/v1/Calls").status_code == 200
    assert daemon.get("/v1/Calls", auth=(ACCOUNT, "x" * 20)).status_code == 401

    sid = call_sid(1)
    ingress = daemon.register_call(sid)
    created = daemon.start_siprec(sid, "rec1", sink.url)
    assert created.status_code == 201, created.text
    siprec = created.json()["sid"]
    wait_until(lambda: "siprec-started" in sink.events(siprec), 10, "siprec-started")
    send_tones(ingress, packets=50)
    wait_until(lambda: (recorder.summaries() or [{}])[0].get("totals", {}).get("packets", 0)
               >= 80, 10, "media at the recorder")
    # The storage path is relative to the config file.
    assert (tmp_path / "data" / "mediafork.db").is_file()
    assert daemon.stop() == 0
    [summary] = recorder.summaries()
    assert summary["ended_by"] == "src"
    assert CONNECTOR_SECRET not in daemon.stderr + daemon.stdout


def test_serves_from_no_file_and_prints_the_generated_account_once(
        tmp_path: Path, spawn: Callable[..., DaemonProcess]) -> None:
    data = tmp_path / "data"
    args = ["--data", str(data), "--no-recorder", "--listen", "127.0.0.1:0"]
    first = spawn(args).start()
    token_file = data / "auth_token"
    sid, _, token = token_file.read_text().strip().partition(":")
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert f"Generated account {sid}" in first.stdout and token in first.stdout
    assert first.stdout.count(token) == 1
    assert token not in first.stderr  # printed to the terminal, never to the log
    wait_until(lambda: first.get("/readyz", auth=None).status_code == 200, 5, "readiness")
    assert first.get("/v1/Calls", auth=(sid, token)).status_code == 200
    assert first.stop(signal.SIGTERM) == 0

    second = spawn(args).start()
    assert "Generated account" not in second.stdout and token not in second.stdout
    assert token_file.read_text().strip() == f"{sid}:{token}"  # same credentials
    assert second.get("/readyz", auth=None).status_code == 200
    assert requests.get(second.base_url + "/v1/Calls", auth=(sid, token),
                        timeout=5).status_code == 200
    assert second.stop() == 0
    assert TOKEN not in second.stdout  # (the test account's token is unrelated)
