"""Per-account limits, the media-port reserve and the idle-call timeout (issue 10, item 5).

The real daemon of tests/badinput/mfstack.py with two accounts; its TOML is the stack's own
with a few keys added (the ``CONFIG`` template is patched for one test at a time). Nothing is
faked: calls hold real ports, Siprecs reach the reference recorder, callbacks reach a real
HTTP server, the store is the daemon's SQLite file.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import socket
import sqlite3
import struct
import time
from pathlib import Path
from typing import Any

import mfstack
import pytest
from mfstack import ACCOUNT_A, ACCOUNT_B, API, Stack, metric, run, with_stack

from mediafork.daemon.config import ConfigError, parse_config

CALLER = "sip:+15551230000@pbx.example"


def config_with(*, account_a: str = "", media: str = "") -> str:
    """The stack's TOML template with keys added to account A's table and to [media]."""
    text = mfstack.CONFIG
    anchors = {'auth_token_encrypted = "{token_a}"\n': account_a, "[media]\n": media}
    for anchor, extra in anchors.items():
        assert text.count(anchor) == 1, anchor
        text = text.replace(anchor, anchor + extra)
    return text


def stored(stack: Stack, table: str, call_sid: str) -> int:
    """Rows of *table* for the call in the daemon's SQLite file."""
    uri = f"file:{stack.daemon.config.storage.path}?mode=ro"
    with sqlite3.connect(uri, uri=True) as db:
        return int(db.execute(f"SELECT count(*) FROM {table} WHERE call_sid = ?",
                              (call_sid,)).fetchone()[0])


def assert_quota(status: int, body: dict[str, Any], limit: str) -> None:
    assert status == 429, body
    assert body["code"] == 900429 and body["status"] == 429, body
    assert body["more_info"].endswith("api-errors.md#900429")
    assert limit in body["message"], body


async def try_register(stack: Stack, account: str) -> tuple[str, int, Any]:
    call_sid = "CA" + secrets.token_hex(16)
    status, body, _ = await stack.request("POST", "/v1/Calls", account, json={
        "call_sid": call_sid, "from": CALLER, "to": CALLER})
    return call_sid, status, body


def siprec_path(account: str, call_sid: str) -> str:
    return f"{API}/Accounts/{account}/Calls/{call_sid}/Siprec.json"


def recordings_path(account: str, call_sid: str) -> str:
    return f"{API}/Accounts/{account}/Calls/{call_sid}/Recordings.json"


def test_limit_keys_defaults_and_bounds() -> None:
    def parse(account: dict[str, Any] | None = None, media: dict[str, Any] | None = None) -> Any:
        return parse_config({"accounts": [{"sid": ACCOUNT_A, "auth_token": "t" * 32,
                                           **(account or {})}],
                             "media": {"port_range": [30000, 30999], **(media or {})}})

    config = parse()
    [account] = config.accounts
    assert (account.max_calls, account.max_siprecs, account.max_recordings) == (2000, 8000, 2000)
    assert config.media.port_capacity == 1000 and config.media.reserved_ports == 100
    assert config.media.call_idle_timeout == 600
    config = parse({"max_calls": 5}, {"port_reserve": 0, "call_idle_timeout": 0})
    assert config.accounts[0].max_calls == 5 and config.media.reserved_ports == 0
    for account, media, where in (
            ({"max_calls": 0}, None, "accounts[0].max_calls"),
            ({"max_siprecs": "10"}, None, "accounts[0].max_siprecs"),
            ({"max_recordings": True}, None, "accounts[0].max_recordings"),
            (None, {"port_reserve": 501}, "media.port_reserve"),
            (None, {"call_idle_timeout": -1}, "media.call_idle_timeout"),
            (None, {"call_idle_timeout": 0.5}, "media.call_idle_timeout")):
        with pytest.raises(ConfigError, match=re.escape(where)):
            parse(account, media)


