"""Logging for the daemon: human-readable or JSON lines, with secrets scrubbed.

Components never log secrets in the first place; the scrubber is a second
line of defence: every secret the daemon loads (auth tokens, connector
credentials, digest passwords) is registered, and any log record containing
one is rewritten with the value replaced before it is formatted.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

from pythonjsonlogger import json as jsonlogger

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
                # Formatters that render exc_info afresh (python-json-logger does) would
                # bring the secret back: from here on only the scrubbed text exists.
                record.exc_info = None
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


# -- structured fields ------------------------------------------------------------------------
#
# The resources a log line is about travel as top-level fields rather than inside the message
# text, so that a log pipeline can filter on them. Code sets them for a stretch of work with
# ``log_fields(call_sid=…)`` (a context variable: asyncio tasks started inside inherit them),
# or per call with ``extra={"siprec_sid": …}``.

FIELDS = ("account_sid", "call_sid", "siprec_sid", "recording_sid", "connector", "sip_call_id")
# An immutable empty default: every change sets a new mapping, none is ever mutated.
_fields: ContextVar[Mapping[str, str]] = ContextVar("mediafork_log_fields",
                                                   default=MappingProxyType({}))


@contextmanager
def log_fields(**fields: str | None) -> Iterator[None]:
    """Attach *fields* (names from :data:`FIELDS`; None values are skipped) to every record
    logged in this context, including by tasks created inside it."""
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown log fields {sorted(unknown)}")
    token = _fields.set({**_fields.get(), **{k: v for k, v in fields.items() if v}})
    try:
        yield
    finally:
        _fields.reset(token)


def current_log_fields() -> Mapping[str, str]:
    return _fields.get()


class ContextFields(logging.Filter):
    """Copies the context's fields onto each record (an explicit ``extra=`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _fields.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class JsonFormatter(jsonlogger.JsonFormatter):
    """One JSON object per line: time, level, logger, message, the structured fields that
    apply, and ``exception`` with the traceback. python-json-logger does the encoding."""

    def __init__(self) -> None:
        super().__init__("{asctime}{levelname}{name}{message}", style="{",
                         rename_fields={"asctime": "time", "levelname": "level",
                                        "name": "logger", "exc_info": "exception"},
                         json_ensure_ascii=False)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                + f".{int(record.msecs):03d}Z")

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        log_data["level"] = str(log_data.get("level", "")).lower()
        return log_data


class TextFormatter(logging.Formatter):
    """Human-readable lines; the structured fields follow the message in brackets."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = [f"{name}={getattr(record, name)}" for name in FIELDS
                  if getattr(record, name, None)]
        if not fields:
            return text
        head, newline, rest = text.partition("\n")  # keep a traceback below the fields
        return f"{head} [{' '.join(fields)}]{newline}{rest}"


def configure(fmt: str = "text", level: str = "info", stream=None) -> SecretScrubber:
    """Set up the root logger; returns the scrubber to register secrets with."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFields())
    scrubber = SecretScrubber()
    handler.addFilter(scrubber)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return scrubber
