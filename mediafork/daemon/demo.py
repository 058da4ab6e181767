"""The end-to-end demo (`scripts/demo`): the daemon with its embedded reference
recorder, three synthetic calls carrying tones, Siprecs started and stopped
over the REST API (one of them secure: SIP over TLS, SRTP), a live progress
line, and a summary that checks every fork, every recording and every signed
status callback. Exits 0 only when everything checked out."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import socket
import sys
import tempfile
import threading
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web

from ..control.signature import compute_signature
from ..mediasource.local_rtpengine import LocalRtpengine, TwoLegCall, find_rtpengine
from ..mediasource.ng_client import NgClient
from ..synth import tone_packets
from .config import MediaSourceConfig, default_config
from .process import Daemon

API = "/2010-04-01"


@dataclass
class DemoCall:
    sid: str
    inbound_hz: float
    outbound_hz: float
    connector: str
    track: str
    name: str
    ingress: dict[str, tuple[str, int]] = field(default_factory=dict)
    sent_by_engine: int = 0
    siprec_sid: str | None = None
    send_to: dict[str, tuple[str, int]] = field(default_factory=dict)
    """Where each track's party sends (default: the ingress; with rtpengine: rtpengine)."""
    socks: dict[str, socket.socket] = field(default_factory=dict)
    """The party's own socket per track (with rtpengine: the port its SDP names)."""


@dataclass
class Callback:
    event: str
    siprec_sid: str
    signature_ok: bool
    params: dict[str, str]


