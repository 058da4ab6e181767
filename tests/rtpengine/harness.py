"""A real rtpengine on loopback, started by hand for one test, and a two-leg call through it.

The daemon runs in the foreground with its own flags only (``--config-file=none``: the
package's /etc/rtpengine is never read), userspace forwarding (``--table=-1``: no kernel
module), a private port range, no pidfile, logging to a file in the test's tmp directory. It
is stopped by its pid. No system service is touched.
"""

from __future__ import annotations

import base64
import os
import random
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import bencodepy
from pylibsrtp import Policy, Session

from mediafork.mediasource.local_rtpengine import stop_process
from mediafork.synth import tone_packets

RTPENGINE = shutil.which("rtpengine") or (
    "/usr/bin/rtpengine" if os.access("/usr/bin/rtpengine", os.X_OK) else None)
_CODEC = bencodepy.Bencode(encoding="utf-8", encoding_fallback="all")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Rtpengine:
    """One rtpengine process. ``start()`` returns once NG answers ``ping``."""

    def __init__(self, log_dir: Path, *, ng_port: int | None = None, ports: int = 100,
                 extra: tuple[str, ...] = ()) -> None:
        assert RTPENGINE is not None
        self.ng_port = ng_port or free_udp_port()
        # Below the kernel's ephemeral range (32768+) and the ranges other tests give Engine.
        base = random.randrange(20000, 27800, 2)
        self.port_min, self.port_max = base, base + ports - 1
        self.extra = extra
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.starts = 0

    @property
    def ng(self) -> tuple[str, int]:
        return ("127.0.0.1", self.ng_port)

    def start(self, timeout: float = 5.0) -> None:
        self.starts += 1
        log = (self.log_dir / f"rtpengine-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            [RTPENGINE, "--config-file=none", "--foreground", "--log-stderr",
             "--interface=127.0.0.1", f"--listen-ng=127.0.0.1:{self.ng_port}",
             "--table=-1", f"--port-min={self.port_min}", f"--port-max={self.port_max}",
             "--delete-delay=0", "--log-level=6", *self.extra],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        log.close()
        self.started_at = time.time()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rtpengine exited with {self.proc.returncode}: "
                                   f"{self.log_tail()}")
            try:
                if ng_request(self.ng, {"command": "ping"}, timeout=0.2).get("result") == "pong":
                    return
            except OSError:
                pass
        self.stop()
        raise RuntimeError(f"rtpengine did not answer ping within {timeout} s: {self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM by pid, SIGKILL after 5 s. Idempotent."""
        proc, self.proc = self.proc, None
        stop_process(proc)

    def log_tail(self, lines: int = 20) -> str:
        path = self.log_dir / f"rtpengine-{self.starts}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def ng_request(address: tuple[str, int], message: dict[str, Any],
               timeout: float = 2.0) -> dict[str, Any]:
    """A blocking NG request for test set-up (the code under test uses NgClient)."""
    cookie = os.urandom(6).hex().encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(cookie + b" " + _CODEC.encode(message), address)
        while True:
            data, _ = s.recvfrom(65535)
            got, _, body = data.partition(b" ")
            if got == cookie:
                return _CODEC.decode(body)


def party_sdp(port: int, formats: str = "0 8 101", srtp_key: bytes | None = None) -> str:
    """A phone's SDP; with ``srtp_key`` it offers SDES-SRTP (RFC 4568) with that key."""
    proto = "RTP/SAVP" if srtp_key else "RTP/AVP"
    crypto = (f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{base64.b64encode(srtp_key).decode()}"
              "\r\n" if srtp_key else "")
    return ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {port} {proto} {formats}\r\na=rtpmap:0 PCMU/8000\r\n"
            "a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
            f"a=fmtp:101 0-16\r\na=ptime:20\r\n{crypto}a=sendrecv\r\n")


def _media_port(sdp: str) -> int:
    match = re.search(r"^m=audio (\d+) ", sdp, re.MULTILINE)
    assert match, sdp
    return int(match.group(1))


class TwoLegCall:
    """Caller A (from-tag ``ta``) and callee B (to-tag ``tb``) as two local UDP endpoints,
    signalled through rtpengine like a proxy would: offer with A's SDP, answer with B's."""

    def __init__(self, ng: tuple[str, int], call_id: str, *, caller_srtp: bool = False) -> None:
        """With ``caller_srtp`` the caller talks SDES-SRTP to rtpengine (its packets are
        protected with its own key), the callee plain RTP: rtpengine bridges the two."""
        self.ng = ng
        self.call_id = call_id
        self.a_key = os.urandom(30) if caller_srtp else None
        self.a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.a.bind(("127.0.0.1", 0))
        self.b.bind(("127.0.0.1", 0))
        offer_message = {"command": "offer", "call-id": call_id, "from-tag": "ta",
                         "sdp": party_sdp(self.a.getsockname()[1], srtp_key=self.a_key)}
        if caller_srtp:
            offer_message["transport-protocol"] = "RTP/AVP"  # the callee side is plain
        offer = ng_request(ng, offer_message)
        assert offer["result"] == "ok", offer
        answer = ng_request(ng, {"command": "answer", "call-id": call_id, "from-tag": "ta",
                                 "to-tag": "tb",
                                 "sdp": party_sdp(self.b.getsockname()[1], "0 101")})
        assert answer["result"] == "ok", answer
        # A sends to the port in the SDP rtpengine gave A (the answer), B to the offer's.
        self.a_sends_to = ("127.0.0.1", _media_port(answer["sdp"]))
        self.b_sends_to = ("127.0.0.1", _media_port(offer["sdp"]))
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start_tones(self, a_hz: float, b_hz: float, seconds: float = 10.0,
                    a_dtmf_every: int = 0) -> None:
        """Each party sends its own tone, paced at 20 ms, until ``stop_tones()``; with
        ``a_dtmf_every`` = N the caller adds an RFC 4733 event (PT 101) after every Nth."""
        for sock, dest, hz, ssrc, key in (
                (self.a, self.a_sends_to, a_hz, 0xA0A0A0A0, self.a_key),
                (self.b, self.b_sends_to, b_hz, 0xB0B0B0B0, None)):
            every = a_dtmf_every if sock is self.a else 0
            packets = list(tone_packets(hz, seconds, ssrc=ssrc, dtmf_every=every))
            if key is not None:
                tx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
                packets = [tx.protect(p) for p in packets]
            thread = threading.Thread(target=self._pace, args=(sock, dest, packets), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _pace(self, sock: socket.socket, dest: tuple[str, int], packets: list[bytes]) -> None:
        start = time.monotonic()
        for i, packet in enumerate(packets):
            if self._stop.wait(max(0.0, start + i * 0.02 - time.monotonic())):
                return
            try:
                sock.sendto(packet, dest)
            except OSError:
                return

    def stop_tones(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(2)
        self._threads.clear()

    def delete(self) -> dict[str, Any]:
        """What a proxy does on BYE (with no delete delay: the call goes at once)."""
        return ng_request(self.ng, {"command": "delete", "call-id": self.call_id,
                                    "from-tag": "ta", "delete delay": 0})

    def close(self) -> None:
        self.stop_tones()
        self.a.close()
        self.b.close()
