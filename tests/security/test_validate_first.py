"""Validate, then change: a refused request leaves nothing changed, and only client faults are
4xx (issue 10, item 6).

The real daemon (tests/badinput/mfstack.py): its SQLite file is read back to check the store,
its engine to check the media side, ``/proc/self/fd`` to check descriptors (no garbage collection first:
resources must be released when given up, not when the collector runs).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sqlite3
from pathlib import Path
from typing import Any

from mfstack import ACCOUNT_A, API, Stack, run, with_stack

CALLER = "sip:+15551230000@pbx.example"

BAD_TEXT = {
    # JSON's "\ud800" escape decodes to a lone surrogate: valid JSON, but text that cannot be
    # encoded as UTF-8 (SQLite, SIP and the JSON answer all fail on it).
    "lone surrogate": "sip:\ud800@pbx.example",
    "NUL": "sip:a\x00b@pbx.example",
    "over-long": "sip:" + "a" * 1100 + "@pbx.example",
}


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def stored_call(stack: Stack, call_sid: str) -> dict[str, Any] | None:
    """The call's row, read from the daemon's SQLite file by a connection of our own."""
    uri = f"file:{stack.daemon.config.storage.path}?mode=ro"
    with sqlite3.connect(uri, uri=True) as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM calls WHERE call_sid = ?", (call_sid,)).fetchone()
    return dict(row) if row is not None else None


def test_bad_participants_are_refused_and_change_nothing(tmp_path: Path) -> None:
    async def scenario(stack: Stack) -> None:
        view = await stack.register()
        call_sid = view["call_sid"]
        first = await stack.start_siprec(ACCOUNT_A, call_sid)
        engine = stack.daemon.engine
        assert engine is not None
        ingress = engine.get_call(call_sid).ingress  # type: ignore[union-attr]
        fds = open_fds()
        refused = []
        for label, bad in BAD_TEXT.items():
            for field in ("from", "to"):
                status, body, raw = await stack.request("POST", f"/v1/Calls/{call_sid}",
                                                        json={field: bad})
                assert status == 400 and body["code"] == 900001, (label, field, raw)
                assert field in body["message"]
            # Registering a call with it: refused before any port or row is taken.
            new_sid = "CA" + secrets.token_hex(16)
            status, body, raw = await stack.request("POST", "/v1/Calls", json={
                "call_sid": new_sid, "from": bad, "to": CALLER})
            assert status == 400 and body["code"] == 900001, (label, raw)
            refused.append(new_sid)
        assert open_fds() == fds

        for sid in refused:
            assert engine.get_call(sid) is None
            status, _, _ = await stack.request("GET", f"/v1/Calls/{sid}")
            assert status == 404
            assert stored_call(stack, sid) is None
        # The call is exactly as it was: its view, the account's list, the store, the engine.
        status, got, raw = await stack.request("GET", f"/v1/Calls/{call_sid}")
        assert status == 200, raw
        assert (got["from"], got["to"]) == (view["from"], view["to"])
        status, listing, raw = await stack.request("GET", "/v1/Calls")
        assert status == 200, raw
        [listed] = [c for c in listing["calls"] if c["call_sid"] == call_sid]
        assert listed["from"] == view["from"]
        row = stored_call(stack, call_sid)
        assert row is not None and (row["from_uri"], row["to_uri"]) == (view["from"], view["to"])
        assert engine.get_call(call_sid).ingress == ingress  # type: ignore[union-attr]

        # It still works: a new Siprec starts, and ending the call stops both with
        # siprec-stopped delivered to the callback server.
        second = await stack.start_siprec(ACCOUNT_A, call_sid, track="inbound_track")
        status, _, raw = await stack.request("DELETE", f"/v1/Calls/{call_sid}")
        assert status == 204, raw
        for sid in (first, second):
            await stack.receiver.wait_event(sid, "siprec-stopped")
        assert not [line for line in stack.logs.lines if "UnicodeEncodeError" in line]

    run(with_stack(tmp_path, scenario), timeout=60)


def test_requests_racing_a_registration_get_404_or_success(tmp_path: Path) -> None:
    """GET and POST on a call SID while its ``POST /v1/Calls`` is still running (ports being
    allocated, row being written): the call is not there yet (404) or is (200), never 500."""

    async def scenario(stack: Stack) -> None:
        statuses: list[int] = []
        for _ in range(8):
            call_sid = "CA" + secrets.token_hex(16)
            register = asyncio.ensure_future(stack.request("POST", "/v1/Calls", json={
                "call_sid": call_sid, "from": CALLER, "to": CALLER}))
            probes = []
            for i in range(15):
                probes.append(stack.request("GET", f"/v1/Calls/{call_sid}"))
                probes.append(stack.request("POST", f"/v1/Calls/{call_sid}",
                                            json={"to": f"sip:agent{i}@pbx.example"}))
                probes.append(stack.request(
                    "GET", f"{API}/Accounts/{ACCOUNT_A}/Calls/{call_sid}/Siprec.json"))
            answers = await asyncio.gather(register, *probes)
            assert answers[0][0] == 201, answers[0]
            statuses += [status for status, _, _ in answers[1:]]
            bad = [raw for status, _, raw in answers[1:] if status not in (200, 404)]
            assert not bad, bad
            status, _, _ = await stack.request("DELETE", f"/v1/Calls/{call_sid}")
            assert status == 204
        assert 404 in statuses and 200 in statuses  # both sides of the race were seen
        assert not [r for r in stack.logs.records if r.name == "mediafork.api"
                    and r.levelno >= logging.ERROR]

    run(with_stack(tmp_path, scenario), timeout=60)


def test_an_unexpected_exception_is_a_logged_500(tmp_path: Path) -> None:
    """A ValueError from inside the service is a server bug: 500 without details, logged at
    ERROR with its traceback (it used to be an unlogged 400)."""
    secret = "internal-detail-" + secrets.token_hex(8)

    async def scenario(stack: Stack) -> None:
        view = await stack.register()
        service = stack.daemon.service
        assert service is not None

        async def broken(account_sid: str, call_sid: str) -> dict[str, Any]:
            raise ValueError(f"a bug ({secret})")

        service.call_view = broken  # type: ignore[method-assign]
        status, body, raw = await stack.request("GET", f"/v1/Calls/{view['call_sid']}")
        assert status == 500, raw
        assert body["code"] == 20500 and body["message"] == "internal server error"
        assert secret.encode() not in raw and b"Traceback" not in raw
        [record] = [r for r in stack.logs.records if r.name == "mediafork.api"
                    and r.levelno == logging.ERROR]
        assert record.exc_info is not None and record.exc_info[0] is ValueError
        assert "unhandled error on GET /v1/Calls/" in record.getMessage()
        # Client faults in the body are still 400s, not 500s.
        status, body, _ = await stack.request("POST", "/v1/Calls", data=b"\xff\xfe{",
                                              headers={"Content-Type": "application/json"})
        assert status == 400 and body["code"] == 900015
        status, body, _ = await stack.request(
            "POST", f"{API}/Accounts/{ACCOUNT_A}/Calls/{view['call_sid']}/Siprec.json",
            data=b"Name=a", headers={"Content-Type":
                                     "application/x-www-form-urlencoded; charset=bogus-42"})
        assert status == 400 and body["code"] == 900015

    run(with_stack(tmp_path, scenario), timeout=60)
