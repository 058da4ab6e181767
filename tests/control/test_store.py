"""The SQLite store on a real file: CRUD, isolation, migrations, crash recovery."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mediafork.control.sids import new_sid
from mediafork.control.store import (
    ENGINE_RESTARTED,
    ENGINE_RESTARTED_CODE,
    MIGRATIONS,
    SCHEMA_VERSION,
    AsyncStore,
    CallRecord,
    NameTaken,
    RecordingRecord,
    SiprecRecord,
    Store,
    StoreError,
)

ACCOUNT = "AC" + "0123456789abcdef" * 2
OTHER = "AC" + "fedcba9876543210" * 2
CALL = "CA" + "1" * 32
T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def call(call_sid: str = CALL, account: str = ACCOUNT) -> CallRecord:
    return CallRecord(call_sid, account, "sip:+15551230000@pbx.example",
                      "sip:+15559870000@pbx.example",
                      {"name": "PCMU", "payload_type": 0, "clock_rate": 8000},
                      date_created=T0, date_updated=T0)


def siprec(name: str | None = None, *, call_sid: str = CALL, account: str = ACCOUNT,
           track: str = "both_tracks", status: str = "in-progress") -> SiprecRecord:
    return SiprecRecord(
        sid=new_sid("SR"), account_sid=account, call_sid=call_sid, name=name,
        connector_name="Default", track=track, status=status,  # type: ignore[arg-type]
        status_callback="https://user:pw@example.com/cb", status_callback_method="POST",
        parameters=(("Custom1", "Bob"), ("Ünïcode", "välue")), date_created=T0,
        date_updated=T0,
    )


def recording(status: str = "in-progress", call_sid: str = CALL) -> RecordingRecord:
    return RecordingRecord(
        sid=new_sid("RE"), account_sid=ACCOUNT, call_sid=call_sid,
        status=status, channels=2, track="both", trim="do-not-trim",  # type: ignore[arg-type]
        status_callback=None, status_callback_method="POST",
        status_callback_events=("in-progress", "completed"), start_time=T0,
        file_path="/data/rec.wav", date_created=T0, date_updated=T0,
    )


@pytest.fixture
def store(tmp_path: Path):
    with Store(tmp_path / "data" / "mediafork.db") as s:
        yield s


def test_file_is_wal_owner_only_and_at_current_version(tmp_path: Path):
    path = tmp_path / "m.db"
    with Store(path) as s:
        assert s.schema_version == SCHEMA_VERSION == len(MIGRATIONS)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_calls_roundtrip_and_account_isolation(store: Store):
    stored = store.register_call(call())
    assert stored == call()
    assert store.get_call(CALL, account_sid=ACCOUNT) == call()
    assert store.get_call(CALL, account_sid=OTHER) is None
    assert store.get_call("CA" + "9" * 32) is None
    with pytest.raises(StoreError):
        store.register_call(call(account=OTHER))  # same SID, other account: refused
    assert store.get_call(CALL).account_sid == ACCOUNT
    updated = store.update_call_participants(CALL, to_uri="sip:new@x", now=T0 + timedelta(1))
    assert updated.to_uri == "sip:new@x" and updated.from_uri == call().from_uri
    assert store.set_call_state(CALL, "ended").state == "ended"


def test_siprec_roundtrip_by_sid_and_name(store: Store):
    store.register_call(call())
    first = store.create_siprec(siprec("first"))
    unnamed = store.create_siprec(siprec(None, track="inbound_track"))
    assert store.get_siprec(ACCOUNT, CALL, first.sid) == first
    assert store.get_siprec(ACCOUNT, CALL, "first") == first
    assert store.get_siprec(ACCOUNT, CALL, unnamed.sid) == unnamed
    assert store.get_siprec(OTHER, CALL, first.sid) is None  # other account: not found
    assert store.get_siprec(ACCOUNT, "CA" + "2" * 32, first.sid) is None  # other call
    assert store.list_siprecs(ACCOUNT, CALL) == [first, unnamed]
    assert store.list_siprecs(OTHER, CALL) == []
    assert first.parameters == (("Custom1", "Bob"), ("Ünïcode", "välue"))


def test_siprec_names_are_unique_per_call_for_its_lifetime(store: Store):
    store.register_call(call())
    store.register_call(call("CA" + "2" * 32))
    s = store.create_siprec(siprec("dup"))
    store.set_siprec_status(s.sid, "stopped")
    with pytest.raises(NameTaken):
        store.create_siprec(siprec("dup"))
    store.create_siprec(siprec("dup", call_sid="CA" + "2" * 32))  # another call: fine
    store.create_siprec(siprec(None))
    store.create_siprec(siprec(None))  # unnamed ones never clash


def test_siprec_needs_a_registered_call(store: Store):
    with pytest.raises(StoreError):
        store.create_siprec(siprec("orphan"))


def test_siprec_status_update_and_active_list(store: Store):
    store.register_call(call())
    a = store.create_siprec(siprec("a"))
    b = store.create_siprec(siprec("b", track="inbound_track"))
    later = T0 + timedelta(seconds=30)
    stopped = store.set_siprec_status(a.sid, "stopped", error_code=32000,
                                      error_message="recorder said BYE", now=later)
    assert stopped.status == "stopped" and stopped.date_updated == later
    assert (stopped.error_code, stopped.error_message) == (32000, "recorder said BYE")
    assert [s.sid for s in store.active_siprecs(CALL)] == [b.sid]
    assert store.set_siprec_status("SR" + "0" * 32, "stopped") is None


def test_paused_siprecs_are_live_and_a_stop_always_wins(store: Store):
    """``paused`` (pause/resume) counts as live everywhere ``in-progress`` does: the stream
    budget, the dialog kept for a restart, crash reconciliation. Pausing or resuming never
    brings a stopped Siprec back."""
    store.register_call(call())
    a = store.create_siprec(siprec("a"))
    b = store.create_siprec(siprec("b"))
    later = T0 + timedelta(seconds=5)
    paused = store.set_siprec_live_status(a.sid, "paused", now=later)
    assert paused.status == "paused" and paused.date_updated == later
    # Asking again is no change: the date stays.
    assert store.set_siprec_live_status(a.sid, "paused").date_updated == later
    assert [s.sid for s in store.active_siprecs(CALL)] == [a.sid, b.sid]
    store.save_siprec_dialog(a.sid, '{"dialog": "paused"}')
    assert store.set_siprec_live_status(a.sid, "in-progress").status == "in-progress"
    assert store.set_siprec_live_status(a.sid, "paused").status == "paused"
    store.set_siprec_status(b.sid, "stopped")
    assert store.set_siprec_live_status(b.sid, "paused").status == "stopped"
    assert store.set_siprec_live_status(b.sid, "in-progress").status == "stopped"
    assert store.set_siprec_live_status("SR" + "0" * 32, "paused") is None
    report = store.reconcile_after_crash(now=T0 + timedelta(hours=1))
    assert [s.sid for s in report.siprecs] == [a.sid]
    assert report.siprecs[0].status == "stopped"
    assert report.siprecs[0].error_code == ENGINE_RESTARTED_CODE
    assert report.dialogs == ((a.sid, '{"dialog": "paused"}'),)


def test_events_keep_order_and_delivery_state(store: Store):
    store.register_call(call())
    s = store.create_siprec(siprec("a"))
    ids = []
    for name in ["siprec-started", "siprec-stopped"]:
        record = store.add_event(resource_sid=s.sid, account_sid=ACCOUNT, event=name,
                                 url="https://example.com/cb", method="POST",
                                 params=[("SiprecEvent", name), ("From", "sip:é@x")])
        ids.append(record.id)
    assert [e.event for e in store.events_for(s.sid)] == ["siprec-started", "siprec-stopped"]
    assert [e.id for e in store.pending_events()] == ids
    store.set_event_state(ids[0], "delivered")
    assert [e.id for e in store.pending_events()] == [ids[1]]
    assert store.events_for(s.sid)[0].delivery_state == "delivered"
    assert store.events_for(s.sid)[1].params == (("SiprecEvent", "siprec-stopped"),
                                                 ("From", "sip:é@x"))


def test_recordings_roundtrip_update_delete(store: Store):
    store.register_call(call())
    r = store.create_recording(recording())
    assert store.get_recording(ACCOUNT, CALL, r.sid) == r
    assert store.get_recording(OTHER, CALL, r.sid) is None
    done = store.update_recording(r.sid, status="completed", duration=42,
                                  now=T0 + timedelta(minutes=1))
    assert (done.status, done.duration) == ("completed", 42)
    assert done.status_callback_events == ("in-progress", "completed")
    assert store.list_recordings(ACCOUNT, CALL) == [done]
    with pytest.raises(ValueError):
        store.update_recording(r.sid, account_sid=OTHER)
    assert store.delete_recording(r.sid) == done
    assert store.get_recording(ACCOUNT, CALL, r.sid) is None


def test_forward_migration_from_version_1(tmp_path: Path):
    path = tmp_path / "old.db"
    with Store(path, migrations=MIGRATIONS[:1]) as old:
        assert old.schema_version == 1
        old.register_call(call())
        kept = old.create_siprec(siprec("kept"))
    with Store(path) as new:
        assert new.schema_version == SCHEMA_VERSION
        assert new.get_siprec(ACCOUNT, CALL, "kept") == kept  # data survived
        new.create_recording(recording())  # the table added by migration 2 works


def test_newer_schema_is_refused(tmp_path: Path):
    path = tmp_path / "future.db"
    Store(path).close()
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StoreError, match="newer"):
        Store(path)


def test_reconcile_marks_in_progress_stopped_and_returns_unfinished(store: Store):
    store.register_call(call())
    live = store.create_siprec(siprec("live"))
    done = store.create_siprec(siprec("done", status="stopped"))
    rec_live = store.create_recording(recording("in-progress"))
    rec_paused = store.create_recording(recording("paused"))
    store.create_recording(recording("completed"))
    report = store.reconcile_after_crash(now=T0 + timedelta(hours=1))
    assert [s.sid for s in report.siprecs] == [live.sid]
    assert report.siprecs[0].status == "stopped"
    assert report.siprecs[0].error_message == ENGINE_RESTARTED
    assert report.siprecs[0].error_code == ENGINE_RESTARTED_CODE
    assert {r.sid for r in report.recordings} == {rec_live.sid, rec_paused.sid}
    assert [c.call_sid for c in report.calls] == [CALL]
    assert store.get_call(CALL).state == "ended"
    assert store.get_siprec(ACCOUNT, CALL, done.sid).error_message is None
    # running it again finds nothing new to stop
    again = store.reconcile_after_crash()
    assert again.siprecs == () and again.calls == ()


def test_dialogs_of_live_sessions_are_kept_until_stop_and_handed_over_once(store: Store):
    """An established session's dialog is kept while it runs, dropped when it stops, and
    returned by reconciliation exactly once (a second crash does not BYE again)."""
    store.register_call(call())
    live = store.create_siprec(siprec("live"))
    stopped = store.create_siprec(siprec("stopped"))
    finished = store.create_siprec(siprec("finished", status="stopped"))
    store.save_siprec_dialog(live.sid, '{"dialog": "live"}')
    store.save_siprec_dialog(live.sid, '{"dialog": "live, updated"}')  # replaced, not added
    store.save_siprec_dialog(stopped.sid, '{"dialog": "stopped"}')
    store.save_siprec_dialog(finished.sid, '{"dialog": "too late"}')  # already stopped: ignored
    store.set_siprec_status(stopped.sid, "stopped")
    report = store.reconcile_after_crash()
    assert report.dialogs == ((live.sid, '{"dialog": "live, updated"}'),)
    assert store.reconcile_after_crash().dialogs == ()


def test_reopen_after_a_real_crash(tmp_path: Path):
    """A child process writes, then dies by SIGKILL without closing: nothing committed is
    lost, and reconciliation finds the in-progress resources."""
    path = tmp_path / "crash.db"
    script = textwrap.dedent(
        f"""
        import os, signal
        from mediafork.control.store import Store, CallRecord, SiprecRecord, RecordingRecord
        s = Store({str(path)!r})
        s.register_call(CallRecord({CALL!r}, {ACCOUNT!r}, "sip:a", "sip:b", {{}}))
        for n in range(3):
            s.create_siprec(SiprecRecord("SR%032x" % n, {ACCOUNT!r}, {CALL!r}, "s%d" % n,
                            "Default", "inbound_track", "in-progress", None, "POST"))
        s.create_recording(RecordingRecord("RE%032x" % 1, {ACCOUNT!r}, {CALL!r},
                           "in-progress", 1, "both", "do-not-trim", None, "POST",
                           ("completed",)))
        s.set_siprec_status("SR%032x" % 2, "stopped")
        print("written", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == -9, result.stderr
    assert result.stdout.strip() == "written"
    assert Path(f"{path}-wal").exists()  # the crash left the WAL un-checkpointed
    with Store(path) as s:
        report = s.reconcile_after_crash()
        assert sorted(x.name for x in report.siprecs) == ["s0", "s1"]
        assert [r.sid for r in report.recordings] == [f"RE{1:032x}"]
        assert all(x.status == "stopped" for x in s.list_siprecs(ACCOUNT, CALL))
    with Store(path) as s:  # and the reconciliation itself was durable
        assert s.reconcile_after_crash().siprecs == ()


def test_repr_hides_callback_url_and_parameters(store: Store):
    store.register_call(call())
    s = store.create_siprec(siprec("a"))
    assert "pw@" not in repr(s) and "Bob" not in repr(s)


def test_async_store_runs_on_one_thread(tmp_path: Path):
    async def scenario() -> None:
        store = await AsyncStore.open(tmp_path / "a.db")
        try:
            await store.register_call(call())
            created = await asyncio.gather(*(store.create_siprec(siprec(f"n{i}"))
                                             for i in range(20)))
            listed = await store.list_siprecs(ACCOUNT, CALL)
            assert [s.sid for s in listed] == [s.sid for s in created]  # submission order
            got = await store.get_siprec(ACCOUNT, CALL, "n3")
            assert got == replace(created[3])
            with pytest.raises(NameTaken):
                await store.create_siprec(siprec("n3"))
            with pytest.raises(AttributeError):
                store.no_such_method  # noqa: B018
        finally:
            await store.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))
