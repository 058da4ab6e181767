"""SQLite store: calls, Siprec and Recording resources, and their callback events.

One file, WAL journal (readers never block the writer; a crash loses at most the
transaction in progress), ``synchronous=NORMAL`` (with WAL: durable at checkpoint, never
corrupt), foreign keys on. Schema changes are forward migrations applied in order at open,
recorded in ``schema_version``; a file written by a newer mediafork is refused rather than
guessed at.

:class:`Store` is blocking and owns one connection; use it from one thread at a time.
:class:`AsyncStore` is the asyncio face: every call runs on one dedicated thread. One
thread rather than ``asyncio.to_thread`` because (a) a sqlite3 connection must not be used
by two threads at once, and to_thread's pool would need a lock around every call anyway;
(b) a single thread serialises writes in submission order, so the events of a resource are
stored in the order the loop produced them; (c) there is never a second writer in the
process to hit ``database is locked``.

Times are stored as ISO 8601 UTC text with microseconds: readable with the sqlite3 shell,
and they sort correctly as text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

from ..private_dirs import make_private_dir
from . import errors
from .timefmt import utcnow

SiprecStatus = Literal["in-progress", "paused", "stopped"]
"""``paused`` is a mediafork extension (pause/resume): still live, like ``in-progress``."""
RecordingStatus = Literal["in-progress", "paused", "stopped", "processing", "completed", "absent"]
DeliveryState = Literal["pending", "delivered", "failed", "dropped", "no-callback"]

RECORDING_UNFINISHED: tuple[RecordingStatus, ...] = ("in-progress", "paused", "stopped",
                                                     "processing")


class StoreError(Exception):
    """The store cannot do what was asked (messages never contain resource contents)."""


class NameTaken(StoreError):
    """The call already has a Siprec with this name."""


class DuplicateSid(StoreError):
    """A resource with this SID exists (an astronomically unlikely SID collision, or a bug)."""


# -- schema ---------------------------------------------------------------------------------

# Each entry moves the schema from version N-1 to N. Never edit a released entry: add one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: calls, Siprec resources, callback events
    (
        """CREATE TABLE calls (
            call_sid TEXT PRIMARY KEY,
            account_sid TEXT NOT NULL,
            from_uri TEXT NOT NULL,
            to_uri TEXT NOT NULL,
            codec TEXT NOT NULL,            -- JSON object
            state TEXT NOT NULL,            -- live | ended
            date_created TEXT NOT NULL,
            date_updated TEXT NOT NULL
        )""",
        "CREATE INDEX calls_account ON calls (account_sid)",
        """CREATE TABLE siprecs (
            sid TEXT PRIMARY KEY,
            account_sid TEXT NOT NULL,
            call_sid TEXT NOT NULL REFERENCES calls (call_sid),
            name TEXT,
            connector_name TEXT NOT NULL,
            track TEXT NOT NULL,
            status TEXT NOT NULL,
            status_callback TEXT,
            status_callback_method TEXT NOT NULL,
            parameters TEXT NOT NULL,       -- JSON list of [name, value]
            error_code INTEGER,
            error_message TEXT,
            date_created TEXT NOT NULL,
            date_updated TEXT NOT NULL
        )""",
        # Names stay reserved for the life of the call, so stop/fetch by name is unambiguous.
        "CREATE UNIQUE INDEX siprecs_call_name ON siprecs (call_sid, name) WHERE name IS NOT NULL",
        "CREATE INDEX siprecs_call ON siprecs (call_sid, date_created)",
        "CREATE INDEX siprecs_status ON siprecs (status)",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,   -- global order = production order
            resource_sid TEXT NOT NULL,
            account_sid TEXT NOT NULL,
            event TEXT NOT NULL,
            url TEXT,
            method TEXT,
            params TEXT NOT NULL,                   -- JSON list of [name, value]
            delivery_state TEXT NOT NULL,
            date_created TEXT NOT NULL,
            date_updated TEXT NOT NULL
        )""",
        "CREATE INDEX events_resource ON events (resource_sid, id)",
        "CREATE INDEX events_state ON events (delivery_state, id)",
    ),
    # 2: Recording resources
    (
        """CREATE TABLE recordings (
            sid TEXT PRIMARY KEY,
            account_sid TEXT NOT NULL,
            call_sid TEXT NOT NULL REFERENCES calls (call_sid),
            status TEXT NOT NULL,
            channels INTEGER NOT NULL,
            track TEXT NOT NULL,
            trim TEXT NOT NULL,
            source TEXT NOT NULL,
            status_callback TEXT,
            status_callback_method TEXT NOT NULL,
            status_callback_events TEXT NOT NULL,   -- space-separated
            pause_behavior TEXT,
            start_time TEXT NOT NULL,
            duration INTEGER,                       -- whole seconds, NULL until finished
            error_code INTEGER,
            price_unit TEXT,
            file_path TEXT,
            date_created TEXT NOT NULL,
            date_updated TEXT NOT NULL
        )""",
        "CREATE INDEX recordings_call ON recordings (call_sid, date_created)",
        "CREATE INDEX recordings_status ON recordings (status)",
    ),
    # 3: the SIP dialog of each established recording session, so that a process started
    # after a crash can BYE the sessions the recorders still hold open
    (
        """CREATE TABLE siprec_dialogs (
            sid TEXT PRIMARY KEY REFERENCES siprecs (sid),
            dialog TEXT NOT NULL            -- JSON from RecordingSession.dialog_record()
        )""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


# -- records --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CallRecord:
    call_sid: str
    account_sid: str
    from_uri: str
    to_uri: str
    codec: dict[str, Any] = field(default_factory=dict, hash=False)
    state: Literal["live", "ended"] = "live"
    date_created: datetime = field(default_factory=utcnow)
    date_updated: datetime = field(default_factory=utcnow)


@dataclass(frozen=True)
class SiprecRecord:
    sid: str
    account_sid: str
    call_sid: str
    name: str | None
    connector_name: str
    track: str
    status: SiprecStatus
    status_callback: str | None
    status_callback_method: str
    parameters: tuple[tuple[str, str], ...] = ()
    error_code: int | None = None
    error_message: str | None = None
    date_created: datetime = field(default_factory=utcnow)
    date_updated: datetime = field(default_factory=utcnow)

    def __repr__(self) -> str:
        # The callback URL may hold credentials and parameters may hold partner tokens.
        return (
            f"SiprecRecord(sid={self.sid!r}, call_sid={self.call_sid!r}, name={self.name!r}, "
            f"status={self.status!r}, track={self.track!r})"
        )


@dataclass(frozen=True)
class RecordingRecord:
    sid: str
    account_sid: str
    call_sid: str
    status: RecordingStatus
    channels: int
    track: str
    trim: str
    status_callback: str | None
    status_callback_method: str
    status_callback_events: tuple[str, ...]
    source: str = "StartCallRecordingAPI"
    pause_behavior: str | None = None
    start_time: datetime = field(default_factory=utcnow)
    duration: int | None = None
    error_code: int | None = None
    price_unit: str | None = None
    file_path: str | None = None
    date_created: datetime = field(default_factory=utcnow)
    date_updated: datetime = field(default_factory=utcnow)

    def __repr__(self) -> str:
        return (
            f"RecordingRecord(sid={self.sid!r}, call_sid={self.call_sid!r}, "
            f"status={self.status!r}, channels={self.channels!r}, track={self.track!r})"
        )


@dataclass(frozen=True)
class EventRecord:
    id: int
    resource_sid: str
    account_sid: str
    event: str
    url: str | None
    method: str | None
    params: tuple[tuple[str, str], ...]
    delivery_state: DeliveryState
    date_created: datetime
    date_updated: datetime

    def __repr__(self) -> str:
        return (
            f"EventRecord(id={self.id}, resource_sid={self.resource_sid!r}, "
            f"event={self.event!r}, delivery_state={self.delivery_state!r})"
        )


@dataclass(frozen=True)
class CrashReport:
    """What :meth:`Store.reconcile_after_crash` found and changed."""

    siprecs: tuple[SiprecRecord, ...]
    """Were in-progress, now stopped: send them ``siprec-error`` ("engine restarted")."""
    recordings: tuple[RecordingRecord, ...]
    """Unfinished (left untouched): finalise each from what reached disk."""
    calls: tuple[CallRecord, ...]
    """Were live, now ended: their media ports died with the old process."""
    dialogs: tuple[tuple[str, str], ...] = ()
    """(Siprec SID, dialog JSON) of the recording sessions that were established: the
    recorders still hold them open until they get a BYE."""


# -- conversions ----------------------------------------------------------------------------


def _ts(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("naive datetime")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _pairs_json(pairs: Sequence[tuple[str, str]]) -> str:
    return json.dumps([list(pair) for pair in pairs], ensure_ascii=False)


def _pairs(text: str) -> tuple[tuple[str, str], ...]:
    return tuple((str(k), str(v)) for k, v in json.loads(text))


def _call(row: sqlite3.Row) -> CallRecord:
    return CallRecord(
        call_sid=row["call_sid"], account_sid=row["account_sid"], from_uri=row["from_uri"],
        to_uri=row["to_uri"], codec=json.loads(row["codec"]), state=row["state"],
        date_created=_dt(row["date_created"]), date_updated=_dt(row["date_updated"]),
    )


def _siprec(row: sqlite3.Row) -> SiprecRecord:
    return SiprecRecord(
        sid=row["sid"], account_sid=row["account_sid"], call_sid=row["call_sid"],
        name=row["name"], connector_name=row["connector_name"], track=row["track"],
        status=row["status"], status_callback=row["status_callback"],
        status_callback_method=row["status_callback_method"],
        parameters=_pairs(row["parameters"]), error_code=row["error_code"],
        error_message=row["error_message"], date_created=_dt(row["date_created"]),
        date_updated=_dt(row["date_updated"]),
    )


def _recording(row: sqlite3.Row) -> RecordingRecord:
    return RecordingRecord(
        sid=row["sid"], account_sid=row["account_sid"], call_sid=row["call_sid"],
        status=row["status"], channels=row["channels"], track=row["track"], trim=row["trim"],
        status_callback=row["status_callback"],
        status_callback_method=row["status_callback_method"],
        status_callback_events=tuple(row["status_callback_events"].split()),
        source=row["source"], pause_behavior=row["pause_behavior"],
        start_time=_dt(row["start_time"]), duration=row["duration"],
        error_code=row["error_code"], price_unit=row["price_unit"], file_path=row["file_path"],
        date_created=_dt(row["date_created"]), date_updated=_dt(row["date_updated"]),
    )


def _event(row: sqlite3.Row) -> EventRecord:
    return EventRecord(
        id=row["id"], resource_sid=row["resource_sid"], account_sid=row["account_sid"],
        event=row["event"], url=row["url"], method=row["method"], params=_pairs(row["params"]),
        delivery_state=row["delivery_state"], date_created=_dt(row["date_created"]),
        date_updated=_dt(row["date_updated"]),
    )


# -- the store ------------------------------------------------------------------------------


class Store:
    """Blocking store over one SQLite file. See the module docstring."""

    def __init__(self, path: str | os.PathLike[str],
                 migrations: Sequence[Sequence[str]] = MIGRATIONS) -> None:
        self.path = Path(path)
        make_private_dir(self.path.parent)
        new_file = not self.path.exists()
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so every multi-statement
        # change is one explicit transaction.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        if new_file:
            # The file holds callback URLs that may embed credentials: owner-only.
            with contextlib.suppress(OSError):
                os.chmod(self.path, 0o600)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        try:
            self._migrate(migrations)
        except BaseException:
            self._db.close()
            raise

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error:
                # A failed COMMIT (disk full, read-only) leaves the transaction open, and
                # every later BEGIN would fail with "within a transaction".
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise

    def _migrate(self, migrations: Sequence[Sequence[str]]) -> None:
        with self._transaction() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                db.execute("INSERT INTO schema_version (version) VALUES (0)")
                current = 0
            else:
                current = int(row["version"])
        if current > len(migrations):
            raise StoreError(
                f"database schema version {current} is newer than this mediafork "
                f"(knows {len(migrations)}); refusing to open it"
            )
        for version in range(current + 1, len(migrations) + 1):
            # One transaction per step: a crash mid-migration leaves the previous version.
            with self._transaction() as db:
                for statement in migrations[version - 1]:
                    db.execute(statement)
                db.execute("UPDATE schema_version SET version = ?", (version,))

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("SELECT version FROM schema_version").fetchone()[0])

    def probe_write(self) -> None:
        """Commit one write that changes nothing; raises when the database cannot take
        writes (read-only file or file system, disk full, I/O error). For readiness."""
        with self._transaction() as db:
            db.execute("UPDATE schema_version SET version = version")

    # -- calls --------------------------------------------------------------------------

    def register_call(self, call: CallRecord) -> CallRecord:
        """Insert or replace a call registered by the host (re-registering refreshes it)."""
        with self._transaction() as db:
            db.execute(
                """INSERT INTO calls (call_sid, account_sid, from_uri, to_uri, codec, state,
                                      date_created, date_updated)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (call_sid) DO UPDATE SET
                     from_uri = excluded.from_uri, to_uri = excluded.to_uri,
                     codec = excluded.codec, state = excluded.state,
                     date_updated = excluded.date_updated
                   WHERE calls.account_sid = excluded.account_sid""",
                (call.call_sid, call.account_sid, call.from_uri, call.to_uri,
                 json.dumps(call.codec), call.state, _ts(call.date_created),
                 _ts(call.date_updated)),
            )
        stored = self.get_call(call.call_sid, account_sid=call.account_sid)
        if stored is None:
            raise StoreError("call SID is registered to another account")
        return stored

    def get_call(self, call_sid: str, *, account_sid: str | None = None) -> CallRecord | None:
        """The call, or None; with *account_sid*, None also when another account owns it."""
        row = self._db.execute("SELECT * FROM calls WHERE call_sid = ?", (call_sid,)).fetchone()
        if row is None or (account_sid is not None and row["account_sid"] != account_sid):
            return None
        return _call(row)

    def set_call_state(self, call_sid: str, state: Literal["live", "ended"],
                       now: datetime | None = None) -> CallRecord | None:
        with self._transaction() as db:
            db.execute("UPDATE calls SET state = ?, date_updated = ? WHERE call_sid = ?",
                       (state, _ts(now or utcnow()), call_sid))
        return self.get_call(call_sid)

    def update_call_participants(self, call_sid: str, *, from_uri: str | None = None,
                                 to_uri: str | None = None,
                                 now: datetime | None = None) -> CallRecord | None:
        with self._transaction() as db:
            db.execute(
                """UPDATE calls SET from_uri = COALESCE(?, from_uri),
                   to_uri = COALESCE(?, to_uri), date_updated = ? WHERE call_sid = ?""",
                (from_uri, to_uri, _ts(now or utcnow()), call_sid),
            )
        return self.get_call(call_sid)

    # -- Siprec -------------------------------------------------------------------------

    def create_siprec(self, siprec: SiprecRecord) -> SiprecRecord:
        """Insert a Siprec; raises NameTaken if the call already has one with its name."""
        try:
            with self._transaction() as db:
                db.execute(
                    """INSERT INTO siprecs (sid, account_sid, call_sid, name, connector_name,
                         track, status, status_callback, status_callback_method, parameters,
                         error_code, error_message, date_created, date_updated)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                    (siprec.sid, siprec.account_sid, siprec.call_sid, siprec.name,
                     siprec.connector_name, siprec.track, siprec.status, siprec.status_callback,
                     siprec.status_callback_method, _pairs_json(siprec.parameters),
                     siprec.error_code, siprec.error_message, _ts(siprec.date_created),
                     _ts(siprec.date_updated)),
                )
        except sqlite3.IntegrityError as exc:
            text = str(exc)
            if "siprecs.call_sid, siprecs.name" in text:
                raise NameTaken("the call already has a Siprec with this name") from None
            if "siprecs.sid" in text:
                raise DuplicateSid("Siprec SID already exists") from None
            if "FOREIGN KEY" in text:
                raise StoreError("the call is not registered") from None
            raise
        return siprec

    def get_siprec(self, account_sid: str, call_sid: str, sid_or_name: str) -> SiprecRecord | None:
        """By SID or by name, only within this account's call (else None → 404)."""
        row = self._db.execute(
            """SELECT * FROM siprecs WHERE account_sid = ? AND call_sid = ?
               AND (sid = ? OR name = ?) ORDER BY sid = ? DESC LIMIT 1""",
            (account_sid, call_sid, sid_or_name, sid_or_name, sid_or_name),
        ).fetchone()
        return None if row is None else _siprec(row)

    def list_siprecs(self, account_sid: str, call_sid: str) -> list[SiprecRecord]:
        rows = self._db.execute(
            """SELECT * FROM siprecs WHERE account_sid = ? AND call_sid = ?
               ORDER BY date_created, rowid""",
            (account_sid, call_sid),
        ).fetchall()
        return [_siprec(row) for row in rows]

    def active_siprecs(self, call_sid: str) -> list[SiprecRecord]:
        """The call's live (in-progress or paused) Siprecs (for the forked-stream budget)."""
        rows = self._db.execute(
            "SELECT * FROM siprecs WHERE call_sid = ? AND status IN ('in-progress', 'paused')"
            " ORDER BY rowid",
            (call_sid,),
        ).fetchall()
        return [_siprec(row) for row in rows]

    def set_siprec_status(self, sid: str, status: SiprecStatus, *,
                          error_code: int | None = None, error_message: str | None = None,
                          now: datetime | None = None) -> SiprecRecord | None:
        """Change status (and error); returns the updated record, None if unknown."""
        with self._transaction() as db:
            db.execute(
                """UPDATE siprecs SET status = ?, error_code = COALESCE(?, error_code),
                   error_message = COALESCE(?, error_message), date_updated = ?
                   WHERE sid = ?""",
                (status, error_code, error_message, _ts(now or utcnow()), sid),
            )
            if status == "stopped":  # the session is over: nothing left to hang up
                db.execute("DELETE FROM siprec_dialogs WHERE sid = ?", (sid,))
            row = db.execute("SELECT * FROM siprecs WHERE sid = ?", (sid,)).fetchone()
        return None if row is None else _siprec(row)

    def set_siprec_live_status(self, sid: str, status: SiprecStatus,
                               now: datetime | None = None) -> SiprecRecord | None:
        """Pause or resume: set ``paused`` / ``in-progress`` only while the Siprec is live
        (a stop that won the race stays). Returns the record as it is now."""
        with self._transaction() as db:
            db.execute(
                """UPDATE siprecs SET status = ?, date_updated = ?
                   WHERE sid = ? AND status IN ('in-progress', 'paused') AND status != ?""",
                (status, _ts(now or utcnow()), sid, status),
            )
            row = db.execute("SELECT * FROM siprecs WHERE sid = ?", (sid,)).fetchone()
        return None if row is None else _siprec(row)

    def save_siprec_dialog(self, sid: str, dialog: str) -> None:
        """Remember an established session's dialog (JSON, no secrets) until it stops."""
        with self._transaction() as db:
            db.execute(
                """INSERT OR REPLACE INTO siprec_dialogs (sid, dialog)
                   SELECT sid, ? FROM siprecs
                   WHERE sid = ? AND status IN ('in-progress', 'paused')""",
                (dialog, sid),
            )

    # -- Recordings -----------------------------------------------------------------------

    def create_recording(self, recording: RecordingRecord) -> RecordingRecord:
        try:
            with self._transaction() as db:
                db.execute(
                    """INSERT INTO recordings (sid, account_sid, call_sid, status, channels,
                         track, trim, source, status_callback, status_callback_method,
                         status_callback_events, pause_behavior, start_time, duration,
                         error_code, price_unit, file_path, date_created, date_updated)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                    (recording.sid, recording.account_sid, recording.call_sid,
                     recording.status, recording.channels, recording.track, recording.trim,
                     recording.source, recording.status_callback,
                     recording.status_callback_method,
                     " ".join(recording.status_callback_events), recording.pause_behavior,
                     _ts(recording.start_time), recording.duration, recording.error_code,
                     recording.price_unit, recording.file_path, _ts(recording.date_created),
                     _ts(recording.date_updated)),
                )
        except sqlite3.IntegrityError as exc:
            if "FOREIGN KEY" in str(exc):
                raise StoreError("the call is not registered") from None
            raise DuplicateSid("Recording SID already exists") from None
        return recording

    def get_recording(self, account_sid: str, call_sid: str, sid: str) -> RecordingRecord | None:
        row = self._db.execute(
            "SELECT * FROM recordings WHERE account_sid = ? AND call_sid = ? AND sid = ?",
            (account_sid, call_sid, sid),
        ).fetchone()
        return None if row is None else _recording(row)

    def find_recording(self, account_sid: str, sid: str) -> RecordingRecord | None:
        """The account's recording by SID alone (the account-level Recordings resource)."""
        row = self._db.execute(
            "SELECT * FROM recordings WHERE account_sid = ? AND sid = ?", (account_sid, sid),
        ).fetchone()
        return None if row is None else _recording(row)

    def list_account_recordings(self, account_sid: str, call_sid: str | None = None
                                ) -> list[RecordingRecord]:
        """Every recording of the account (optionally of one call), newest first, as the
        platform lists them."""
        if call_sid is None:
            rows = self._db.execute(
                "SELECT * FROM recordings WHERE account_sid = ? "
                "ORDER BY date_created DESC, rowid DESC", (account_sid,)).fetchall()
        else:
            rows = self._db.execute(
                "SELECT * FROM recordings WHERE account_sid = ? AND call_sid = ? "
                "ORDER BY date_created DESC, rowid DESC", (account_sid, call_sid)).fetchall()
        return [_recording(row) for row in rows]

    def list_recordings(self, account_sid: str, call_sid: str) -> list[RecordingRecord]:
        rows = self._db.execute(
            """SELECT * FROM recordings WHERE account_sid = ? AND call_sid = ?
               ORDER BY date_created, rowid""",
            (account_sid, call_sid),
        ).fetchall()
        return [_recording(row) for row in rows]

    _RECORDING_MUTABLE = frozenset(
        {"status", "pause_behavior", "duration", "error_code", "price_unit", "file_path"}
    )

    def update_recording(self, sid: str, *, now: datetime | None = None,
                         **changes: Any) -> RecordingRecord | None:
        """Set some of status, pause_behavior, duration, error_code, price_unit, file_path."""
        unknown = set(changes) - self._RECORDING_MUTABLE
        if unknown:
            raise ValueError(f"cannot update recording fields {sorted(unknown)}")
        columns = sorted(changes)
        assignments = ", ".join(f"{column} = ?" for column in columns)
        values = [changes[column] for column in columns]
        with self._transaction() as db:
            if columns:
                db.execute(f"UPDATE recordings SET {assignments}, date_updated = ? WHERE sid = ?",
                           (*values, _ts(now or utcnow()), sid))
            row = db.execute("SELECT * FROM recordings WHERE sid = ?", (sid,)).fetchone()
        return None if row is None else _recording(row)

    def delete_recording(self, sid: str) -> RecordingRecord | None:
        """Delete the row and return it, so the caller can remove the file."""
        with self._transaction() as db:
            row = db.execute("SELECT * FROM recordings WHERE sid = ?", (sid,)).fetchone()
            db.execute("DELETE FROM recordings WHERE sid = ?", (sid,))
        return None if row is None else _recording(row)

    # -- events -------------------------------------------------------------------------

    def add_event(self, *, resource_sid: str, account_sid: str, event: str, url: str | None,
                  method: str | None, params: Sequence[tuple[str, str]],
                  delivery_state: DeliveryState = "pending",
                  now: datetime | None = None) -> EventRecord:
        """Append an event; its id gives the order. Events of resources without a callback
        URL are stored too (state ``no-callback``): they are the resource's history."""
        stamp = _ts(now or utcnow())
        with self._transaction() as db:
            cursor = db.execute(
                """INSERT INTO events (resource_sid, account_sid, event, url, method, params,
                     delivery_state, date_created, date_updated)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (resource_sid, account_sid, event, url, method, _pairs_json(params),
                 delivery_state, stamp, stamp),
            )
            row = db.execute("SELECT * FROM events WHERE id = ?", (cursor.lastrowid,)).fetchone()
        return _event(row)

    def set_event_state(self, event_id: int, state: DeliveryState,
                        now: datetime | None = None) -> None:
        with self._transaction() as db:
            db.execute("UPDATE events SET delivery_state = ?, date_updated = ? WHERE id = ?",
                       (state, _ts(now or utcnow()), event_id))

    def events_for(self, resource_sid: str) -> list[EventRecord]:
        rows = self._db.execute(
            "SELECT * FROM events WHERE resource_sid = ? ORDER BY id", (resource_sid,)
        ).fetchall()
        return [_event(row) for row in rows]

    def account_events(self, account_sid: str, states: Sequence[DeliveryState],
                       limit: int = 100) -> list[EventRecord]:
        """The account's events in *states*, newest first (the callbacks view)."""
        marks = ", ".join("?" for _ in states)
        rows = self._db.execute(
            f"SELECT * FROM events WHERE account_sid = ? AND delivery_state IN ({marks}) "
            "ORDER BY id DESC LIMIT ?", (account_sid, *states, limit)).fetchall()
        return [_event(row) for row in rows]

    def count_events(self, account_sid: str) -> dict[str, int]:
        """The account's events by delivery state."""
        rows = self._db.execute(
            "SELECT delivery_state, COUNT(*) AS n FROM events WHERE account_sid = ? "
            "GROUP BY delivery_state", (account_sid,)).fetchall()
        return {row["delivery_state"]: row["n"] for row in rows}

    def requeue_events(self, account_sid: str, ids: Sequence[int] | None,
                       now: datetime | None = None) -> list[EventRecord]:
        """Mark the account's given-up events (``failed`` or ``dropped``; all of them, or
        those in *ids*) ``pending`` again and return them in production order. Events of
        other accounts, and events in other states, are left alone."""
        stamp = _ts(now or utcnow())
        where = "account_sid = ? AND delivery_state IN ('failed', 'dropped') AND url IS NOT NULL"
        args: list[Any] = [account_sid]
        if ids is not None:
            if not ids:
                return []
            where += f" AND id IN ({', '.join('?' for _ in ids)})"
            args += list(ids)
        with self._transaction() as db:
            rows = db.execute(f"SELECT id FROM events WHERE {where} ORDER BY id", args).fetchall()
            chosen = [row["id"] for row in rows]
            for event_id in chosen:
                db.execute("UPDATE events SET delivery_state = 'pending', date_updated = ? "
                           "WHERE id = ?", (stamp, event_id))
            rows = [db.execute("SELECT * FROM events WHERE id = ?", (i,)).fetchone()
                    for i in chosen]
        return [_event(row) for row in rows]

    def pending_events(self, limit: int = 10_000) -> list[EventRecord]:
        """Undelivered events in production order (to re-enqueue after a restart)."""
        rows = self._db.execute(
            "SELECT * FROM events WHERE delivery_state = 'pending' ORDER BY id LIMIT ?", (limit,)
        ).fetchall()
        return [_event(row) for row in rows]

    # -- crash recovery -----------------------------------------------------------------

    def reconcile_after_crash(self, now: datetime | None = None) -> CrashReport:
        """Run once at start, before serving: settle what the previous process left live.

        In-progress Siprecs become ``stopped`` with the error recorded (their recorder
        sessions died with the process); live calls become ``ended``; unfinished
        recordings are returned untouched for the caller to finalise from the file.
        All in one transaction: a crash during recovery leaves everything to redo.
        """
        stamp = _ts(now or utcnow())
        with self._transaction() as db:
            siprec_rows = db.execute(
                "SELECT sid FROM siprecs WHERE status IN ('in-progress', 'paused') ORDER BY rowid"
            ).fetchall()
            dialogs = tuple(
                (r["sid"], r["dialog"]) for r in db.execute(
                    """SELECT d.sid, d.dialog FROM siprec_dialogs d JOIN siprecs s USING (sid)
                       WHERE s.status IN ('in-progress', 'paused') ORDER BY s.rowid"""
                ).fetchall()
            )
            # Handed to the caller once: a second crash before the BYEs went out leaves
            # the recorders to their own timeouts rather than BYE-ing again and again.
            db.execute("DELETE FROM siprec_dialogs")
            db.execute(
                """UPDATE siprecs SET status = 'stopped', error_code = ?, error_message = ?,
                   date_updated = ? WHERE status IN ('in-progress', 'paused')""",
                (ENGINE_RESTARTED_CODE, ENGINE_RESTARTED, stamp),
            )
            call_rows = db.execute(
                "SELECT call_sid FROM calls WHERE state = 'live' ORDER BY rowid"
            ).fetchall()
            db.execute("UPDATE calls SET state = 'ended', date_updated = ? WHERE state = 'live'",
                       (stamp,))
            siprecs = tuple(
                _siprec(db.execute("SELECT * FROM siprecs WHERE sid = ?", (r["sid"],)).fetchone())
                for r in siprec_rows
            )
            calls = tuple(
                _call(db.execute("SELECT * FROM calls WHERE call_sid = ?",
                                 (r["call_sid"],)).fetchone())
                for r in call_rows
            )
            placeholders = ", ".join("?" for _ in RECORDING_UNFINISHED)
            recordings = tuple(
                _recording(r) for r in db.execute(
                    f"SELECT * FROM recordings WHERE status IN ({placeholders}) ORDER BY rowid",
                    RECORDING_UNFINISHED,
                ).fetchall()
            )
        return CrashReport(siprecs=siprecs, recordings=recordings, calls=calls, dialogs=dialogs)


# The error given to Siprecs the previous process left in progress.
ENGINE_RESTARTED = "engine restarted"
ENGINE_RESTARTED_CODE = errors.ENGINE_RESTARTED.code


# -- asyncio face ---------------------------------------------------------------------------

P = ParamSpec("P")
T = TypeVar("T")


class AsyncStore:
    """Runs every :class:`Store` call on one dedicated thread (see the module docstring).

    ``await AsyncStore.open(path)``; then ``await store.get_siprec(...)`` etc.: every public
    method of :class:`Store` is available as a coroutine.
    """

    def __init__(self, store: Store, executor: ThreadPoolExecutor) -> None:
        self._store = store
        self._executor = executor

    @classmethod
    async def open(cls, path: str | os.PathLike[str]) -> AsyncStore:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mediafork-store")
        loop = asyncio.get_running_loop()
        try:
            store = await loop.run_in_executor(executor, Store, path)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(store, executor)

    def __repr__(self) -> str:
        return f"AsyncStore({self._store!r})"

    async def run(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(function, *args, **kwargs))

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        method = getattr(self._store, name)
        if not callable(method):
            raise AttributeError(name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await self.run(method, *args, **kwargs)

        call.__name__ = name
        return call

    async def close(self) -> None:
        try:
            await self.run(self._store.close)
        finally:
            self._executor.shutdown(wait=True)


__all__ = [
    "ENGINE_RESTARTED",
    "ENGINE_RESTARTED_CODE",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "AsyncStore",
    "CallRecord",
    "CrashReport",
    "DuplicateSid",
    "EventRecord",
    "NameTaken",
    "RecordingRecord",
    "SiprecRecord",
    "Store",
    "StoreError",
]
