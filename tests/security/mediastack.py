"""The real daemon, in this process, on a small media port range, with one reference recorder:
for the suites that count the daemon's media sockets (release) and check whose packets reach
a recording (latching). In-process so that a test can disable the garbage collector and count
``/proc/self/fd`` and ``Engine.open_media_sockets()`` directly.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from mediafork.daemon.config import load_config
from mediafork.daemon.process import Daemon
from mediafork.srs.server import ReferenceRecorder

ACCOUNT = "AC" + "e5" * 16
TOKEN = "media-stack-token-" + "q7" * 8
API = "/2010-04-01"

CONFIG = """
[api]
listen = "127.0.0.1:0"
[storage]
path = "data/mediafork.db"
[media]
address = "127.0.0.1"
port_range = [{first}, {last}]
{media_extra}
[[accounts]]
sid = "{account}"
auth_token = "{token}"
[[connectors]]
account_sid = "{account}"
unique_name = "Default"
srs = "{srs}"
[sip]
port = 0
"""


def small_port_range(size: int = 40) -> tuple[int, int]:
    """``size`` ports below the kernel's ephemeral range, apart from the other suites'
    windows (the engine skips a port someone else holds anyway)."""
    first = 12000 + secrets.randbelow(7000 // size) * size
    return first, first + size - 1


@dataclass
class MediaStack:
    daemon: Daemon
    recorder: ReferenceRecorder
    http: aiohttp.ClientSession
    port_range: tuple[int, int]

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        auth = base64.b64encode(f"{ACCOUNT}:{TOKEN}".encode()).decode()
        async with self.http.request(method, self.daemon.base_url + path,
                                     headers={"Authorization": "Basic " + auth},
                                     **kwargs) as response:
            body = await response.json() if response.content_type == "application/json" \
                else await response.text()
            return response.status, body

    async def register(self, **extra: Any) -> dict[str, Any]:
        status, view = await self.request("POST", "/v1/Calls", json={
            "call_sid": "CA" + secrets.token_hex(16), "from": "sip:+15551230000@pbx.example",
            "to": "sip:+15559870000@pbx.example",
            "codec": {"name": "PCMU", "payload_type": 0, "clock_rate": 8000}, **extra})
        assert status == 201, view
        return view

    async def start_siprec(self, call_sid: str, track: str = "both_tracks"
                           ) -> tuple[int, Any]:
        return await self.request(
            "POST", f"{API}/Accounts/{ACCOUNT}/Calls/{call_sid}/Siprec.json",
            data={"ConnectorName": "Default", "Track": track})

    async def stop_siprec(self, call_sid: str, sid: str) -> tuple[int, Any]:
        return await self.request(
            "POST", f"{API}/Accounts/{ACCOUNT}/Calls/{call_sid}/Siprec/{sid}.json",
            data={"Status": "stopped"})

    async def metric(self, name: str) -> float:
        status, text = await self.request("GET", "/metrics")
        assert status == 200
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        raise KeyError(name)

    async def recorder_summaries(self) -> list[dict[str, Any]]:
        return [s.summary() for s in self.recorder.sessions]


@asynccontextmanager
async def media_stack(folder: Path, *, ports: int = 40, media_extra: str = ""
                      ) -> AsyncIterator[MediaStack]:
    recorder_first = 40000 + secrets.randbelow(25) * 200
    recorder = await ReferenceRecorder(
        host="127.0.0.1", port=0, out_dir=folder / "srs",
        media_ports=(recorder_first, recorder_first + 199)).start()
    first, last = small_port_range(ports)
    (folder / "mediafork.toml").write_text(CONFIG.format(
        first=first, last=last, media_extra=media_extra, account=ACCOUNT, token=TOKEN,
        srs=recorder.uri("udp")))
    daemon = Daemon(load_config(folder / "mediafork.toml"), shutdown_timeout=5.0)
    await daemon.start()
    http = aiohttp.ClientSession()
    try:
        yield MediaStack(daemon, recorder, http, (first, last))
    finally:
        await http.close()
        await daemon.shutdown()
        await recorder.stop()

