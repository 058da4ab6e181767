"""Status callbacks cannot be aimed at the metadata service, at mediafork itself or at any
address the operator denied (blind SSRF), and never carry URL credentials.

Real daemon in-process (tests/badinput/mfstack.py), real recorder, real callback receivers on
127.0.0.1 / 127.0.0.2, real SQLite file.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from xml.sax.saxutils import quoteattr

from mfstack import ACCOUNT_A, API, Receiver, Stack, metric, run, with_stack

PASSWORD = "cb-url-password-7f3a91"
QUERY_SECRET = "query-secret-55be0c"


async def _create_everything(stack: Stack, url: str) -> list[tuple[int, dict, bytes]]:
    """A fresh call, then a Siprec (REST), a Siprec (TwiML) and a Recording, each with *url*
    as its status callback; the three answers."""
    call_sid = (await stack.register())["call_sid"]
    base = f"{API}/Accounts/{ACCOUNT_A}/Calls/{call_sid}"
    answers = [
        await stack.request("POST", f"{base}/Siprec.json",
                            data={"Name": "rest", "StatusCallback": url}),
        await stack.request("POST", f"{base}.json", data={"Twiml": (
            f"<Response><Start><Siprec name=\"twiml\" statusCallback={quoteattr(url)}/>"
            "</Start><Pause length=\"60\"/></Response>")}),
        await stack.request("POST", f"{base}/Recordings.json",
                            data={"RecordingStatusCallback": url}),
    ]
    # Whatever the answers, the call must hold nothing: no Siprec, no fork, no recording.
    status, siprecs, raw = await stack.request("GET", f"{base}/Siprec.json")
    assert status == 200 and siprecs["siprec"] == [], (url, raw)
    status, recordings, raw = await stack.request("GET", f"{base}/Recordings.json")
    assert status == 200 and recordings["recordings"] == [], (url, raw)
    status, view, raw = await stack.request("GET", f"/v1/Calls/{call_sid}")
    assert status == 200 and view["forks"] == [] and view["siprecs"] == [], (url, raw)
    return answers


async def _wait_for_denied(stack: Stack, count: int, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while metric(await stack.metrics(), "mediafork_callbacks_denied_total") < count:
        assert loop.time() < deadline, "the refused delivery was never counted"
        await asyncio.sleep(0.05)


def _stored_bytes(stack: Stack) -> bytes:
    data = stack.folder / "data"
    return b"".join(path.read_bytes() for path in sorted(data.glob("mediafork.db*")))


def test_denied_callback_urls_are_refused_at_create_and_leave_nothing(tmp_path: Path) -> None:
    async def scenario(stack: Stack) -> None:
        api_port = int(stack.base.rsplit(":", 1)[1])
        refused = {
            "http://169.254.169.254/latest/meta-data/iam/security-credentials/": "metadata",
            "http://[::ffff:169.254.169.254]/latest/": "metadata",
            "http://metadata.google.internal/computeMetadata/v1/": "metadata",
            "http://0/": "unspecified",
            # Read as 127.0.0.1 (refused as our API, or for its form where the built-in
            # rules see it first: either way as the address it is).
            f"http://0x7f.1:{api_port}/v1/Calls": "127.0.0.1",
            f"http://2130706433:{api_port}/v1/Calls": "127.0.0.1",
            f"{stack.base}/v1/Calls?Twiml=x": "own listening",
            f"http://127.0.0.1:{stack.sip_port}/": "own listening",
            "http://169.254.1.1/hook": "link-local",
            f"{stack.receiver.url.replace('//', f'//hook:{PASSWORD}@')}?t={QUERY_SECRET}":
                "credentials",
        }
        sessions_before = len(stack.recorder.sessions)
        for url, why in refused.items():
            for status, body, raw in await _create_everything(stack, url):
                assert status == 400, (url, raw)
                assert body["code"] == 21609 and why in body["message"], (url, body)
        assert len(stack.recorder.sessions) == sessions_before  # no INVITE went out
        assert stack.receiver.received == []
        # The URL's password and query reach no response, log line or stored byte.
        for leaked in (PASSWORD.encode(), QUERY_SECRET.encode()):
            assert not any(leaked in raw for raw in stack.responses)
            assert leaked not in stack.logs.text().encode()
            assert leaked not in _stored_bytes(stack)
        # The same daemon still sends allowed callbacks, signed as before.
        await stack.fresh_call_works()

    run(with_stack(tmp_path, scenario))


def test_a_name_that_resolves_to_a_denied_address_gets_nothing_sent(tmp_path: Path) -> None:
    """``localhost`` passes the create-time check (a name), resolves to a denied address at
    delivery: nothing is sent, the refusal is counted and logged without the URL's query."""
    allowed = Receiver()

    async def scenario(stack: Stack) -> None:
        await allowed.start("127.0.0.2")
        try:
            port = stack.receiver.url.rsplit(":", 1)[1].split("/")[0]
            by_name = f"http://localhost:{port}/status?t={QUERY_SECRET}"
            call_sid = (await stack.register())["call_sid"]
            base = f"{API}/Accounts/{ACCOUNT_A}/Calls/{call_sid}"
            status, created, raw = await stack.request(
                "POST", f"{base}/Siprec.json", data={"Name": "n", "StatusCallback": by_name})
            assert status == 201, raw
            await _wait_for_denied(stack, 1)
            assert stack.receiver.received == []  # the receiver on 127.0.0.1 got nothing
            log = stack.logs.text()
            assert "refused by the egress policy" in log and "127.0.0.0/8" in log
            assert QUERY_SECRET not in log
            metrics = await stack.metrics()
            assert metric(metrics, "mediafork_callback_deliveries_total", outcome="failed") == 0
            # The same address as an IP literal is refused at create time.
            status, body, raw = await stack.request(
                "POST", f"{base}/Siprec.json",
                data={"Name": "literal", "StatusCallback": stack.receiver.url})
            assert status == 400 and "deny entry 127.0.0.0/8" in body["message"], raw
            # The explicitly allowed network still gets its callbacks.
            status, created, raw = await stack.request(
                "POST", f"{base}/Siprec.json",
                data={"Name": "allowed", "StatusCallback": allowed.url})
            assert status == 201, raw
            await allowed.wait_event(created["sid"], "siprec-started")
            assert stack.receiver.received == []
        finally:
            await allowed.stop()

    run(with_stack(tmp_path, scenario, callbacks=(
        'deny = ["127.0.0.0/8", "::1/128"]\nallow = ["127.0.0.2/32"]')))
