"""Media side of the reference recorder: one RTP/SRTP receiver per recorded stream.

Each :class:`StreamReceiver` owns a UDP socket pair (RTP on an even port, RTCP on the next one,
or a single socket with rtcp-mux), decrypts SRTP with the key the SRC *offered*, decodes G.711
into a streaming WAV file and keeps RFC 3550 receive statistics. Every ~2 s it sends a receiver
report back to the SRC, protected with the key the recorder *answered*, so the SRC can show loss
and jitter as a real SRS would report them.

Nothing here trusts the network: short, malformed or unauthenticated datagrams are counted and
dropped, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
from pylibsrtp import Error as SrtpError
from pylibsrtp import Policy, Session

from ..recording.g711 import decoder_for
from ..recording.wavwriter import WavWriter
from ..sip.sdp import SUITE_32, SUITE_80, SUITE_GCM_128, SUITE_GCM_256

log = logging.getLogger("mediafork.srs")

PROFILES = {
    SUITE_80: Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    SUITE_32: Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    SUITE_GCM_128: Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    SUITE_GCM_256: Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
}
"""SDES suites the recorder accepts, in the order it prefers nothing: the offer's order wins."""

MAX_GAP_SECONDS = 10.0
"""Longest silence inserted for a timestamp jump; beyond this the jump is treated as a restart
(a new SSRC base or a broken sender), so a bad packet cannot make us write gigabytes of zeros."""

@dataclass
class MediaParams:
    """What one answered m-line says about the stream we receive."""

    label: str
    payload_type: int
    codec: str
    clock_rate: int
    remote_rtp: tuple[str, int] | None
    """Where the SRC sends from (its offered c=/m= port); None when it offered port 0."""
    remote_rtcp: tuple[str, int] | None
    """Where receiver reports go (its port+1, its a=rtcp, or the RTP port with rtcp-mux)."""
    rtcp_mux: bool
    suite: str | None = None
    tag: int = 1
    """The a=crypto tag of the selected suite (ours when the recorder offers)."""
    rx_key: bytes | None = field(default=None, repr=False)
    """The SRC's offered master key+salt: decrypts what it sends (secret)."""
    tx_key: bytes | None = field(default=None, repr=False)
    """Our answered master key+salt: protects the receiver reports we send (secret)."""


@dataclass
class RtpHeader:
    """The fields of an RTP header the receiver uses (RFC 3550 §5.1)."""

    payload_type: int
    marker: bool
    seq: int
    timestamp: int
    ssrc: int
    payload: bytes