def test_account_limits_answer_429_change_nothing_and_spare_other_accounts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mfstack, "CONFIG", config_with(
        account_a="max_calls = 3\nmax_siprecs = 2\nmax_recordings = 2\n"))

    async def scenario(stack: Stack) -> None:
        engine = stack.daemon.engine
        assert engine is not None
        # max_calls, with 8 registrations at once: exactly 3 get in (no overshoot), the
        # others take no port and no row, and are not found.
        attempts = await asyncio.gather(*(try_register(stack, ACCOUNT_A) for _ in range(8)))
        calls = [sid for sid, status, _ in attempts if status == 201]
        assert len(calls) == 3, [status for _, status, _ in attempts]
        for extra, status, body in attempts:
            if extra in calls:
                continue
            assert_quota(status, body, "max_calls")
            assert engine.get_call(extra) is None and stored(stack, "calls", extra) == 0
            assert (await stack.request("GET", f"/v1/Calls/{extra}"))[0] == 404

        # max_siprecs, by REST and by TwiML: no row, no fork, nothing at the recorder.
        running = [await stack.start_siprec(ACCOUNT_A, sid) for sid in calls[:2]]
        sessions = len(stack.recorder.sessions)
        forks = sum(len(call.forks) for call in engine.calls)
        status, body, _ = await stack.request("POST", siprec_path(ACCOUNT_A, calls[2]), data={
            "ConnectorName": "Default", "StatusCallback": stack.receiver.url})
        assert_quota(status, body, "max_siprecs")
        status, body, _ = await stack.request(
            "POST", f"{API}/Accounts/{ACCOUNT_A}/Calls/{calls[2]}.json", data={
                "Twiml": '<Response><Start><Siprec connectorName="Default"/></Start></Response>'})
        assert_quota(status, body, "max_siprecs")
        status, listing, _ = await stack.request("GET", siprec_path(ACCOUNT_A, calls[2]))
        assert status == 200 and listing["siprec"] == []
        assert stored(stack, "siprecs", calls[2]) == 0
        await asyncio.sleep(0.3)  # an INVITE sent anyway would have arrived by now
        assert len(stack.recorder.sessions) == sessions
        assert sum(len(call.forks) for call in engine.calls) == forks

        # max_recordings.
        for sid in calls[:2]:
            status, _, raw = await stack.request("POST", recordings_path(ACCOUNT_A, sid))
            assert status == 201, raw
        status, body, _ = await stack.request("POST", recordings_path(ACCOUNT_A, calls[2]))
        assert_quota(status, body, "max_recordings")
        assert stored(stack, "recordings", calls[2]) == 0

        # Account B is not affected by A being at every limit.
        await stack.fresh_call_works(ACCOUNT_B)

        # Live resources, not totals: stopping a Siprec and ending a call make room again.
        status, _, raw = await stack.request(
            "POST", f"{API}/Accounts/{ACCOUNT_A}/Calls/{calls[0]}/Siprec/{running[0]}.json",
            data={"Status": "stopped"})
        assert status == 200, raw
        await stack.receiver.wait_event(running[0], "siprec-stopped")
        await stack.start_siprec(ACCOUNT_A, calls[2])
        assert (await stack.request("DELETE", f"/v1/Calls/{calls[0]}"))[0] == 204
        await stack.register()

        metrics = await stack.metrics()
        assert metric(metrics, "mediafork_quota_rejected_total", reason="max_calls") == 5
        assert metric(metrics, "mediafork_quota_rejected_total", reason="max_siprecs") == 2
        assert metric(metrics, "mediafork_quota_rejected_total", reason="max_recordings") == 1
        warnings = [line for line in stack.logs.lines if "reached its limit" in line]
        assert len(warnings) == 3  # one per limit and minute, not one per refusal

    run(with_stack(tmp_path, scenario), timeout=60)


