"""Given-up status callbacks through the daemon: listed by the host API and `mediafork
callbacks`, sent again on request, and visible in /metrics while outstanding."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from .harness import ACCOUNT, TOKEN, DaemonProcess, Recorder, call_sid, wait_until, write_config


class ScriptedApp:
    """A status-callback receiver whose answer the test changes (404 until it is fixed)."""

    def __init__(self) -> None:
        self.status = 404
        self.received: list[dict[str, str]] = []
        app = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                app.received.append(dict(urllib.parse.parse_qsl(body)))
                self.send_response(app.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks?token=app-secret"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_list_and_redeliver_given_up_callbacks(
        tmp_path: Path, recorder: Recorder, spawn: Callable[..., DaemonProcess]) -> None:
    app = ScriptedApp()
    try:
        config = write_config(tmp_path, connectors=[{"unique_name": "Default",
                                                     "srs": recorder.uri}])
        daemon = spawn(["--config", str(config)]).start()
        sid = call_sid(0x51)
        daemon.register_call(sid)
        created = daemon.start_siprec(sid, "rec", app.url)
        assert created.status_code == 201, created.text
        siprec = created.json()["sid"]
        # The app answers 404: final, given up at once (no retry of a rejection).
        wait_until(lambda: any(c.get("SiprecSid") == siprec for c in app.received), 10,
                   "the first attempt")

        def listed() -> dict[str, Any]:
            return daemon.get("/v1/Callbacks").json()

        view = wait_until(lambda: (v := listed())["counts"]["failed"] and v, 10, "failed")
        [item] = view["callbacks"]
        assert item["resource_sid"] == siprec and item["event"] == "siprec-started"
        assert item["delivery_state"] == "failed"
        assert "app-secret" not in json.dumps(view)  # the query may hold the app's token
        assert item["url"].endswith("/hooks")
        bad = daemon.get("/v1/Callbacks?State=lost")
        assert bad.status_code == 400

        env = {**daemon.env, "MEDIAFORK_ACCOUNT_SID": ACCOUNT, "MEDIAFORK_AUTH_TOKEN": TOKEN,
               "MEDIAFORK_URL": daemon.base_url}
        cli = subprocess.run([sys.executable, "-m", "mediafork.cli", "callbacks", "--json"],
                             capture_output=True, text=True, timeout=20, env=env)
        assert cli.returncode == 0, cli.stderr
        assert [c["id"] for c in json.loads(cli.stdout)["callbacks"]] == [item["id"]]

        app.status = 200  # fixed
        cli = subprocess.run([sys.executable, "-m", "mediafork.cli", "callbacks", "--redeliver"],
                             capture_output=True, text=True, timeout=20, env=env)
        assert cli.returncode == 0, cli.stderr
        assert "redelivering 1 status callbacks" in cli.stdout
        wait_until(lambda: listed()["counts"]["delivered"] >= 1, 10, "the redelivery")
        started = [c for c in app.received if c.get("SiprecEvent") == "siprec-started"]
        assert len(started) == 2  # the refused attempt, then the redelivered one
        again = requests.post(daemon.base_url + "/v1/Callbacks/Redeliver", json={"ids": [0]},
                              auth=(ACCOUNT, TOKEN), timeout=5)
        assert again.status_code == 400
        assert "mediafork_callbacks_outstanding" in daemon.metrics()
        assert daemon.stop() == 0
    finally:
        app.close()
