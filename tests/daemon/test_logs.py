"""`--log-format json`: every stderr line is one JSON object, and no secret reaches a log line
across a run full of errors (wrong API credentials, a recorder refusing the connector's
credentials header, a callback URL carrying credentials, an unreachable callback URL)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

from .harness import (
    ACCOUNT,
    CONNECTOR_SECRET,
    TOKEN,
    WRONG_TOKEN,
    CallbackSink,
    DaemonProcess,
    Recorder,
    call_sid,
    free_tcp_port,
    send_tones,
    wait_until,
    write_config,
)

CALLBACK_PASSWORD = "callback-password-" + "p4" * 8


def test_json_logs_carry_no_secret(tmp_path: Path, sink: CallbackSink,
                                   spawn: Callable[..., DaemonProcess]) -> None:
    # The recorder wants another value in the header than the connector sends: 403.
    strict = Recorder(tmp_path / "srs", credentials_header=("X-Token", "the-right-value-123"))
    try:
        config = write_config(tmp_path, connectors=[
            {"unique_name": "Default", "srs": strict.uri, "credentials_header": "X-Token",
             "credentials": CONNECTOR_SECRET},
        ])
        daemon = spawn(["--config", str(config), "--log-format", "json",
                        "--log-level", "debug"]).start()

        # Wrong Basic credentials, on the JSON API and the Twilio-compatible one.
        for auth in ((ACCOUNT, WRONG_TOKEN), (ACCOUNT + "0", TOKEN), (TOKEN, TOKEN)):
            assert daemon.get("/v1/Calls", auth=auth).status_code == 401
            assert daemon.post_form(f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{call_sid(1)}/"
                                    "Siprec.json", {"Name": "x"}, auth=auth).status_code == 401

        sid = call_sid(0x41)
        ingress = daemon.register_call(sid)
        refused = daemon.start_siprec(sid, "refused", sink.url)
        assert refused.status_code == 201, refused.text
        wait_until(lambda: "siprec-error" in sink.events(refused.json()["sid"]), 10,
                   "siprec-error after the 403")
        error = [c for c in sink.received if c.get("SiprecEvent") == "siprec-error"][0]
        assert "403" in error.get("SiprecError", ""), error

        # A callback URL with credentials in it is refused, and its password goes nowhere.
        with_password = f"http://hook:{CALLBACK_PASSWORD}@127.0.0.1:{free_tcp_port()}/cb"
        refused_url = daemon.start_siprec(sid, "password-callback", with_password)
        assert refused_url.status_code == 400, refused_url.text
        assert CALLBACK_PASSWORD not in refused_url.text
        # A callback URL to a port nobody listens on: failed deliveries are logged.
        dead = f"http://127.0.0.1:{free_tcp_port()}/cb"
        again = daemon.start_siprec(sid, "dead-callback", dead)
        assert again.status_code == 201, again.text
        send_tones(ingress, packets=20)
        wait_until(lambda: 'mediafork_sip_responses_total{class="4xx"} 2.0' in daemon.metrics(),
                   10, "the second 403")
        assert daemon.stop() == 0
    finally:
        strict.close()

    lines = daemon.stderr.splitlines()
    assert len(lines) >= 5  # the run was actually logged (debug level)
    for line in lines:
        entry = json.loads(line)  # every line, not just most
        assert {"time", "level", "logger", "message"} <= entry.keys(), line
        assert entry["time"].endswith("Z") and entry["level"] in (
            "debug", "info", "warning", "error", "critical")
    logged = daemon.stderr + daemon.stdout
    basic = base64.b64encode(f"{ACCOUNT}:{TOKEN}".encode()).decode()
    for secret in (TOKEN, WRONG_TOKEN, CONNECTOR_SECRET, CALLBACK_PASSWORD, basic):
        assert secret not in logged, secret
    # The problems themselves are visible to the operator.
    assert "403" in daemon.stderr


def test_log_lines_carry_the_resources_as_structured_fields(
        tmp_path: Path, sink: CallbackSink, spawn: Callable[..., DaemonProcess]) -> None:
    refusing = Recorder(tmp_path / "srs", answer=486)
    try:
        config = write_config(tmp_path, connectors=[
            {"unique_name": "Busy Recorder ü", "srs": refusing.uri}])
        daemon = spawn(["--config", str(config), "--log-format", "json"]).start()
        sid = call_sid(0x42)
        daemon.register_call(sid)
        created = daemon.post_form(f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{sid}/Siprec.json", {
            "Name": "refused", "ConnectorName": "Busy Recorder ü", "StatusCallback": sink.url})
        assert created.status_code == 201, created.text
        siprec = created.json()["sid"]
        wait_until(lambda: "siprec-error" in sink.events(siprec), 10, "siprec-error")
        assert daemon.stop() == 0
    finally:
        refusing.close()
    entries = [json.loads(line) for line in daemon.stderr.splitlines()]
    about = [e for e in entries if e.get("siprec_sid") == siprec]
    assert about, daemon.stderr
    refused = [e for e in about if "486" in e["message"]]
    assert refused, about
    entry = refused[0]
    assert entry["call_sid"] == sid and entry["account_sid"] == ACCOUNT
    assert entry["connector"] == "Busy Recorder ü"
    assert entry["sip_call_id"]  # the INVITE's Call-ID, to find the dialog in a capture
    # Fields are top-level keys, not only inside the text.
    assert set(entry) >= {"time", "level", "logger", "message", "account_sid", "call_sid",
                          "siprec_sid", "connector", "sip_call_id"}


def test_json_tracebacks_are_scrubbed_too() -> None:
    import io
    import logging

    from mediafork.daemon import logs

    stream = io.StringIO()
    scrubber = logs.configure("json", "debug", stream)
    scrubber.add(CONNECTOR_SECRET)
    try:
        raise RuntimeError(f"connector said {CONNECTOR_SECRET}")
    except RuntimeError:
        logging.getLogger("mediafork.test").exception("failed")
    finally:
        logs.configure("text", "info")
    [line] = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert "RuntimeError" in entry["exception"] and logs.REDACTED in entry["exception"]
    assert CONNECTOR_SECRET not in line


def test_text_logs_show_fields_after_the_message() -> None:
    import io
    import logging

    from mediafork.daemon import logs

    stream = io.StringIO()
    logs.configure("text", "info", stream)
    try:
        with logs.log_fields(call_sid=call_sid(1), account_sid=ACCOUNT):
            logging.getLogger("mediafork.test").info("hello")
        logging.getLogger("mediafork.test").info("bye")
    finally:
        logs.configure("text", "info")
    first, second = stream.getvalue().splitlines()
    assert first.endswith(f"hello [account_sid={ACCOUNT} call_sid={call_sid(1)}]")
    assert second.endswith("bye")