def test_one_account_cannot_take_the_ports_another_needs(tmp_path: Path) -> None:
    """The stack's media range is 100 ports shared by two accounts: fair share 50, default
    reserve a tenth (10). A registers calls (4 ports each) until refused; B still registers a
    call and starts a both-tracks Siprec (4 + 4 ports)."""

    async def scenario(stack: Stack) -> None:
        first, last = stack.daemon.config.media.port_range
        assert first % 2 == 0 and last - first + 1 == 100
        held = 0
        for _ in range(30):
            call_sid, status, body = await try_register(stack, ACCOUNT_A)
            if status != 201:
                break
            held += 1
        assert_quota(status, body, "port_reserve")
        assert held == 22  # 88 ports; a 23rd call would leave 8 free, under the reserve
        await stack.fresh_call_works(ACCOUNT_B)
        metrics = await stack.metrics()
        assert metric(metrics, "mediafork_quota_rejected_total", reason="port_reserve") == 1

    run(with_stack(tmp_path, scenario), timeout=60)


async def gone(stack: Stack, call_sid: str, timeout: float = 5.0) -> None:
    """Wait until the call is no longer found (its end finishes after siprec-stopped)."""
    deadline = time.monotonic() + timeout
    while (await stack.request("GET", f"/v1/Calls/{call_sid}"))[0] != 404:
        assert time.monotonic() < deadline, f"{call_sid} still there"
        await asyncio.sleep(0.05)


class RtpSender:
    """RTP (PCMU, 20 ms) to a call's inbound ingress port from a socket of our own."""

    def __init__(self, ingress: dict[str, Any]) -> None:
        self.target = (ingress["address"], ingress["port"])
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.task = asyncio.ensure_future(self._send())

    async def _send(self) -> None:
        seq = 0
        while True:
            header = struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160, 0x5151)
            self.sock.sendto(header + b"\xff" * 160, self.target)
            seq += 1
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task
        self.sock.close()


def test_idle_calls_end_as_if_deleted_and_active_calls_stay(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mfstack, "CONFIG", config_with(media="call_idle_timeout = 1\n"))

    async def scenario(stack: Stack) -> None:
        idle = (await stack.register())["call_sid"]
        status, recording, raw = await stack.request("POST", recordings_path(ACCOUNT_A, idle),
                                                     data={"RecordingStatusCallbackEvent":
                                                           "completed absent",
                                                           "RecordingStatusCallback":
                                                           stack.receiver.url})
        assert status == 201, raw
        siprec = await stack.start_siprec(ACCOUNT_A, idle)
        last_request = time.monotonic()
        with_media = await stack.register()
        polled = (await stack.register())["call_sid"]
        sender = RtpSender(with_media["ingress"]["inbound"])

        async def poll() -> None:
            while True:
                status, _, _ = await stack.request("GET", f"/v1/Calls/{polled}")
                assert status == 200
                await asyncio.sleep(0.3)

        poller = asyncio.ensure_future(poll())
        # The idle call ends as DELETE would: siprec-stopped delivered, recording finalised.
        await stack.receiver.wait_event(siprec, "siprec-stopped", timeout=10)
        assert time.monotonic() - last_request >= 0.9
        await gone(stack, idle)
        status, got, _ = await stack.request(
            "GET", f"{API}/Accounts/{ACCOUNT_A}/Calls/{idle}/Recordings/{recording['sid']}.json")
        assert status == 200 and got["status"] == "absent"  # no media: nothing recorded

        # Media, or requests naming the call, keep the others alive for 3 timeouts...
        await asyncio.sleep(3)
        for call_sid in (with_media["call_sid"], polled):
            status, view, _ = await stack.request("GET", f"/v1/Calls/{call_sid}")
            assert status == 200 and view["status"] == "live"
        # ...and only those: once they stop, the calls end too.
        await sender.stop()
        poller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await poller
        deadline = time.monotonic() + 10
        while stack.daemon.service and stack.daemon.service.idle_calls_ended < 3:
            assert time.monotonic() < deadline, "active calls did not end once idle"
            await asyncio.sleep(0.1)
        metrics = await stack.metrics()
        assert metric(metrics, "mediafork_calls_idle_ended_total") == 3

    run(with_stack(tmp_path, scenario), timeout=60)
