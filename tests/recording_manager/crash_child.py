"""Child process for the crash test: records, feeds audio, prints the SIDs, then waits to be
SIGKILLed (no close, no finalisation: whatever reached the disk is all there is).

Usage: python crash_child.py DB STORAGE_DIR CALLBACK_URL
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from manager_stack import ACCOUNT, TOKEN, ToneSender, push_fast

from mediafork.calls import CallHandle
from mediafork.control.forms import RecordingRequest
from mediafork.control.outbox import Outbox
from mediafork.control.sids import new_sid
from mediafork.control.store import AsyncStore, CallRecord
from mediafork.engine import Engine, Track
from mediafork.recording.manager import RecordingManager


async def main(db: Path, storage: Path, callback: str) -> None:
    engine = Engine()
    store = await AsyncStore.open(db)
    outbox = Outbox(store, {ACCOUNT: TOKEN}.get)
    manager = RecordingManager(engine=engine, store=store, outbox=outbox, storage_dir=storage,
                               public_base_url="https://mediafork.example", drain_interval=0.02)
    handles = []
    for _ in range(2):
        sid = new_sid("CA")
        call = engine.add_call(sid, ingress=False, record_slots=8192)
        await store.register_call(CallRecord(sid, ACCOUNT, "sip:a@x", "sip:b@x", {}))
        handles.append(CallHandle(sid, ACCOUNT, call, "sip:a@x", "sip:b@x"))
    request = RecordingRequest(channels="dual", status_callback=callback,
                               status_callback_events=frozenset({"completed", "absent"}))
    with_audio = await manager.create(account_sid=ACCOUNT, call=handles[0], request=request)
    silent = await manager.create(account_sid=ACCOUNT, call=handles[1], request=request)
    push_fast([ToneSender(handles[0].engine_call, Track.INBOUND, 440),
               ToneSender(handles[0].engine_call, Track.OUTBOUND, 1000, ssrc=4)], 2.0)
    await asyncio.sleep(0.5)  # several drains: the audio is fed and (mostly) written
    print(with_audio["sid"], handles[0].call_sid, silent["sid"], handles[1].call_sid, flush=True)
    await asyncio.sleep(60)  # killed long before


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]))
