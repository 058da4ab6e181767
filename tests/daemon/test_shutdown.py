"""Graceful shutdown: SIGTERM/SIGINT with live recording sessions BYEs each of them (seen at
the recorder), delivers the siprec-stopped callbacks and exits 0 within the bound; while it
drains, /readyz says 503 and /healthz stays 200."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from .harness import (
    CallbackSink,
    DaemonProcess,
    Recorder,
    call_sid,
    send_tones,
    wait_until,
    write_config,
)

# Daemon(shutdown_timeout=10): the service gets 7 s of it, the rest is closing sockets.
# The bound asserted here is that plus process start-up slack, far below a systemd
# TimeoutStopSec of 30 s (docs/systemd/mediafork.service).
SHUTDOWN_BOUND = 12.0


def _start_sessions(daemon: DaemonProcess, sink: CallbackSink, calls: int, per_call: int
                    ) -> tuple[list[str], list[dict[str, tuple[str, int]]]]:
    siprecs: list[str] = []
    ingresses = []
    for c in range(calls):
        sid = call_sid(0x10 + c)
        ingresses.append(daemon.register_call(sid))
        for n in range(per_call):  # both_tracks twice = the four-fork budget of a call
            created = daemon.start_siprec(sid, f"rec{n}", sink.url)
            assert created.status_code == 201, created.text
            siprecs.append(created.json()["sid"])
    wait_until(lambda: all("siprec-started" in sink.events(s) for s in siprecs), 15,
               "siprec-started for every session")
    return siprecs, ingresses


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_byes_every_session_delivers_callbacks_and_exits_0(
        tmp_path: Path, recorder: Recorder, sink: CallbackSink,
        spawn: Callable[..., DaemonProcess], sig: signal.Signals) -> None:
    config = write_config(tmp_path, connectors=[{"unique_name": "Default", "srs": recorder.uri}])
    daemon = spawn(["--config", str(config)]).start()
    siprecs, ingresses = _start_sessions(daemon, sink, calls=2, per_call=2)
    for i, ingress in enumerate(ingresses):
        send_tones(ingress, packets=40, ssrc=0x2000 + 16 * i)
    wait_until(lambda: len(recorder.summaries()) == 4 and all(
        s["totals"]["packets"] > 0 for s in recorder.summaries()), 10,
        "media at every recording session")
    assert all(s["state"] == "established" for s in recorder.summaries())

    began = time.monotonic()
    assert daemon.stop(sig, timeout=SHUTDOWN_BOUND + 10) == 0, daemon.stderr
    elapsed = time.monotonic() - began
    assert elapsed < SHUTDOWN_BOUND, f"shutdown took {elapsed:.1f}s"

    summaries = recorder.summaries()
    assert len(summaries) == 4
    # Every session was hung up by mediafork (the SRC) with a BYE, not by the recorder
    # or a timeout.
    assert [s["ended_by"] for s in summaries] == ["src"] * 4, summaries
    assert all(s["state"] == "ended" for s in summaries)
    # The stopped callbacks were delivered before the process exited.
    for siprec in siprecs:
        assert sink.events(siprec) == ["siprec-started", "siprec-stopped"], siprec


def test_readyz_is_503_while_draining_and_healthz_stays_200(
        tmp_path: Path, recorder: Recorder, spawn: Callable[..., DaemonProcess]) -> None:
    # A slow callback endpoint keeps the daemon draining (it flushes callbacks before it
    # exits) long enough to watch /readyz from outside.
    slow = CallbackSink(delay=1.5)
    try:
        config = write_config(tmp_path,
                              connectors=[{"unique_name": "Default", "srs": recorder.uri}])
        daemon = spawn(["--config", str(config)]).start()
        assert daemon.get("/healthz", auth=None).status_code == 200
        assert daemon.get("/readyz", auth=None).status_code == 200
        [siprec], _ = _start_sessions(daemon, slow, calls=1, per_call=1)

        seen: list[tuple[str, int, str]] = []
        done = threading.Event()

        def probe() -> None:  # poll both endpoints until the process is gone
            # One session, closed at the end: with one-shot requests.get() calls a
            # connection of this poll stayed open until garbage collection (the teardown's
            # descriptor check saw it; a garbage collection released it).
            with requests.Session() as http:
                while not done.is_set():
                    for path in ("/readyz", "/healthz"):
                        try:
                            r = http.get(daemon.base_url + path, timeout=1)
                            seen.append((path, r.status_code, r.json()["status"]))
                        except requests.RequestException:
                            pass
                    time.sleep(0.02)

        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        watcher = threading.Thread(target=probe)
        watcher.start()
        try:
            wait_until(lambda: ("/readyz", 503, "draining") in seen, 5, "/readyz draining")
            # New calls are refused while draining.
            refused = daemon.post_json("/v1/Calls", {"call_sid": call_sid(0x7f)})
            assert refused.status_code == 503, refused.text
            assert daemon.stop(timeout=SHUTDOWN_BOUND + 10) == 0
        finally:
            done.set()
            watcher.join(5)
        assert ("/readyz", 200, "ready") not in seen  # never ready again once draining
        assert {code for path, code, _ in seen if path == "/healthz"} == {200}
        assert slow.events(siprec) == ["siprec-started", "siprec-stopped"]
        assert [s["ended_by"] for s in recorder.summaries()] == ["src"]
    finally:
        slow.close()



def test_callbacks_not_delivered_within_the_bound_are_kept_and_replayed_at_restart(
        tmp_path: Path, recorder: Recorder, spawn: Callable[..., DaemonProcess]) -> None:
    # An application that does not answer: shutdown must not wait for it past its bound,
    # and must not lose the events either.
    hanging = CallbackSink(delay=20.0)
    try:
        config = write_config(tmp_path,
                              connectors=[{"unique_name": "Default", "srs": recorder.uri}])
        daemon = spawn(["--config", str(config)]).start()
        sid = call_sid(0x51)
        daemon.register_call(sid)
        created = daemon.start_siprec(sid, "rec", hanging.url)
        assert created.status_code == 201, created.text
        siprec = created.json()["sid"]
        wait_until(lambda: recorder.summaries() and recorder.summaries()[0]["state"]
                   == "established", 10, "the recording session")
        began = time.monotonic()
        assert daemon.stop(timeout=SHUTDOWN_BOUND + 10) == 0
        assert time.monotonic() - began < SHUTDOWN_BOUND
        assert [s["ended_by"] for s in recorder.summaries()] == ["src"]  # BYE regardless
        assert "siprec-stopped" not in hanging.events(siprec)
        assert "status callbacks not delivered within the shutdown bound" in daemon.stderr

        hanging.delay = 0.0  # the application is back
        again = spawn(["--config", str(config)]).start()
        wait_until(lambda: "siprec-stopped" in hanging.events(siprec), 10,
                   "the stored siprec-stopped, replayed")
        events = hanging.events(siprec)
        # In order, at least once; a graceful stop is not a crash: no "engine restarted".
        assert events[-2:] == ["siprec-started", "siprec-stopped"], events
        assert "siprec-error" not in events
        assert again.stop() == 0
    finally:
        hanging.close()


def test_after_sigkill_the_next_start_reconciles_and_reports_the_interrupted_siprec(
        tmp_path: Path, recorder: Recorder, sink: CallbackSink,
        spawn: Callable[..., DaemonProcess]) -> None:
    config = write_config(tmp_path, connectors=[{"unique_name": "Default", "srs": recorder.uri}])
    daemon = spawn(["--config", str(config)]).start()
    [siprec], _ = _start_sessions(daemon, sink, calls=1, per_call=1)
    sid = call_sid(0x10)  # the call _start_sessions registered
    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL  # no BYE, no callbacks: a crash

    again = spawn(["--config", str(config)]).start()
    wait_until(lambda: "siprec-error" in sink.events(siprec), 10, "the restart's siprec-error")
    error = [c for c in sink.received if c.get("SiprecEvent") == "siprec-error"][-1]
    assert (error["SiprecError"], error["SiprecErrorCode"]) == ("engine restarted", "900012")
    assert "1 Siprecs and 1 calls were interrupted" in again.stderr
    # The call is ended, not live; its CallSid cannot be registered again.
    assert again.get("/v1/Calls").json()["calls"] == []
    assert again.post_json("/v1/Calls", {"call_sid": sid}).status_code == 409
    assert again.stop() == 0
