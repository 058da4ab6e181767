"""A private rtpengine on loopback for the demo and the bench, and the proxy's part of a
two-leg call through it (NG ``offer`` with the caller's SDP, ``answer`` with the callee's).

The daemon runs in the foreground with its own flags only (``--config-file=none``: the
package's /etc/rtpengine is never read), userspace forwarding (``--table=-1``), a private
port range, logging to a file. It is stopped by its pid; no system service is touched.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import MediaSourceError
from .ng import NgTiming
from .ng_client import NgClient

__all__ = ["LocalRtpengine", "Party", "TwoLegCall", "find_rtpengine", "media_port", "party_sdp"]


def find_rtpengine() -> str | None:
    """The rtpengine binary (Debian's rtpengine-daemon), or None when not installed."""
    found = shutil.which("rtpengine")
    if found:
        return found
    return "/usr/bin/rtpengine" if os.access("/usr/bin/rtpengine", os.X_OK) else None


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalRtpengine:
    """``await start()`` returns once NG answers ``ping``; ``stop()`` ends it by pid."""

    def __init__(self, binary: str, log_path: Path, *, port_min: int = 20000,
                 port_max: int = 23999, extra: tuple[str, ...] = ()) -> None:
        self.binary = binary
        self.log_path = log_path
        self.ng = ("127.0.0.1", _free_udp_port())
        self.port_min, self.port_max = port_min, port_max
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, timeout: float = 5.0) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--config-file=none", "--foreground", "--log-stderr",
                 "--interface=127.0.0.1", f"--listen-ng={self.ng[0]}:{self.ng[1]}",
                 "--table=-1", f"--port-min={self.port_min}", f"--port-max={self.port_max}",
                 "--delete-delay=0", "--log-level=5", *self.extra],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        client = await NgClient.connect(self.ng, timing=NgTiming(timeout=0.3, retransmit=0.1))
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    await client.request({"command": "ping"})
                    return
                except MediaSourceError:
                    await asyncio.sleep(0.05)
        finally:
            client.close()
        self.stop()
        raise RuntimeError(f"rtpengine did not start (log: {self.log_path})")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def stop(self) -> None:
        """SIGTERM by pid, SIGKILL after 5 s. Idempotent."""
        proc, self.proc = self.proc, None
        stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    """Stop a process we started: SIGTERM by its pid, SIGKILL if it is still there after
    5 s, and reap it. Nothing to do for None or a process that has exited."""
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)


def party_sdp(port: int, formats: str = "0 101") -> str:
    """A phone's plain-RTP SDP on loopback (PCMU and telephone-event)."""
    return ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP {formats}\r\na=rtpmap:0 PCMU/8000\r\n"
            "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n"
            "a=sendrecv\r\n")


def media_port(sdp: object) -> int:
    """The audio port an SDP names."""
    match = re.search(r"^m=audio (\d+) ", str(sdp), re.MULTILINE)
    if match is None:
        raise RuntimeError("rtpengine's SDP has no audio stream")
    return int(match.group(1))


@dataclass
class Party:
    """One phone: its socket (the port its SDP names) and where rtpengine wants its media."""

    tag: str
    sock: socket.socket
    send_to: tuple[str, int] = ("127.0.0.1", 0)


@dataclass
class TwoLegCall:
    """A call through rtpengine as a proxy sets it up: caller A (from-tag), callee B
    (to-tag). ``close()`` deletes it on rtpengine and closes the parties' sockets."""

    call_id: str
    caller: Party
    callee: Party
    parties: list[Party] = field(default_factory=list)

    @classmethod
    async def create(cls, client: NgClient, call_id: str) -> TwoLegCall:
        socks = []
        for _ in range(2):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        a, b = Party(f"{call_id}-a", socks[0]), Party(f"{call_id}-b", socks[1])
        try:
            offer = await client.request({"command": "offer", "call-id": call_id,
                                          "from-tag": a.tag,
                                          "sdp": party_sdp(a.sock.getsockname()[1])})
            answer = await client.request({"command": "answer", "call-id": call_id,
                                           "from-tag": a.tag, "to-tag": b.tag,
                                           "sdp": party_sdp(b.sock.getsockname()[1])})
        except BaseException:
            for sock in socks:
                sock.close()
            raise
        # A sends to the port of the SDP rtpengine gave A (the answer), B to the offer's.
        a.send_to = ("127.0.0.1", media_port(answer.get("sdp")))
        b.send_to = ("127.0.0.1", media_port(offer.get("sdp")))
        return cls(call_id, a, b, [a, b])

    async def close(self, client: NgClient) -> None:
        try:
            await client.request({"command": "delete", "call-id": self.call_id,
                                  "from-tag": self.caller.tag, "delete delay": 0})
        except MediaSourceError:
            pass  # gone already, or rtpengine stopped: nothing left to delete
        finally:
            for party in self.parties:
                party.sock.close()
