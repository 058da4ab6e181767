"""kill -9 a server with Siprecs in progress; a new one on the same store reports them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from harness import ACCOUNT, CALLER, TOKEN, LoopThread, Receiver, Recorders, Server, write_config
from twilio.request_validator import RequestValidator

from mediafork.daemon.config import load_config


def test_kill_9_then_restart(tmp_path: Path, loop_thread: LoopThread, receiver: Receiver,
                             recorders: Recorders) -> None:
    # The child's connectors point at recorders running here, in the test process.
    config_path = write_config(tmp_path, recorders)
    proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "serve_for_crash.py"),
                             str(config_path)], stdout=subprocess.PIPE, text=True)
    first = Server.__new__(Server)  # a client-side view of the child
    try:
        base_url = proc.stdout.readline().strip()  # type: ignore[union-attr]
        assert base_url.startswith("http://"), base_url
        first.base_url = base_url
        call = first.register()
        client = first.client()
        sids = []
        for name in ("r1", "r2"):
            sids.append(client.calls(call["call_sid"]).siprec.create(
                name=name, track="inbound_track",
                status_callback=receiver.base + f"/cb/crash/{name}").sid)
        receiver.wait(lambda _: all(len(receiver.for_sid(s)) == 1 for s in sids))
        # Both sessions are up at the Default connector's recorder, one inbound stream each.
        got = recorders.recorded(recorders.default, call["call_sid"], lambda g: len(g) == 2 and
                                 all(s["state"] == "established" for s in g))
        assert [s["labels"] for s in got] == [["1"], ["1"]]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()  # type: ignore[union-attr]
        first.close_clients()

    second = Server(load_config(config_path), loop_thread)
    try:
        for sid in sids:
            r = second.host("GET", f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{call['call_sid']}"
                                   f"/Siprec/{sid}.json")
            assert r.status_code == 200 and r.json()["status"] == "stopped"
        got = receiver.wait(lambda _: all(
            any(r.params["SiprecEvent"] == "siprec-error" for r in receiver.for_sid(s))
            for s in sids))
        for sid in sids:
            mine = [x for x in got if x.params.get("SiprecSid") == sid]
            # Delivery is at-least-once across a crash: a 'started' whose delivered mark
            # had not reached the disk is sent again, before the error (order is kept).
            events = [x.params["SiprecEvent"] for x in mine]
            deduped = [e for i, e in enumerate(events) if e not in events[:i]]
            assert deduped == ["siprec-started", "siprec-error"], events
            assert events[-1] == "siprec-error"
            mine = [mine[0], mine[-1]]
            assert mine[1].params["SiprecError"] == "engine restarted"
            assert mine[1].params["SiprecErrorCode"] == "900012"
            assert mine[1].params["From"] == CALLER
            assert RequestValidator(TOKEN).validate(mine[1].url, mine[1].params,
                                                    mine[1].signature)
        # the call is gone (its ports died with the process)
        assert second.host("GET", f"/v1/Calls/{call['call_sid']}").status_code == 404
    finally:
        second.close()