class CallbackReceiver:
    """A local status-callback endpoint that checks every X-Twilio-Signature."""

    def __init__(self, auth_token: str) -> None:
        self.auth_token = auth_token
        self.received: list[Callback] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/status", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/status"

    async def _handle(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        params = {k: str(v) for k, v in form.items()}
        expected = compute_signature(self.auth_token, self.url, params)
        ok = request.headers.get("X-Twilio-Signature") == expected
        try:  # the official validator too, when the twilio package is installed
            from twilio.request_validator import RequestValidator

            ok = ok and RequestValidator(self.auth_token).validate(
                self.url, params, request.headers.get("X-Twilio-Signature", ""))
        except ImportError:
            pass
        self.received.append(Callback(params.get("SiprecEvent", "?"),
                                      params.get("SiprecSid", "?"), ok, params))
        return web.Response(text="ok")

    def events_for(self, siprec_sid: str) -> list[str]:
        return [c.event for c in self.received if c.siprec_sid == siprec_sid]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class MediaServer(threading.Thread):
    """Plays each call's two tones to its ingress ports in real time (50 pps)."""

    def __init__(self, calls: list[DemoCall], seconds: float) -> None:
        super().__init__(daemon=True)
        self.calls = calls
        self.seconds = seconds
        self.sent = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        streams = []
        for i, call in enumerate(self.calls):
            for track, hz in (("inbound", call.inbound_hz), ("outbound", call.outbound_hz)):
                packets = list(tone_packets(hz, self.seconds, ssrc=0x5000 + 2 * i + len(streams) % 2,
                                            dtmf_every=50))
                streams.append((packets, call.send_to.get(track, call.ingress.get(track)),
                                call.socks.get(track, sock)))
        start = time.monotonic()
        for n in range(max(len(p) for p, _, _ in streams)):
            if self.stop_event.is_set():
                break
            for packets, address, out in streams:
                if n < len(packets):
                    out.sendto(packets[n], address)
                    self.sent += 1
            time.sleep(max(0.0, start + (n + 1) * 0.02 - time.monotonic()))
        sock.close()


def dominant_hz(path: Path) -> tuple[float, float]:
    """(seconds, strongest frequency) of a mono 16-bit WAV."""
    with wave.open(str(path)) as w:
        frames = w.readframes(w.getnframes())
        rate, channels = w.getframerate(), w.getnchannels()
    samples = np.frombuffer(frames, dtype="<i2").reshape(-1, channels)[:, 0].astype(float)
    if len(samples) < rate // 10:
        return len(samples) / rate, 0.0
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return len(samples) / rate, float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


async def run(seconds: float = 3.0, out=sys.stdout, keep: Path | None = None,
              rtpengine: bool = False) -> int:
    """The demo; with ``keep`` the recorder's files of each Siprec are copied to
    ``keep/<siprec name>/`` and the summary names them by full path. With ``rtpengine`` a
    private rtpengine proxies each call's two legs and mediafork gets the media from it
    (``media_source``); skipped, with a message, when rtpengine is not installed."""

    def say(text: str = "", end: str = "\n") -> None:
        print(text, end=end, file=out, flush=True)

    binary = find_rtpengine() if rtpengine else None
    if rtpengine and binary is None:
        say("demo --rtpengine skipped: rtpengine is not installed (Debian package "
            "rtpengine-daemon; scripts/test installs it)")
        return 0

    # A terminal gets one live line rewritten in place; a pipe or a log gets a plain
    # line a second, not a run of carriage returns.
    interactive = bool(getattr(out, "isatty", lambda: False)())

    with tempfile.TemporaryDirectory(prefix="mediafork-demo-") as tmp:
        data = Path(tmp)
        config = default_config(data)
        config = dataclasses.replace(
            config,
            api=dataclasses.replace(config.api, port=0),
            sip=dataclasses.replace(config.sip, port=0),
        )
        account = config.accounts[0]
        proxy: RtpengineProxy | None = None
        if binary is not None:
            proxy = RtpengineProxy(LocalRtpengine(binary, data / "rtpengine.log"))
            await proxy.start()
            config = dataclasses.replace(config, media_sources=(MediaSourceConfig(
                name="rtpengine1", kind="rtpengine", ng=proxy.rtpengine.ng),))
            say(f"rtpengine (pid {proxy.rtpengine.pid}) on NG {proxy.rtpengine.ng[0]}:"
                f"{proxy.rtpengine.ng[1]} proxies both legs of every call")
        daemon = Daemon(config, embedded_recorder=True, recorder_port=0)  # free ports only
        try:
            await daemon.start()
        except BaseException:
            if proxy is not None:
                await proxy.close()
            raise
        receiver = CallbackReceiver(account.auth_token)
        await receiver.start()
        auth = aiohttp.BasicAuth(account.sid, account.auth_token)
        base = daemon.base_url
        say(f"mediafork daemon on {base}; reference recorder on "
            f"{daemon.recorder.address[0]}:{daemon.recorder.address[1]} (UDP/TCP) and "
            f"TLS port {daemon.recorder.tls_address[1]}")
        calls = [
            DemoCall("CA" + "a1" * 16, 440.0, 1000.0, "Default", "both_tracks", "plain-both"),
            DemoCall("CA" + "b2" * 16, 660.0, 1500.0, "Secure", "both_tracks", "secure-both"),
            DemoCall("CA" + "c3" * 16, 880.0, 1200.0, "Default", "inbound_track", "inbound-only"),
        ]
        ok = True
        media: MediaServer | None = None
        try:
            async with aiohttp.ClientSession(auth=auth) as http:
                for call in calls:
                    body = {"call_sid": call.sid, "account_sid": account.sid,
                            "from": f"sip:+1555{call.sid[-7:]}@pbx.example",
                            "to": "sip:+15559870000@pbx.example",
                            "codec": {"name": "PCMU", "payload_type": 0, "clock_rate": 8000},
                            "dtmf_payload_type": 101}
                    if proxy is not None:  # by reference: the codec is learned from rtpengine
                        del body["codec"], body["dtmf_payload_type"]
                        body["media_source"] = await proxy.add_call(call)
                    async with http.post(f"{base}/v1/Calls", json=body) as r:
                        answer = await r.json()
                        assert r.status == 201, answer
                    call.ingress = {t: (a["address"], a["port"])
                                    for t, a in answer["ingress"].items()}
                media = MediaServer(calls, seconds + 2.0)
                media.start()
                for call in calls:
                    form = {"Name": call.name, "ConnectorName": call.connector,
                            "Track": call.track, "StatusCallback": receiver.url,
                            "Parameter1.Name": "DemoCall", "Parameter1.Value": call.sid,
                            "Parameter2.Name": "Campaign", "Parameter2.Value": "demo"}
                    async with http.post(f"{base}{API}/Accounts/{account.sid}/Calls/"
                                         f"{call.sid}/Siprec.json", data=form) as r:
                        created = await r.json()
                        if r.status != 201:
                            raise RuntimeError(f"create Siprec failed: {created}")
                    call.siprec_sid = created["sid"]
                    say(f"  {call.name:13} {call.siprec_sid} via {call.connector} "
                        f"({call.track})")
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and not all(
                        "siprec-started" in receiver.events_for(c.siprec_sid or "") for c in calls):
                    await asyncio.sleep(0.05)
                end = time.monotonic() + seconds
                next_plain = 0.0
                while time.monotonic() < end:
                    totals = daemon.engine.totals()
                    sent, forwarded = totals.get("fork_sent", 0), totals.get("fork_forwarded", 0)
                    loss = totals.get("fork_dropped_full", 0) + totals.get("fork_send_errors", 0)
                    line = (f"  live: {len(daemon.engine.calls)} calls, {forwarded} packets "
                            f"forked, {sent} sent, {loss} lost, {len(receiver.received)} callbacks")
                    if interactive:
                        say(f"\r{line}   ", end="")
                    elif time.monotonic() >= next_plain:
                        say(line)
                        next_plain = time.monotonic() + 1.0
                    await asyncio.sleep(0.25)
                if interactive:
                    say()
                for call in calls:
                    async with http.get(f"{base}/v1/Calls/{call.sid}") as r:
                        view = await r.json()
                    call.sent_by_engine = sum(f["counters"]["sent"] for f in view["forks"])
                for i, call in enumerate(calls):
                    which = call.name if i == 0 else call.siprec_sid  # by name and by SID
                    async with http.post(f"{base}{API}/Accounts/{account.sid}/Calls/"
                                         f"{call.sid}/Siprec/{which}.json",
                                         data={"Status": "stopped"}) as r:
                        assert r.status == 200, await r.text()
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and not all(
                        "siprec-stopped" in receiver.events_for(c.siprec_sid or "") for c in calls):
                    await asyncio.sleep(0.05)
                media.stop_event.set()
                for call in calls:
                    async with http.delete(f"{base}/v1/Calls/{call.sid}") as r:
                        assert r.status == 204, await r.text()
            await daemon.recorder.wait_for(
                lambda rec: sum(1 for s in rec.sessions if s.state == "ended") >= len(calls),
                timeout=10)
            ok = report(calls, daemon, receiver, say, keep)
        except Exception as exc:  # the demo reports, it does not crash
            say(f"\ndemo failed: {exc}")
            ok = False
        finally:
            if media is not None:
                media.stop_event.set()
                media.join(2)
            await receiver.stop()
            await daemon.shutdown()
            if proxy is not None:
                await proxy.close()
    say("result: " + ("all checks passed" if ok else "CHECKS FAILED"))
    return 0 if ok else 1


def report(calls: list[DemoCall], daemon: Daemon, receiver: CallbackReceiver, say,
           keep: Path | None = None) -> bool:
    ok = True
    sessions: dict[str, Any] = {}
    for session in daemon.recorder.sessions:
        summary = session.summary()
        params = summary.get("parameters") or {}
        demo_call = params.get("DemoCall") if isinstance(params, dict) else None
        if demo_call:
            sessions[demo_call] = summary
    say(f"\n{'siprec':13} {'signaling':9} {'srtp':5} {'sent':>6} {'recv':>6} {'lost':>5} "
        f"{'auth-fail':>9}  recordings (seconds, tone)")
    for call in calls:
        summary = sessions.get(call.sid)
        if summary is None:
            say(f"{call.name:13} no session at the recorder")
            ok = False
            continue
        t = summary["totals"]
        secure = any(s.get("srtp_suite") for s in summary["streams"])
        directory = Path(summary["directory"])
        if keep is not None:  # copied before the temporary data folder goes away
            kept = keep / call.name
            shutil.rmtree(kept, ignore_errors=True)
            directory = Path(shutil.copytree(directory, kept)).resolve()
        wavs = []
        expected = {call.inbound_hz} if call.track == "inbound_track" else {
            call.inbound_hz, call.outbound_hz}
        heard = set()
        for stream in summary["streams"]:
            if not stream.get("wav"):
                continue
            seconds, hz = dominant_hz(directory / stream["wav"])
            nearest = min(expected, key=lambda e, hz=hz: abs(e - hz))
            heard.add(nearest if abs(nearest - hz) < 15 else hz)  # within an FFT bin or two
            name = directory / stream["wav"] if keep is not None else stream["wav"]
            wavs.append(f"{name} ({seconds:.1f}s, {hz:.0f} Hz)")
        # The engine's count is a snapshot taken while media still flowed, so
        # the recorder may have more; it must not have fewer, nor any loss.
        good = (0 < call.sent_by_engine <= t["packets"] and t["lost"] == 0
                and t["srtp_auth_failures"] == 0 and heard == expected
                and secure == (call.connector == "Secure") and summary["ended_by"] == "src")
        ok &= good
        say(f"{call.name:13} {summary['transport']:9} {'yes' if secure else 'no':5} "
            f"{call.sent_by_engine:>6} {t['packets']:>6} {t['lost']:>5} "
            f"{t['srtp_auth_failures']:>9}  {', '.join(wavs)}{'' if good else '  <- FAILED'}")
    if keep is None:
        say("(the recorder's files are removed with the demo's temporary folder; "
            "`mediafork demo --keep DIR` keeps them)")
    say("\ncallbacks (signature checked with the account token):")
    for call in calls:
        events = receiver.events_for(call.siprec_sid or "")
        signed = all(c.signature_ok for c in receiver.received if c.siprec_sid == call.siprec_sid)
        good = events == ["siprec-started", "siprec-stopped"] and signed
        ok &= good
        say(f"  {call.name:13} {' -> '.join(events) or 'none'}"
            f"{'  (signatures valid)' if signed else '  (BAD SIGNATURE)'}"
            f"{'' if good else '  <- FAILED'}")
    return ok


class RtpengineProxy:
    """The platform's media proxy for ``demo --rtpengine``: a private rtpengine, and each
    demo call's two legs set up through it as Kamailio's rtpengine module would."""

    def __init__(self, rtpengine: LocalRtpengine) -> None:
        self.rtpengine = rtpengine
        self.client: NgClient | None = None
        self.calls: list[TwoLegCall] = []

    async def start(self) -> None:
        await self.rtpengine.start()
        try:
            self.client = await NgClient.connect(self.rtpengine.ng)
        except BaseException:
            self.rtpengine.stop()
            raise

    async def add_call(self, call: DemoCall) -> dict[str, str]:
        """Offer/answer through rtpengine; the demo's parties send to it; returns the
        ``media_source`` object that registers the call by reference."""
        assert self.client is not None
        legs = await TwoLegCall.create(self.client, f"demo-{call.sid[-8:]}@127.0.0.1")
        self.calls.append(legs)
        call.send_to = {"inbound": legs.caller.send_to, "outbound": legs.callee.send_to}
        call.socks = {"inbound": legs.caller.sock, "outbound": legs.callee.sock}
        return {"name": "rtpengine1", "call_id": legs.call_id,
                "inbound_tag": legs.caller.tag, "outbound_tag": legs.callee.tag}

    async def close(self) -> None:
        """Delete the calls (the proxy's BYE), close the NG socket, stop rtpengine."""
        try:
            if self.client is not None:
                for legs in self.calls:
                    await legs.close(self.client)
                self.client.close()
        finally:
            self.rtpengine.stop()


def main(seconds: float = 3.0, keep: Path | None = None, rtpengine: bool = False) -> int:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
    try:
        import uvloop

        return uvloop.run(run(seconds, keep=keep, rtpengine=rtpengine))
    except ImportError:  # pragma: no cover
        return asyncio.run(run(seconds, keep=keep, rtpengine=rtpengine))
