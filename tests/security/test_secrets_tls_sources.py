"""Secrets at rest and in flight, TLS verification of ``sips:`` recorders, ingress source
filtering.

The stack (tests/badinput/mfstack.py) configures every account token and connector secret as
a Fernet ``*_encrypted`` value with a key file, and the reference recorder *requires* the
credentials header and the digest password: a session that starts proves the decrypted
values reached the wire. Then the plaintext must be nowhere else: not in the SQLite files,
the logs (every record at DEBUG, before the daemon's scrubber), any API response, /metrics,
callback requests, error messages, or the traceback of an internal error.
"""

from __future__ import annotations

import asyncio
import base64
import re
import socket
import struct
from pathlib import Path

import pytest
from mfstack import ACCOUNT_A, ACCOUNT_B, API, Stack, run, with_stack

from mediafork.daemon.config import ConfigError, load_config

_CRYPTO = re.compile(rb"a=crypto:\d+ [A-Z0-9_]+ inline:([A-Za-z0-9+/=]+)")


def _leaks(blob: bytes, plaintexts: list[str]) -> list[str]:
    """Which secrets occur in *blob*: as text, and as the base64 a Basic header would carry."""
    found = []
    for secret in plaintexts:
        forms = {secret.encode(), base64.b64encode(secret.encode())}
        if any(form in blob for form in forms):
            found.append(secret[:6] + "…")
    return found


def test_encrypted_connector_credentials_work_and_never_leak(tmp_path: Path) -> None:
    async def scenario(stack: Stack) -> None:
        sec = stack.secrets
        # Works end to end: UDP and TLS connectors, both accounts, with encrypted secrets.
        await stack.fresh_call_works(ACCOUNT_A, "Default")
        await stack.fresh_call_works(ACCOUNT_A, "Secure")
        await stack.fresh_call_works(ACCOUNT_B, "Default")
        assert all(s.summary()["ended_by"] == "src" for s in stack.recorder.sessions)

        # Every kind of response: resources, lists, errors, 401s, 404s, /metrics.
        view = await stack.register()
        call_sid = view["call_sid"]
        siprec = await stack.start_siprec(ACCOUNT_A, call_sid)
        base = f"{API}/Accounts/{ACCOUNT_A}/Calls/{call_sid}"
        for method, path, data in [
            ("GET", f"{base}/Siprec.json", None), ("GET", f"{base}/Siprec/{siprec}.json", None),
            ("GET", f"/v1/Calls/{call_sid}", None), ("GET", "/v1/Calls", None),
            ("POST", f"{base}/Siprec.json", {"ConnectorName": "Nope"}),
            ("POST", f"{base}/Siprec.json", {"Track": "bogus"}),
            ("POST", f"{base}.json", {"Twiml": "<Response><Start><Siprec connectorName="
                                               '"Default" name="t"/></Start></Response>'}),
            ("GET", "/metrics", None), ("GET", "/healthz", None), ("GET", "/readyz", None),
        ]:
            status, _, _ = await stack.request(method, path, data=data)
            assert status < 500, (method, path, status)
        await stack.request("GET", "/v1/Calls", ACCOUNT_A, headers=stack.auth(ACCOUNT_A, "bad"))
        await stack.receiver.wait_event(siprec, "siprec-started")

        # An internal error: its traceback is logged; the client gets no detail.
        service = stack.daemon.service
        assert service is not None
        original = service.list_calls

        async def broken(account_sid: str) -> dict[str, object]:
            raise RuntimeError(f"simulated crash while holding {service.config.connectors!r}")

        service.list_calls = broken  # type: ignore[method-assign]
        try:
            status, body, _ = await stack.request("GET", "/v1/Calls")
        finally:
            service.list_calls = original  # type: ignore[method-assign]
        assert status == 500 and body["message"] == "internal server error"
        assert any("simulated crash" in line for line in stack.logs.lines)

        status, _, _ = await stack.request("DELETE", f"/v1/Calls/{call_sid}")
        assert status == 204
        await stack.receiver.wait_event(siprec, "siprec-stopped")
        metrics = (await stack.metrics()).encode()
        await asyncio.sleep(0.2)  # let the store flush what the last calls wrote

        plaintexts = [sec.credentials, sec.digest_password, sec.token_a, sec.token_b]
        data_dir = stack.daemon.config.storage.path.parent
        stored = b"".join(p.read_bytes() for p in data_dir.rglob("*")
                          if p.is_file() and not p.is_socket())
        assert stack.daemon.config.storage.path.stat().st_size > 0
        assert not _leaks(stored, plaintexts), "secret in the data directory (SQLite, files)"
        assert not _leaks(stack.logs.text().encode(), plaintexts), "secret in a log record"
        assert not _leaks(b"\n".join(stack.responses), plaintexts), "secret in a response"
        assert not _leaks(metrics, plaintexts), "secret in /metrics"
        assert not _leaks(b"\n".join(stack.receiver.raw), plaintexts), "secret in a callback"
        config_text = (stack.folder / "mediafork.toml").read_bytes()
        assert not _leaks(config_text, plaintexts), "the config file holds only ciphertext"
        # reprs are what crash dumps and debuggers show.
        assert not _leaks(repr(stack.daemon.config).encode(), plaintexts)

        # A wrong key: the error names the key path, never the value or the plaintext.
        (stack.folder / "secrets.key").write_bytes(b"A" * 43 + b"=")
        with pytest.raises(ConfigError) as info:
            load_config(stack.folder / "mediafork.toml")
        assert "accounts[0].auth_token_encrypted" in str(info.value)
        assert not _leaks(str(info.value).encode() + config_text, plaintexts[:2])

    run(with_stack(tmp_path, scenario), timeout=60)