def parse_rtp(data: bytes) -> RtpHeader | None:
    """Parse an RTP packet; None for anything that is not a well-formed version 2 packet."""
    if len(data) < 12 or data[0] >> 6 != 2:
        return None
    first, second, seq, timestamp, ssrc = struct.unpack_from("!BBHII", data)
    offset = 12 + 4 * (first & 0x0F)
    if first & 0x10:  # header extension: 4-byte header, then length in 32-bit words
        if len(data) < offset + 4:
            return None
        (words,) = struct.unpack_from("!H", data, offset + 2)
        offset += 4 + 4 * words
    end = len(data)
    if first & 0x20:  # padding: the last octet says how many to drop
        end -= data[-1]
    if offset > end:
        return None
    return RtpHeader(second & 0x7F, bool(second & 0x80), seq, timestamp, ssrc, data[offset:end])


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 §4: with rtcp-mux, packet types 192-223 in the second octet are RTCP."""
    return len(data) >= 2 and 192 <= data[1] <= 223


@dataclass
class StreamStats:
    """RFC 3550 Appendix A.1/A.3/A.8 receive statistics for the one SSRC we record."""

    packets: int = 0
    bytes: int = 0
    """Payload bytes (after SRTP removal), what the SRC forwarded as audio."""
    datagrams: int = 0
    """Every datagram that reached the RTP socket, good or bad."""
    srtp_auth_failures: int = 0
    srtp_replays: int = 0
    srtp_other_errors: int = 0
    malformed: int = 0
    wrong_payload_type: int = 0
    duplicates_or_late: int = 0
    seq_gaps: int = 0
    """How many times the sequence number jumped forward by more than one."""
    ssrc: int | None = None
    ssrc_changes: int = 0
    source_packets: int = 0
    """Packets from the current SSRC (sequence accounting restarts with a new source)."""
    lost_before: int = 0
    """Packets lost from earlier SSRCs."""
    expected_before: int = 0
    base_seq: int = 0
    max_seq: int = 0
    cycles: int = 0
    jitter: float = 0.0
    """Interarrival jitter in timestamp units (A.8)."""
    _transit: int | None = None
    expected_prior: int = 0
    received_prior: int = 0
    rtcp_received: int = 0
    srtcp_auth_failures: int = 0
    rtcp_sent: int = 0
    last_sr_ntp_middle: int = 0
    last_sr_arrival: float = 0.0
    first_packet_at: float | None = None
    last_packet_at: float | None = None

    @property
    def extended_max(self) -> int:
        return self.cycles + self.max_seq

    @property
    def source_expected(self) -> int:
        return self.extended_max - self.base_seq + 1 if self.source_packets else 0

    @property
    def source_lost(self) -> int:
        """Lost from the current SSRC (what a receiver report block carries)."""
        return self.source_expected - self.source_packets

    @property
    def expected(self) -> int:
        return self.expected_before + self.source_expected

    @property
    def lost(self) -> int:
        """Cumulative packets lost (may be negative with duplicates, as RFC 3550 allows)."""
        return self.lost_before + self.source_lost

    def reset_source(self, seq: int, ssrc: int) -> None:
        if self.ssrc is not None:
            self.ssrc_changes += 1
            self.lost_before += self.source_lost
            self.expected_before += self.source_expected
        self.source_packets = 0
        self.ssrc = ssrc
        self.base_seq = self.max_seq = seq
        self.cycles = 0
        self._transit = None
        self.expected_prior = self.received_prior = 0

    def update_seq(self, seq: int) -> bool:
        """Account one packet's sequence number; False if it is a duplicate or late packet."""
        delta = (seq - self.max_seq) & 0xFFFF
        if delta == 0:
            return False
        if delta < 0x8000:
            if seq < self.max_seq:
                self.cycles += 0x10000
            if delta > 1:
                self.seq_gaps += 1
            self.max_seq = seq
            return True
        return False  # behind the highest seen: reordered/late (counted by the caller)

    def update_jitter(self, timestamp: int, arrival_units: int) -> None:
        transit = arrival_units - timestamp
        if self._transit is not None:
            d = abs(transit - self._transit)
            self.jitter += (d - self.jitter) / 16.0
        self._transit = transit


