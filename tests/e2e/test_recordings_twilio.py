"""Local recordings end to end through the daemon, driven by the official
`twilio` client: create (dual), pause with skip, resume, stop, fetch, then
download the WAV over HTTP and hear each tone on its own channel."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import socket
import threading
import time
import wave
from typing import Any

import numpy as np
import pytest
import requests
from fdcheck import DescriptorCheck
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from mediafork.daemon.config import default_config
from mediafork.daemon.process import Daemon
from mediafork.synth import tone_packets


class LocalHttpClient(TwilioHttpClient):
    """The official client's HTTP layer, sent to the local daemon instead of Twilio."""

    def __init__(self, base_url: str) -> None:
        super().__init__(timeout=30)
        self.base_url = base_url.rstrip("/")

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        url = url.replace("https://api.twilio.com", self.base_url, 1)
        return super().request(method, url, *args, **kwargs)


class DaemonThread:
    """The real daemon on its own event loop thread (the client is synchronous)."""

    def __init__(self, tmp_path) -> None:
        self.descriptors = DescriptorCheck("daemon")  # before the loop: it is counted too
        config = default_config(tmp_path / "data")
        self.config = dataclasses.replace(
            config, api=dataclasses.replace(config.api, port=0),
            sip=dataclasses.replace(config.sip, port=0))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.daemon = Daemon(self.config)
        self.run(self.daemon.start())

    def run(self, coro, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.run(self.daemon.shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()
        self.descriptors.assert_released()


@pytest.fixture
def daemon(tmp_path):
    d = DaemonThread(tmp_path)
    yield d
    d.close()


def _play(ingress: dict[str, tuple[str, int]], seconds: float, stop: threading.Event) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    streams = [(list(tone_packets(440.0, seconds, ssrc=1)), ingress["inbound"]),
               (list(tone_packets(1000.0, seconds, ssrc=2)), ingress["outbound"])]
    start = time.monotonic()
    for n in range(len(streams[0][0])):
        if stop.is_set():
            break
        for packets, address in streams:
            sock.sendto(packets[n], address)
        time.sleep(max(0.0, start + (n + 1) * 0.02 - time.monotonic()))
    sock.close()


def _peak(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(float) * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


def test_twilio_client_drives_a_dual_recording(daemon: DaemonThread) -> None:
    account = daemon.config.accounts[0]
    auth = (account.sid, account.auth_token)
    base = daemon.daemon.base_url
    call_sid = "CA" + "5e" * 16
    registered = requests.post(f"{base}/v1/Calls", auth=auth, timeout=10, json={
        "call_sid": call_sid, "account_sid": account.sid,
        "from": "sip:+15551230000@pbx.example", "to": "sip:+15559870000@pbx.example",
        "codec": {"name": "PCMU", "payload_type": 0, "clock_rate": 8000},
        "dtmf_payload_type": 101})
    assert registered.status_code == 201, registered.text
    ingress = {t: (a["address"], a["port"]) for t, a in registered.json()["ingress"].items()}
    stop = threading.Event()
    player = threading.Thread(target=_play, args=(ingress, 6.0, stop))
    player.start()
    client = Client(account.sid, account.auth_token, http_client=LocalHttpClient(base))
    try:
        recording = client.calls(call_sid).recordings.create(recording_channels="dual")
        assert recording.sid.startswith("RE") and recording.status == "in-progress"
        assert recording.channels == 2 and recording.source == "StartCallRecordingAPI"
        time.sleep(1.5)
        paused = client.calls(call_sid).recordings(recording.sid).update(
            status="paused", pause_behavior="skip")
        assert paused.status == "paused"
        time.sleep(1.0)  # skipped: not in the file
        resumed = client.calls(call_sid).recordings(recording.sid).update(status="in-progress")
        assert resumed.status == "in-progress"
        time.sleep(1.5)
        stopped = client.calls(call_sid).recordings(recording.sid).update(status="stopped")
        assert stopped.status in {"stopped", "processing", "completed"}
        deadline = time.monotonic() + 10
        fetched = client.calls(call_sid).recordings(recording.sid).fetch()
        while fetched.status != "completed" and time.monotonic() < deadline:
            time.sleep(0.1)
            fetched = client.calls(call_sid).recordings(recording.sid).fetch()
        assert fetched.status == "completed"
        listed = client.calls(call_sid).recordings.list()
        assert [r.sid for r in listed] == [recording.sid]
    finally:
        stop.set()
        player.join()
        client.http_client.session.close()  # its keep-alive connection to the daemon
    # ~3 s recorded (1.5 + 1.5), the paused second skipped; whole seconds, as a string
    assert fetched.duration in {"2", "3"}, fetched.duration
    wav = requests.get(f"{base}/2010-04-01/Accounts/{account.sid}/Calls/{call_sid}/"
                       f"Recordings/{recording.sid}.wav", auth=auth, timeout=10)
    assert wav.status_code == 200 and wav.headers["Content-Type"].startswith("audio/")
    with wave.open(io.BytesIO(wav.content)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 8000)
        frames = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    seconds = len(frames) / 8000
    assert 2.4 <= seconds <= 3.6, seconds
    assert abs(_peak(frames[:, 0], 8000) - 440) < 10  # inbound left
    assert abs(_peak(frames[:, 1], 8000) - 1000) < 10  # outbound right
    other = requests.get(f"{base}/2010-04-01/Accounts/{account.sid}/Calls/{call_sid}/"
                         f"Recordings/{recording.sid}.wav", auth=(account.sid, "wrong"),
                         timeout=10)
    assert other.status_code == 401


def test_twilio_client_fetches_calls_and_account_level_recordings(daemon: DaemonThread) -> None:
    """What users reach for next: client.calls(sid).fetch(), client.recordings.list(),
    client.recordings(sid).fetch() / .delete(), and the account-level media URL."""
    from twilio.base.exceptions import TwilioRestException

    account = daemon.config.accounts[0]
    auth = (account.sid, account.auth_token)
    base = daemon.daemon.base_url
    call_sid = "CA" + "6f" * 16
    caller = "sip:Zoë Müller <+15551230000>@pbx.example"  # realistic: spaces, Unicode
    close = {"Connection": "close"}  # no keep-alive left for the descriptor check
    registered = requests.post(f"{base}/v1/Calls", auth=auth, timeout=10, headers=close, json={
        "call_sid": call_sid, "account_sid": account.sid, "from": caller,
        "to": "sip:+15559870000@pbx.example"})
    assert registered.status_code == 201, registered.text
    ingress = {t: (a["address"], a["port"]) for t, a in registered.json()["ingress"].items()}
    client = Client(account.sid, account.auth_token, http_client=LocalHttpClient(base))

    call = client.calls(call_sid).fetch()
    assert (call.sid, call.account_sid, call.status) == (call_sid, account.sid, "in-progress")
    assert call._from == caller and call.to == "sip:+15559870000@pbx.example"  # (its name)
    assert call.subresource_uris["siprec"].endswith(f"/Calls/{call_sid}/Siprec.json")

    stop = threading.Event()
    player = threading.Thread(target=_play, args=(ingress, 3.0, stop))
    player.start()
    try:
        recording = client.calls(call_sid).recordings.create()
        time.sleep(1.5)
        client.calls(call_sid).recordings(recording.sid).update(status="stopped")
        deadline = time.monotonic() + 10
        while (client.recordings(recording.sid).fetch().status != "completed"
               and time.monotonic() < deadline):
            time.sleep(0.1)
    finally:
        stop.set()
        player.join()
    fetched = client.recordings(recording.sid).fetch()
    assert fetched.status == "completed" and fetched.call_sid == call_sid
    assert [r.sid for r in client.recordings.list()] == [recording.sid]
    assert [r.sid for r in client.recordings.list(call_sid=call_sid)] == [recording.sid]
    assert client.recordings.list(call_sid="CA" + "0" * 32) == []
    media = requests.get(f"{base}/2010-04-01/Accounts/{account.sid}/Recordings/"
                         f"{recording.sid}.wav", auth=auth, timeout=10, headers=close)
    assert media.status_code == 200
    with wave.open(io.BytesIO(media.content)) as w:
        assert w.getnframes() > 8000  # over a second of audio

    # Ended calls stay fetchable, completed.
    assert requests.delete(f"{base}/v1/Calls/{call_sid}", auth=auth, timeout=10,
                           headers=close).status_code == 204
    ended = client.calls(call_sid).fetch()
    assert ended.status == "completed" and ended.end_time is not None

    assert client.recordings(recording.sid).delete() is True
    with pytest.raises(TwilioRestException) as gone:
        client.recordings(recording.sid).fetch()
    assert gone.value.status == 404
    with pytest.raises(TwilioRestException) as unknown:
        client.calls("CA" + "1" * 32).fetch()
    assert unknown.value.status == 404
    client.http_client.session.close()  # its keep-alive connection to the daemon
