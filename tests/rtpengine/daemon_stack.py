"""The real daemon (``Daemon``, embedded reference recorder) with a ``[[media_sources]]`` entry
pointing at a real rtpengine, on its own event loop thread, and what the tests ask of it:
``POST /v1/Calls`` with ``media_source``, Siprecs over the Twilio-compatible API, the
recorder's sessions, rtpengine's view of our subscriptions.

Everything binds 127.0.0.1 and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import threading
from pathlib import Path
from typing import Any

import requests

from mediafork.daemon.config import MediaSourceConfig, default_config
from mediafork.daemon.process import Daemon
from mediafork.recorder_api import Connector
from tests.daemon.harness import CallbackSink, wait_until

from .harness import ng_request

API = "/2010-04-01"


class DaemonStack:
    """``Daemon(embedded_recorder=True)`` with one media source named ``rtpengine1``."""

    def __init__(self, tmp_path: Path, ng: tuple[str, int], *, check_interval: float = 0.3,
                 timeout: float = 0.6, max_calls: int | None = None,
                 connectors: dict[str, str] | None = None) -> None:
        """``connectors``: name -> SRS URI for the account (then the embedded recorder's
        ``Default`` and ``Secure`` are not added)."""
        config = default_config(tmp_path / "data")
        if connectors:
            config = dataclasses.replace(config, connectors=tuple(
                Connector(config.accounts[0].sid, name, uri)
                for name, uri in connectors.items()))
        if max_calls is not None:
            config = dataclasses.replace(config, accounts=(dataclasses.replace(
                config.accounts[0], max_calls=max_calls),))
        first = 44000 + secrets.randbelow(40) * 100
        self.source = MediaSourceConfig(name="rtpengine1", kind="rtpengine", ng=ng,
                                        timeout=timeout, retransmit=0.2,
                                        check_interval=check_interval)
        self.config = dataclasses.replace(
            config, api=dataclasses.replace(config.api, port=0),
            sip=dataclasses.replace(config.sip, port=0),
            media=dataclasses.replace(config.media, port_range=(first, first + 99)),
            media_sources=(self.source,))
        account = self.config.accounts[0]
        self.auth = (account.sid, account.auth_token)
        self.account = account.sid
        self.sink = CallbackSink()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.daemon = Daemon(self.config, embedded_recorder=True, recorder_port=0,
                             shutdown_timeout=5.0)
        try:
            self.run(self.daemon.start())
        except BaseException:
            self.close()
            raise

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        try:
            self.run(self.daemon.shutdown())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()
            self.sink.close()

    # -- HTTP -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self.daemon.base_url

    def register(self, call_sid: str, call_id: str, inbound_tag: str = "ta",
                 outbound_tag: str = "tb", **extra: Any) -> requests.Response:
        body = {"call_sid": call_sid, "from": "sip:alice@example.com",
                "to": "sip:bob@example.com",
                "media_source": {"name": "rtpengine1", "call_id": call_id,
                                 "inbound_tag": inbound_tag, "outbound_tag": outbound_tag},
                **extra}
        return requests.post(f"{self.url}/v1/Calls", json=body, auth=self.auth, timeout=10)

    def view(self, call_sid: str) -> requests.Response:
        return requests.get(f"{self.url}/v1/Calls/{call_sid}", auth=self.auth, timeout=5)

    def end(self, call_sid: str) -> requests.Response:
        return requests.delete(f"{self.url}/v1/Calls/{call_sid}", auth=self.auth, timeout=10)

    def start_siprec(self, call_sid: str, name: str, connector: str = "Secure",
                     track: str = "both_tracks") -> requests.Response:
        return requests.post(
            f"{self.url}{API}/Accounts/{self.account}/Calls/{call_sid}/Siprec.json",
            data={"Name": name, "ConnectorName": connector, "Track": track,
                  "StatusCallback": self.sink.url}, auth=self.auth, timeout=15)

    def stop_siprec(self, call_sid: str, name: str) -> requests.Response:
        return requests.post(
            f"{self.url}{API}/Accounts/{self.account}/Calls/{call_sid}/Siprec/{name}.json",
            data={"Status": "stopped"}, auth=self.auth, timeout=15)

    def wait_event(self, siprec_sid: str, event: str, timeout: float = 10.0
                   ) -> dict[str, str]:
        def found() -> dict[str, str] | None:
            for form in list(self.sink.received):
                if form.get("SiprecSid") == siprec_sid and form.get("SiprecEvent") == event:
                    return form
            return None

        return wait_until(found, timeout, f"{event} for {siprec_sid}")

    def received(self, call_sid: str) -> dict[str, int]:
        """Ingress packets accepted per track so far."""
        counters = self.view(call_sid).json()["counters"]
        return {track: c["received"] for track, c in counters.items()}

    def sessions(self) -> list[dict[str, Any]]:
        async def read() -> list[dict[str, Any]]:
            return [s.summary() for s in self.daemon.recorder.sessions]

        return self.run(read())


def our_subscriptions(ng: tuple[str, int], call_id: str) -> set[str]:
    """The subscriber tags rtpengine lists for the call's two parties (ours are
    ``mediafork-…``); empty when the call has none (or is gone)."""
    reply = ng_request(ng, {"command": "query", "call-id": call_id})
    found: set[str] = set()
    for party in (reply.get("tags") or {}).values():
        for subscriber in party.get("subscribers") or []:
            if str(subscriber.get("tag", "")).startswith("mediafork-"):
                found.add(subscriber["tag"])
    return found



def error_of(response: requests.Response) -> tuple[int, int]:
    """An API error's HTTP status and mediafork code."""
    return response.status_code, response.json().get("code", 0)
