"""Unparsable HTTP is refused with one WARNING line (no traceback) and counted."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from mediafork.daemon.logs import BAD_HTTP


def test_malformed_http_is_one_line_and_counted(caplog) -> None:
    async def case() -> None:
        app = web.Application()
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        before = BAD_HTTP.count
        for garbage in (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
                        b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(garbage)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(200), 5)
            assert answer.startswith(b"HTTP/1.") and (b" 400 " in answer or b" 414 " in answer)
            writer.close()
        await runner.cleanup()
        assert BAD_HTTP.count - before == 3

    with caplog.at_level(logging.DEBUG, logger="aiohttp.server"):
        asyncio.run(case())
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert records and all(r.levelno == logging.WARNING and not r.exc_info for r in records)
    assert all("malformed HTTP request refused" in r.getMessage() for r in records)
