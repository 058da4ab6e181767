"""Status flow, callbacks, the store, errors, files, several recordings on one call."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from manager_stack import (
    ACCOUNT,
    BASE_URL,
    OTHER_ACCOUNT,
    TOKEN,
    Stack,
    ToneSender,
    push_fast,
    read_wav,
    spectrum_peak,
)

from mediafork.control.errors import ApiError
from mediafork.control.forms import RecordingUpdate
from mediafork.engine import MAX_FORKS_PER_CALL, Track
from mediafork.recorder_api import CallCodec
from mediafork.recording import ERROR_NO_AUDIO

EVENTS = frozenset({"in-progress", "completed", "absent"})


def test_callbacks_arrive_signed_and_in_order(run, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Stack.opened(tmp_path) as stack:
            call = await stack.new_call()
            body = await stack.create(call, channels="dual", status_callback=stack.callback_url(),
                                      status_callback_events=EVENTS)
            sid = body["sid"]
            senders = [ToneSender(call.engine_call, Track.INBOUND, 440),
                       ToneSender(call.engine_call, Track.OUTBOUND, 1000, ssrc=7)]
            push_fast(senders, 2.0)
            await asyncio.sleep(0.1)
            stopped = await stack.update(call, sid, "stopped")
            assert stopped["status"] == "stopped"
            final = await stack.wait_status(call, sid, ("completed", "absent"))
            assert final["status"] == "completed" and final["duration"] == "2"
            received = await stack.receiver.wait_for(2)
            await asyncio.sleep(0.1)  # nothing else may follow
            assert [c.params["RecordingStatus"] for c in received] == ["in-progress", "completed"]
            assert all(c.signature_ok and c.method == "POST" for c in received)
            done = received[1].params
            assert done == {
                "AccountSid": ACCOUNT,
                "CallSid": call.call_sid,
                "RecordingSid": sid,
                "RecordingUrl": f"{BASE_URL}/2010-04-01/Accounts/{ACCOUNT}/Calls/"
                                f"{call.call_sid}/Recordings/{sid}",
                "RecordingStatus": "completed",
                "RecordingDuration": "2",
                "RecordingChannels": "2",
                "RecordingStartTime": body["start_time"],
                "RecordingSource": "StartCallRecordingAPI",
                "RecordingTrack": "both",
                "ErrorCode": "0",
            }
            assert received[0].params["RecordingDuration"] == "0"
            # The store kept the history, in order: stopped → processing → completed.
            events = await stack.store.events_for(sid)
            assert [e.event for e in events] == ["in-progress", "completed"]

    run(scenario())


def test_only_subscribed_events_are_sent_and_get_works(run_asyncio, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Stack.opened(tmp_path) as stack:
            call = await stack.new_call()
            body = await stack.create(call, status_callback=stack.callback_url("get"),
                                      status_callback_method="GET")  # default: completed only
            ToneSender(call.engine_call, Track.INBOUND, 440).push(25)
            await stack.manager.call_ended(call.call_sid)
            received = await stack.receiver.wait_for(1)
            await asyncio.sleep(0.1)
            assert len(received) == 1
            assert received[0].method == "GET" and received[0].signature_ok
            assert received[0].params["RecordingStatus"] == "completed"
            assert received[0].params["x"] == "1"  # the URL's own query survives
            # The unsubscribed in-progress is stored as history, not sent.
            states = [(e.event, e.delivery_state) for e in
                      await stack.store.events_for(body["sid"])]
            assert states[0] == ("in-progress", "no-callback")

    run_asyncio(scenario())


def test_absent_when_nothing_was_sent(run, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Stack.opened(tmp_path) as stack:
            call = await stack.new_call()
            body = await stack.create(call, status_callback=stack.callback_url(),
                                      status_callback_events=frozenset({"absent"}))
            await asyncio.sleep(0.1)
            await stack.update(call, body["sid"], "stopped")
            final = await stack.wait_status(call, body["sid"], ("completed", "absent"))
            assert final["status"] == "absent" and final["error_code"] == ERROR_NO_AUDIO
            assert final["duration"] == "0"
            assert await stack.manager.wav_path(account_sid=ACCOUNT, call_sid=call.call_sid,
                                                sid=body["sid"]) is None
            (cb,) = await stack.receiver.wait_for(1)
            assert cb.signature_ok and cb.params["RecordingStatus"] == "absent"
            assert cb.params["ErrorCode"] == str(ERROR_NO_AUDIO)
            assert not list((tmp_path / "recordings").rglob("*.wav*"))  # no file left behind

    run(scenario())


def test_status_flow_and_store(run_asyncio, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Stack.opened(tmp_path) as stack:
            call = await stack.new_call()
            body = await stack.create(call)
            sid = body["sid"]
            ToneSender(call.engine_call, Track.INBOUND, 440).push(50)
            assert (await stack.update(call, sid, "paused", "skip"))["status"] == "paused"
            row = await stack.store.get_recording(ACCOUNT, call.call_sid, sid)
            assert row.status == "paused" and row.pause_behavior == "skip"
            # A repeated pause is a no-op (client retries).
            assert (await stack.update(call, sid, "paused", "silence"))["status"] == "paused"
            assert (await stack.update(call, sid, "in-progress"))["status"] == "in-progress"
            assert (await stack.update(call, sid, "in-progress"))["status"] == "in-progress"
            assert (await stack.fetch(call, sid))["duration"] is None
            await stack.manager.call_ended(call.call_sid)
            final = await stack.fetch(call, sid)
            assert final["status"] == "completed" and final["duration"] == "1"
            listing = await stack.manager.list(account_sid=ACCOUNT, call_sid=call.call_sid,
                                               query={})
            assert [r["sid"] for r in listing["recordings"]] == [sid]

    run_asyncio(scenario())


def test_errors(run_asyncio, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Stack.opened(tmp_path) as stack:
            call = await stack.new_call()
            body = await stack.create(call)
            sid = body["sid"]
            m = stack.manager

            async def api_error(coro) -> ApiError:
                with pytest.raises(ApiError) as info:
                    await coro
                return info.value

            # Unknown SID, and another account's view of a real one: the same 404.
            unknown = "RE" + "0" * 32
            for account, rsid in ((ACCOUNT, unknown), (OTHER_ACCOUNT, sid)):
                for coro in (
                    m.fetch(account_sid=account, call_sid=call.call_sid, sid=rsid),
                    m.update(account_sid=account, call_sid=call.call_sid, sid=rsid,
                             update=RecordingUpdate(status="stopped")),
                    m.wav_path(account_sid=account, call_sid=call.call_sid, sid=rsid),
                    m.delete(account_sid=account, call_sid=call.call_sid, sid=rsid),
                ):
                    err = await api_error(coro)
                    assert (err.status, err.code) == (404, 20404)
            # Creating on someone else's call.
            err = await api_error(m.create(account_sid=OTHER_ACCOUNT, call=call,
                                           request=stack_request()))
            assert (err.status, err.code) == (404, 20404)
            # Unsupported codec.
            g722 = await stack.new_call(CallCodec("G722", 9, 8000))
            err = await api_error(stack.create(g722))
            assert (err.status, err.code) == (400, 900001)
            # Resume, pause or stop once finished: invalid transition.
            ToneSender(call.engine_call, Track.INBOUND, 440).push(10)
            await m.call_ended(call.call_sid)
            for status in ("in-progress", "paused", "stopped"):
                err = await api_error(stack.update(call, sid, status))
                assert (err.status, err.code) == (400, 900010)
                assert "completed" in err.message
            # The call has ended: no new recordings (even before the engine call is closed).
            err = await api_error(stack.create(call))
            assert (err.status, err.code) == (400, 900009)
            call.engine_call.close()
            err = await api_error(stack.create(call))
            assert (err.status, err.code) == (400, 900009)
            # After close: 503.
            await m.close()
            other = await stack.new_call()
            err = await api_error(stack.create(other))
            assert (err.status, err.code) == (503, 900503)

    run_asyncio(scenario())


def stack_request():
    from mediafork.control.forms import RecordingRequest

    return RecordingRequest()


def test_delete_removes_file_and_resource(run_asyncio, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Stack.opened(tmp_path) as stack:
            call = await stack.new_call()
            done = (await stack.create(call))["sid"]
            ToneSender(call.engine_call, Track.INBOUND, 440).push(25)
            await asyncio.sleep(0.05)
            await stack.update(call, done, "stopped")
            await stack.wait_status(call, done, ("completed",))
            path = await stack.wav(call, done)
            live = (await stack.create(call))["sid"]  # deleted while recording
            ToneSender(call.engine_call, Track.OUTBOUND, 1000, ssrc=5).push(25)
            await asyncio.sleep(0.05)
            for sid in (done, live):
                await stack.manager.delete(account_sid=ACCOUNT, call_sid=call.call_sid, sid=sid)
                with pytest.raises(ApiError):
                    await stack.fetch(call, sid)
            assert not path.exists()
            assert not list((tmp_path / "recordings").rglob("*.wav*"))
            assert (await stack.manager.list(account_sid=ACCOUNT, call_sid=call.call_sid,
                                             query={}))["recordings"] == []

    run_asyncio(scenario())


def test_recordings_share_the_tap_and_take_no_forked_stream(run_asyncio, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Stack.opened(tmp_path) as stack:
            call = await stack.new_call()
            a = (await stack.create(call, channels="dual"))["sid"]
            b = (await stack.create(call, track="outbound"))["sid"]
            # All four forked streams remain available while recording.
            forks = [call.engine_call.add_fork(Track.INBOUND, drain=True)
                     for _ in range(MAX_FORKS_PER_CALL)]
            assert len(forks) == MAX_FORKS_PER_CALL
            tap = stack.manager._taps[call.call_sid]
            assert tap.tracks == {Track.INBOUND, Track.OUTBOUND} and len(tap.live) == 2
            senders = [ToneSender(call.engine_call, Track.INBOUND, 440),
                       ToneSender(call.engine_call, Track.OUTBOUND, 1000, ssrc=8)]
            push_fast(senders, 1.0)
            await asyncio.sleep(0.1)
            await stack.update(call, a, "stopped")
            await stack.wait_status(call, a, ("completed",))
            # Still one drain task, now feeding only b; the tap narrows to what b needs just
            # after a's completion is stored.
            assert len(tap.live) == 1 and tap.task is not None and not tap.task.done()
            for _ in range(200):
                if tap.tracks == {Track.OUTBOUND}:
                    break
                await asyncio.sleep(0.01)
            assert tap.tracks == {Track.OUTBOUND}
            push_fast(senders, 1.0)
            await stack.manager.call_ended(call.call_sid)
            frames_a, _ = read_wav(await stack.wav(call, a))
            frames_b, _ = read_wav(await stack.wav(call, b))
            assert spectrum_peak(frames_a[:, 0]) == pytest.approx(440, abs=3)
            assert spectrum_peak(frames_a[:, 1]) == pytest.approx(1000, abs=3)
            assert spectrum_peak(frames_b[:, 0]) == pytest.approx(1000, abs=3)
            # Pushed faster than real time, so at the stop the last jitter window (60 ms) was
            # "later" than the stop by the arrival clock and is cut (paced audio: see the
            # pause tests, where nothing sent before the stop is lost).
            assert 8000 - 480 - 160 <= len(frames_a) <= 8000
            assert abs(len(frames_b) - 16000) <= 160
            assert call.call_sid not in stack.manager._taps  # forgotten at call end
            assert not call.engine_call.closed

    run_asyncio(scenario())


def test_close_finishes_everything(run_asyncio, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Stack.opened(tmp_path) as stack:
            calls = [await stack.new_call() for _ in range(3)]
            sids = []
            for call in calls:
                sids.append((await stack.create(call, status_callback=stack.callback_url()))
                            ["sid"])
                ToneSender(call.engine_call, Track.INBOUND, 440).push(10)
            await asyncio.sleep(0.05)
            await stack.manager.close()
            for call, sid in zip(calls, sids, strict=True):
                row = await stack.store.get_recording(ACCOUNT, call.call_sid, sid)
                assert row.status == "completed" and row.duration == 0  # 0.2 s
            received = await stack.receiver.wait_for(3)
            assert sorted(c.params["RecordingSid"] for c in received) == sorted(sids)
            assert all(c.signature_ok for c in received)
            assert TOKEN  # signed with the account's token (checked by the receiver)

    run_asyncio(scenario())


def test_engine_call_closed_without_call_ended(run_asyncio, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Stack.opened(tmp_path) as stack:
            call = await stack.new_call()
            sid = (await stack.create(call))["sid"]
            ToneSender(call.engine_call, Track.INBOUND, 440).push(50)
            await asyncio.sleep(0.1)
            call.engine_call.close()  # the host forgot to tell us
            final = await stack.wait_status(call, sid, ("completed", "absent"))
            assert final["status"] == "completed" and final["duration"] == "1"

    run_asyncio(scenario())


def test_create_while_another_recording_finishes_keeps_its_tracks(run, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Stack.opened(tmp_path) as stack:
            call = await stack.new_call()
            first = (await stack.create(call, track="inbound"))["sid"]
            inbound = ToneSender(call.engine_call, Track.INBOUND, 440)
            outbound = ToneSender(call.engine_call, Track.OUTBOUND, 1000, ssrc=6)
            push_fast([inbound], 0.5)
            await asyncio.sleep(0.05)
            # The first recording's finish narrows the tap while the second one opens.
            _, second = await asyncio.gather(stack.update(call, first, "stopped"),
                                             stack.create(call, track="outbound"))
            await stack.wait_status(call, first, ("completed",))
            tap = stack.manager._taps[call.call_sid]
            for _ in range(200):
                if tap.tracks == {Track.OUTBOUND}:
                    break
                await asyncio.sleep(0.01)
            assert tap.tracks == {Track.OUTBOUND}
            push_fast([inbound, outbound], 1.0)
            await stack.manager.call_ended(call.call_sid)
            frames, _ = read_wav(await stack.wav(call, second["sid"]))
            assert spectrum_peak(frames[:, 0]) == pytest.approx(1000, abs=3)
            assert abs(len(frames) - 8000) <= 160
            page = await stack.manager.list(account_sid=ACCOUNT, call_sid=call.call_sid,
                                            query={"PageSize": "1", "Page": "1"})
            assert [r["sid"] for r in page["recordings"]] == [second["sid"]]
            assert page["previous_page_uri"] and page["next_page_uri"] is None

    run(scenario())