def _sanitize(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", label)[:64] or "stream"


def _bind_pair(host: str, mux: bool, port_range: tuple[int, int]) -> list[socket.socket]:
    """Bind RTP on an even port and (without mux) RTCP on the next one (RFC 3550 §11)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    low, high = port_range
    for _ in range(200):
        port = random.randrange(low, high - 1) & ~1
        socks: list[socket.socket] = []
        try:
            for p in (port,) if mux else (port, port + 1):
                sock = socket.socket(family, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.bind((host, p))
                sock.setblocking(False)
            return socks
        except OSError:
            for sock in socks:
                sock.close()
    raise OSError(f"no free even RTP port pair on {host} in {low}-{high}")


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, receiver: StreamReceiver, rtcp_socket: bool) -> None:
        self.receiver = receiver
        self.rtcp_socket = rtcp_socket
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not isinstance-checked: CPython's selector transport does not subclass
        # DatagramTransport, it only implements it.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            if self.rtcp_socket or (self.receiver.params.rtcp_mux and is_rtcp(data)):
                self.receiver.on_rtcp(data)
            else:
                self.receiver.on_rtp(data)
        except Exception:  # a bug on one packet must not kill the socket
            log.exception("srs: error handling a media datagram on %s", self.receiver.label)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable for our receiver reports: the SRC does not listen for RTCP.
        log.debug("srs: media socket error on %s: %s", self.receiver.label, exc)


class StreamReceiver:
    """Receives one recorded stream and writes it to ``<directory>/<label>.wav``."""

    def __init__(
        self,
        params: MediaParams,
        host: str,
        directory: Path,
        port_range: tuple[int, int],
        rtcp_interval: float,
        *,
        keep_payloads: bool = False,
    ) -> None:
        """``keep_payloads``: also write every recorded payload, as received, to
        ``<directory>/<label>.payloads`` (each one a 2-byte big-endian length, then the
        bytes), for codecs the recorder cannot decode and for bit-exact checks."""
        self.params = params
        self.label = params.label
        self.host = host
        self.directory = directory
        self.rtcp_interval = rtcp_interval
        self.stats = StreamStats()
        self.paused = False
        self.pauses = 0
        self.wav_path: Path | None = None
        self.wav_seconds = 0.0
        self.undecodable = False
        self.keep_payloads = keep_payloads
        self.payloads_path: Path | None = None
        self._payloads: BinaryIO | None = None
        self.port_range = port_range
        self._socks = _bind_pair(host, params.rtcp_mux, port_range)
        self.port = self._socks[0].getsockname()[1]
        self.rtcp_port = self._socks[-1].getsockname()[1]
        self._rtp: _Protocol | None = None
        self._rtcp: _Protocol | None = None
        self._previous: list[tuple[list[socket.socket], list[_Protocol | None], int, int]] = []
        """Sockets replaced by ``rebind`` (kept open: media in flight still arrives there)."""
        self._rx: Session | None = None
        self._rx_rtcp: Session | None = None
        self._tx: Session | None = None
        self._writer: WavWriter | None = None
        self._table: np.ndarray | None = None
        self._next_ts: int | None = None
        self._own_ssrc = random.getrandbits(32)
        self._cname = f"srs-{os.getpid()}@{host}"
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._apply_keys()

    def _apply_keys(self) -> None:
        """(Re)create the SRTP contexts for the current keys; None for plain RTP."""
        p = self.params
        if p.suite is None or p.rx_key is None or p.tx_key is None:
            self._rx = self._rx_rtcp = self._tx = None
            return
        profile = PROFILES[p.suite]
        # Separate inbound contexts for SRTP and SRTCP: libsrtp keeps one replay window per
        # stream and both directions of our use share the SRC's SSRC.
        self._rx = Session(Policy(key=p.rx_key, ssrc_type=Policy.SSRC_ANY_INBOUND,
                                  srtp_profile=profile))
        self._rx_rtcp = Session(Policy(key=p.rx_key, ssrc_type=Policy.SSRC_ANY_INBOUND,
                                       srtp_profile=profile))
        self._tx = Session(Policy(key=p.tx_key, ssrc_type=Policy.SSRC_ANY_OUTBOUND,
                                  srtp_profile=profile))

    async def start(self) -> None:
        await self._open_endpoints()
        self._task = asyncio.create_task(self._report_loop())

    async def _open_endpoints(self) -> None:
        loop = asyncio.get_running_loop()
        _, self._rtp = await loop.create_datagram_endpoint(
            lambda: _Protocol(self, False), sock=self._socks[0]
        )
        self._rtcp = None
        if not self.params.rtcp_mux:
            _, self._rtcp = await loop.create_datagram_endpoint(
                lambda: _Protocol(self, True), sock=self._socks[1]
            )

    async def rebind(self) -> None:
        """Move to a fresh port pair (for an SRS re-INVITE that changes ports).

        The old sockets stay open and keep feeding this receiver, so packets the SRC sends
        before it has seen the new answer are still recorded; ``revert_rebind`` undoes it.
        """
        self._previous.append((self._socks, [self._rtp, self._rtcp], self.port, self.rtcp_port))
        self._socks = _bind_pair(self.host, self.params.rtcp_mux, self.port_range)
        self.port = self._socks[0].getsockname()[1]
        self.rtcp_port = self._socks[-1].getsockname()[1]
        await self._open_endpoints()

    def revert_rebind(self) -> None:
        """The re-INVITE failed: go back to the previous ports and close the new ones."""
        if not self._previous:
            return
        endpoints = [(self._socks, [self._rtp, self._rtcp])]
        endpoints += [(socks, protos) for socks, protos, _, _ in self._previous]
        for socks, protos in endpoints:
            for proto in protos:
                if proto is not None and proto.transport is not None:
                    proto.transport.close()
            for sock in socks:
                sock.close()
        self._socks, protos, self.port, self.rtcp_port = self._previous.pop()
        self._rtp, self._rtcp = protos

    def update(self, params: MediaParams) -> None:
        """A re-INVITE/UPDATE changed where the SRC is or its keys; ports stay ours."""
        rekey = (params.suite, params.rx_key, params.tx_key) != (
            self.params.suite,
            self.params.rx_key,
            self.params.tx_key,
        )
        params.rtcp_mux = self.params.rtcp_mux  # our sockets were bound for the first answer
        self.params = params
        if rekey:
            self._apply_keys()

    def set_paused(self, paused: bool) -> None:
        if paused and not self.paused:
            self.pauses += 1
        self.paused = paused

    # --- receiving ------------------------------------------------------------------------

    def on_rtp(self, data: bytes) -> None:
        stats = self.stats
        stats.datagrams += 1
        if self._closed:
            return
        if self._rx is not None:
            try:
                data = self._rx.unprotect(data)
            except SrtpError as exc:
                self._count_srtp_error(str(exc))
                return
        packet = parse_rtp(data)
        if packet is None:
            stats.malformed += 1
            return
        if packet.payload_type != self.params.payload_type:
            # Comfort noise, telephone-event or a misconfigured sender: counted, not recorded.
            stats.wrong_payload_type += 1
            return
        now = time.monotonic()
        if stats.ssrc != packet.ssrc:
            stats.reset_source(packet.seq, packet.ssrc)
            self._next_ts = None
            in_order = True
        else:
            in_order = stats.update_seq(packet.seq)
        stats.packets += 1
        stats.source_packets += 1
        stats.bytes += len(packet.payload)
        if stats.first_packet_at is None:
            stats.first_packet_at = time.time()
        stats.last_packet_at = time.time()
        stats.update_jitter(packet.timestamp, int(now * self.params.clock_rate))
        if not in_order:
            stats.duplicates_or_late += 1
            return  # the WAV is written in arrival order; a late packet's slot is already filled
        if self.keep_payloads:
            self._keep_payload(packet.payload)
        self._write_audio(packet)

    def _keep_payload(self, payload: bytes) -> None:
        if self._payloads is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.payloads_path = self.directory / f"{_sanitize(self.label)}.payloads"
            fd = os.open(self.payloads_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._payloads = os.fdopen(fd, "ab")
        self._payloads.write(struct.pack("!H", len(payload)) + payload)

    def _count_srtp_error(self, message: str) -> None:
        if "authentication" in message:
            self.stats.srtp_auth_failures += 1
        elif "replay" in message:
            self.stats.srtp_replays += 1
        else:
            self.stats.srtp_other_errors += 1

    def _write_audio(self, packet: RtpHeader) -> None:
        if self.undecodable:
            return
        if self._writer is None:
            try:
                table = decoder_for(self.params.codec)
            except ValueError:
                self.undecodable = True  # counted and reported, but no WAV for e.g. Opus
                return
            self._table = table
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"{_sanitize(self.label)}.wav"
            n = 1
            while path.exists() or path.with_name(path.name + ".partial").exists():
                n += 1
                path = self.directory / f"{_sanitize(self.label)}-{n}.wav"
            self._writer = WavWriter(path, 1, self.params.clock_rate)
            self.wav_path = path
        assert self._table is not None
        samples = self._table[np.frombuffer(packet.payload, dtype=np.uint8)]
        if self._next_ts is not None:
            gap = (packet.timestamp - self._next_ts) & 0xFFFFFFFF
            if 0 < gap <= MAX_GAP_SECONDS * self.params.clock_rate:
                # Lost packets or DTX: keep the timeline so the WAV lines up with wall time.
                self._writer.write(np.zeros(gap, dtype=np.int16))
            elif gap >= 0x80000000:
                overlap = 0x100000000 - gap  # packet starts before what we already wrote
                samples = samples[overlap:]
        self._writer.write(samples)
        self._next_ts = (packet.timestamp + len(packet.payload)) & 0xFFFFFFFF

    def on_rtcp(self, data: bytes) -> None:
        stats = self.stats
        if self._closed:
            return
        if self._rx_rtcp is not None:
            try:
                data = self._rx_rtcp.unprotect_rtcp(data)
            except SrtpError:
                stats.srtcp_auth_failures += 1
                return
        if len(data) < 8 or data[0] >> 6 != 2:
            stats.malformed += 1
            return
        stats.rtcp_received += 1
        if data[1] == 200 and len(data) >= 20:  # SR: remember it for LSR/DLSR (RFC 3550 §6.4.1)
            ntp_sec, ntp_frac = struct.unpack_from("!II", data, 8)
            stats.last_sr_ntp_middle = ((ntp_sec & 0xFFFF) << 16) | (ntp_frac >> 16)
            stats.last_sr_arrival = time.monotonic()

    # --- receiver reports ------------------------------------------------------------------

    def build_receiver_report(self) -> bytes:
        """A compound RTCP packet: RR with one report block (if we heard a source) + SDES CNAME."""
        stats = self.stats
        blocks = b""
        if stats.ssrc is not None and stats.source_packets:
            expected_interval = stats.source_expected - stats.expected_prior
            received_interval = stats.source_packets - stats.received_prior
            stats.expected_prior = stats.source_expected
            stats.received_prior = stats.source_packets
            lost_interval = expected_interval - received_interval
            fraction = (
                0 if expected_interval <= 0 or lost_interval <= 0
                else min(255, (lost_interval << 8) // expected_interval)
            )
            cumulative = max(-0x800000, min(0x7FFFFF, stats.source_lost)) & 0xFFFFFF
            dlsr = 0
            if stats.last_sr_arrival:
                dlsr = int((time.monotonic() - stats.last_sr_arrival) * 65536) & 0xFFFFFFFF
            blocks = struct.pack(
                "!IIIIII",
                stats.ssrc,
                (fraction << 24) | cumulative,
                stats.extended_max & 0xFFFFFFFF,
                int(stats.jitter) & 0xFFFFFFFF,
                stats.last_sr_ntp_middle,
                dlsr,
            )
        count = 1 if blocks else 0
        rr = struct.pack("!BBHI", 0x80 | count, 201, (8 + len(blocks)) // 4 - 1, self._own_ssrc)
        cname = self._cname.encode("ascii", "replace")[:255]
        item = bytes([1, len(cname)]) + cname + b"\x00"  # CNAME item, then the END item
        item += b"\x00" * (-(4 + len(item)) % 4)
        sdes = struct.pack("!BBHI", 0x81, 202, (8 + len(item)) // 4 - 1, self._own_ssrc) + item
        return rr + blocks + sdes

    def send_receiver_report(self) -> bool:
        """Send one RR to the SRC's RTCP address; False if there is nowhere (or no way) to send."""
        dest = self.params.remote_rtcp
        proto = self._rtp if self.params.rtcp_mux else self._rtcp
        if dest is None or proto is None or proto.transport is None or self._closed:
            return False
        packet = self.build_receiver_report()
        if self._tx is not None:
            packet = self._tx.protect_rtcp(packet)
        proto.transport.sendto(packet, dest)
        self.stats.rtcp_sent += 1
        return True

    async def _report_loop(self) -> None:
        # RFC 3550 §6.3.1 randomises the interval (0.5-1.5x) to avoid synchronised senders.
        while not self._closed:
            await asyncio.sleep(self.rtcp_interval * random.uniform(0.5, 1.5))
            if not self.paused:
                try:
                    self.send_receiver_report()
                except Exception:
                    log.exception("srs: could not send a receiver report on %s", self.label)

    # --- end ---------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop receiving, send a last report, and finish the WAV file."""
        if self._closed:
            return
        with contextlib.suppress(Exception):
            if not self.paused:
                self.send_receiver_report()
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        endpoints = [(self._socks, [self._rtp, self._rtcp])]
        endpoints += [(socks, protos) for socks, protos, _, _ in self._previous]
        for socks, protos in endpoints:
            for proto in protos:
                if proto is not None and proto.transport is not None:
                    proto.transport.close()
            for sock in socks:
                sock.close()
        if self._payloads is not None:
            self._payloads.close()
            self._payloads = None
        if self._writer is not None:
            self.wav_seconds = self._writer.duration_seconds
            try:
                self.wav_path = self._writer.finalize()
            except OSError:
                log.exception("srs: could not finish %s", self._writer.path)
                self._writer.abandon()

    def summary(self) -> dict[str, Any]:
        s = self.stats
        if self._writer is not None and not self._writer.closed:
            self.wav_seconds = self._writer.duration_seconds
        return {
            "label": self.label,
            "port": self.port,
            "rtcp_port": self.rtcp_port,
            "codec": self.params.codec,
            "payloads": str(self.payloads_path) if self.payloads_path else None,
            "payload_type": self.params.payload_type,
            "clock_rate": self.params.clock_rate,
            "srtp_suite": self.params.suite,
            "remote_rtp": list(self.params.remote_rtp) if self.params.remote_rtp else None,
            "remote_rtcp": list(self.params.remote_rtcp) if self.params.remote_rtcp else None,
            "ssrc": s.ssrc,
            "ssrc_changes": s.ssrc_changes,
            "packets": s.packets,
            "bytes": s.bytes,
            "datagrams": s.datagrams,
            "srtp_auth_failures": s.srtp_auth_failures,
            "srtp_replays": s.srtp_replays,
            "srtp_other_errors": s.srtp_other_errors,
            "malformed": s.malformed,
            "wrong_payload_type": s.wrong_payload_type,
            "duplicates_or_late": s.duplicates_or_late,
            "seq_gaps": s.seq_gaps,
            "expected": s.expected,
            "lost": s.lost,
            "loss_fraction": round(s.lost / s.expected, 4) if s.expected > 0 else 0.0,
            "jitter_ms": round(s.jitter * 1000.0 / self.params.clock_rate, 3),
            "rtcp_received": s.rtcp_received,
            "srtcp_auth_failures": s.srtcp_auth_failures,
            "rtcp_sent": s.rtcp_sent,
            "pauses": self.pauses,
            "paused": self.paused,
            "wav": self.wav_path.name if self.wav_path else None,
            "wav_seconds": round(self.wav_seconds, 3),
            "undecodable_codec": self.undecodable,
            "first_packet_at": _iso(s.first_packet_at),
            "last_packet_at": _iso(s.last_packet_at),
        }


def _iso(when: float | None) -> str | None:
    if when is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{int(when % 1 * 1000):03d}Z"