def test_srtp_keys_never_logged(tmp_path: Path) -> None:
    """A secure session with every logger at DEBUG: the SDES keys of both sides (read from
    the INVITE and the answer on the wire) appear in no log record."""

    async def scenario(stack: Stack) -> None:
        wire: list[bytes] = []
        assert stack.daemon.links is not None
        stack.daemon.links.transport.tap = lambda _d, _t, _l, _p, data: wire.append(data)
        view = await stack.register()
        sid = await stack.start_siprec(ACCOUNT_A, view["call_sid"], "Secure")
        keys = {m for data in wire for m in _CRYPTO.findall(data)}
        assert len(keys) >= 3, "expected our offered keys and the recorder's answer keys"
        await stack.request("DELETE", f"/v1/Calls/{view['call_sid']}")
        await stack.receiver.wait_event(sid, "siprec-stopped")
        text = stack.logs.text().encode()
        # Debug logging really was on for mediafork's own loggers during the session.
        assert any(r.levelname == "DEBUG" and r.name.startswith("mediafork")
                   for r in stack.logs.records)
        leaked = [k for k in keys if k in text or base64.b64decode(k).hex().encode() in text]
        assert not leaked, "SRTP master key in the logs"

    run(with_stack(tmp_path, scenario), timeout=60)


def test_sips_recorder_with_untrusted_certificate_fails_clearly(tmp_path: Path) -> None:
    """[sip.tls] ca_file names a CA that did not sign the recorder's certificate: the Siprec
    fails with siprec-error saying why; the UDP connector keeps working."""

    async def scenario(stack: Stack) -> None:
        view = await stack.register()
        status, created, raw = await stack.request(
            "POST", f"{API}/Accounts/{ACCOUNT_A}/Calls/{view['call_sid']}/Siprec.json",
            data={"ConnectorName": "Secure", "StatusCallback": stack.receiver.url})
        assert status == 201, raw
        sid = created["sid"]
        await stack.receiver.wait_event(sid, "siprec-error", timeout=20)
        error = next(c for c in stack.receiver.received if c.get("SiprecSid") == sid
                     and c.get("SiprecEvent") == "siprec-error")
        assert "siprec-started" not in stack.receiver.events(sid)
        # The application is told why, in the callback itself (and the log says it too).
        assert error["SiprecErrorCode"] == "900030"
        assert "TLS failure: CERTIFICATE_VERIFY_FAILED" in error["SiprecError"], error
        assert any("CERTIFICATE_VERIFY_FAILED" in line for line in stack.logs.lines)
        assert not any(s.summary().get("transport") == "tls" for s in stack.recorder.sessions)
        await stack.fresh_call_works(ACCOUNT_A, "Default")

    run(with_stack(tmp_path, scenario, trusted_ca=False), timeout=60)


def test_ingress_source_filtering(tmp_path: Path) -> None:
    """``sources``: RTP from the named address is forwarded; from elsewhere counted and
    dropped (loopback has the whole 127/8, so two local source addresses are real)."""

    async def scenario(stack: Stack) -> None:
        view = await stack.register(sources={"inbound": "127.0.0.2"})
        await stack.start_siprec(ACCOUNT_A, view["call_sid"], track="inbound_track")
        ingress = view["ingress"]["inbound"]
        packet = struct.pack("!BBHII", 0x80, 0, 1, 160, 0x4242) + b"\xff" * 160
        for source, count in (("127.0.0.1", 30), ("127.0.0.2", 20)):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((source, 0))
            for i in range(count):
                sock.sendto(packet[:2] + struct.pack("!H", i) + packet[4:],
                            (ingress["address"], ingress["port"]))
            sock.close()
        deadline = asyncio.get_running_loop().time() + 5
        while True:
            _, live, _ = await stack.request("GET", f"/v1/Calls/{view['call_sid']}")
            counters = live["counters"]["inbound"]
            if counters["received"] >= 20 and counters["source_rejected"] >= 30:
                break
            assert asyncio.get_running_loop().time() < deadline, counters
            await asyncio.sleep(0.05)
        assert counters["received"] == 20 and counters["source_rejected"] == 30
        assert sum(f["counters"]["forwarded"] for f in live["forks"]) == 20
        metrics = await stack.metrics()
        assert 'mediafork_packets_dropped_total{reason="source_rejected"} 30.0' in metrics
        status, body, _ = await stack.request(
            "POST", "/v1/Calls", json={"call_sid": "CA" + "7" * 32,
                                       "sources": {"inbound": "not-an-ip"}})
        assert status == 400 and "sources" in body["message"]

    run(with_stack(tmp_path, scenario), timeout=60)
