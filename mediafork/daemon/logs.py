"""Logging for the daemon: human-readable or JSON lines, with secrets scrubbed.

Components never log secrets in the first place; the scrubber is a second
line of defence: every secret the daemon loads (auth tokens, connector
credentials, digest passwords) is registered, and any log record containing
one is rewritten with the value replaced before it is formatted.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable

REDACTED = "[redacted]"
_MIN_SECRET = 6  # shorter strings would redact ordinary words


class SecretScrubber(logging.Filter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self.add(*secrets)

    def add(self, *secrets: str | None) -> None:
        for s in secrets:
            if s and len(s) >= _MIN_SECRET:
                self._secrets.add(s)

    def scrub(self, text: str) -> str:
        for s in self._secrets:
            if s in text:
                text = text.replace(s, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self._secrets:
            message = record.getMessage()
            cleaned = self.scrub(message)
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = self.scrub(record.exc_text)
            if cleaned != message:
                record.msg, record.args = cleaned, None
        return True


class BadHttpRequests(logging.Filter):
    """aiohttp logs every request it cannot parse at ERROR with a traceback, so a
    port scan would flood the log. Such records become one WARNING line each
    (no traceback) and are counted for /metrics."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            self.count += 1
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = f"malformed HTTP request refused: {type(exc).__name__}", None
            record.exc_info, record.exc_text = None, None
        return True


BAD_HTTP = BadHttpRequests()
logging.getLogger("aiohttp.server").addFilter(BAD_HTTP)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (+ exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info or record.exc_text:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(fmt: str = "text", level: str = "info", stream=None) -> SecretScrubber:
    """Set up the root logger; returns the scrubber to register secrets with."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    scrubber = SecretScrubber()
    handler.addFilter(scrubber)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return scrubber
