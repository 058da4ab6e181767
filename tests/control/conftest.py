"""Shared helpers for control-plane tests: an event-loop runner (asyncio and uvloop) and a
real aiohttp callback receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvloop
from aiohttp import web

# The seeds' OpenAPI schemas: shared/ beside the checkout (as CI lays it out), else the
# workplace's copy.
REFERENCE = next((p for p in (
    Path(__file__).resolve().parents[3] / "shared" / "reference",
    Path("/work/shared/reference"),
) if p.is_dir()), Path("/work/shared/reference")) / "twilio_api_v2010_siprec_recording.json"


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """``run(coro, timeout=…)``: run a coroutine to completion on a fresh loop, bounded."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def runner(coro: Coroutine[Any, Any, Any], timeout: float = 20.0) -> Any:
        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(asyncio.wait_for(coro, timeout))

    return runner


@dataclass
class Received:
    path: str
    method: str
    url: str
    """The full URL as an aiohttp server application sees it (``request.url``)."""
    raw_url: str
    """Scheme + Host header + the raw request target, byte for byte."""
    form: dict[str, str]
    query: dict[str, str]
    headers: dict[str, str]
    at: float


@dataclass
class Receiver:
    """A callback receiver on 127.0.0.1 whose behaviour per path is scripted by the test."""

    base: str = ""
    received: list[Received] = field(default_factory=list)
    handlers: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = field(
        default_factory=dict
    )
    _runner: web.AppRunner | None = None
    _event: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # Short shutdown: tests leave handlers blocked on purpose (slow receivers).
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                                     shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        form = dict(await request.post()) if request.method == "POST" else {}
        self.received.append(
            Received(
                path=request.path,
                method=request.method,
                url=str(request.url),
                raw_url=f"{request.scheme}://{request.host}{request.raw_path}",
                form={k: str(v) for k, v in form.items()},
                query=dict(request.query),
                headers=dict(request.headers),
                at=asyncio.get_running_loop().time(),
            )
        )
        self._event.set()
        handler = self.handlers.get(request.path)
        if handler is not None:
            return await handler(request)
        return web.Response(text="<Response/>", content_type="application/xml")

    def on(self, path: str,
           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> None:
        self.handlers[path] = handler

    async def wait_for(self, predicate: Callable[[list[Received]], bool],
                       timeout: float = 5.0) -> None:
        async def poll() -> None:
            while not predicate(self.received):
                self._event.clear()
                await self._event.wait()

        await asyncio.wait_for(poll(), timeout)


@pytest.fixture
def receiver_factory() -> Callable[[], Receiver]:
    return Receiver


def _openapi_to_jsonschema(node: Any) -> Any:
    """OpenAPI 3.0 ``nullable: true`` → JSON Schema ``type: [T, "null"]`` (and enums/refs
    that must accept null too)."""
    if isinstance(node, list):
        return [_openapi_to_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {k: _openapi_to_jsonschema(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable"):
        if "type" in converted:
            converted["type"] = [converted["type"], "null"]
        if "enum" in converted:
            converted["enum"] = [*converted["enum"], None]
        if "$ref" in converted:
            converted = {"anyOf": [{"$ref": converted["$ref"]}, {"type": "null"}]}
    # Formats like date-time-rfc-2822 are not JSON Schema formats; tests check them directly.
    converted.pop("format", None)
    return converted


@pytest.fixture(scope="session")
def reference() -> dict[str, Any]:
    return json.loads(REFERENCE.read_text())


@pytest.fixture(scope="session")
def schema_for(reference: dict[str, Any]) -> Callable[[str], dict[str, Any]]:
    """A JSON Schema for ``#/components/schemas/<name>``, with the components inlined."""
    components = _openapi_to_jsonschema(reference["components"])

    def build(name: str) -> dict[str, Any]:
        return {
            "$ref": f"#/components/schemas/{name}",
            "components": components,
        }

    return build


@pytest.fixture(scope="session")
def response_schema(reference: dict[str, Any]) -> Callable[[str, str, str], dict[str, Any]]:
    """The JSON Schema of a documented response: (path, method, status)."""
    components = _openapi_to_jsonschema(reference["components"])

    def build(path: str, method: str, status: str) -> dict[str, Any]:
        operation = reference["paths"][path][method]
        schema = operation["responses"][status]["content"]["application/json"]["schema"]
        return {**_openapi_to_jsonschema(schema), "components": components}

    return build
