"""Count-only media for the reference recorder (load and soak tests).

A Python recorder cannot decrypt 200,000 SRTP packets a second, so for load tests the recorder
keeps its SIP side real (INVITE, SDP answer with its own SRTP key, ACK, BYE, re-INVITEs, files
and ``summary.json``) but answers every stream with the port of a *sink* that lives elsewhere:
a C loop that only counts datagrams (``_fastpath.run_loadgen``'s sink, run by the load
generator's process, see ``benches/load``). Ports are handed out round-robin, so many streams
share one sink socket; the sink's RTCP port is the port + 1.

Enabled by ``RecorderConfig.sink_ports``; nothing here touches a media packet.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..sip.message import Request
from ..sip.sdp import MediaDescription, SessionDescription
from .media import MediaParams
from .session import RecordedSession

__all__ = ["CountingSession", "SinkStream"]


class SinkStream:
    """Stands in for a :class:`~mediafork.srs.media.StreamReceiver`: same attributes the
    session uses, no socket of its own. Packet counts are the sink's, not ours."""

    def __init__(self, label: str, port: int) -> None:
        self.label = label
        self.port = port
        self.rtcp_port = port + 1
        self.params = MediaParams(label, 0, "PCMU", 8000, None, None, False)
        self.paused = False
        self.pauses = 0

    def update(self, params: MediaParams) -> None:
        params.rtcp_mux = False  # the sink has an RTP port and RTCP on port + 1, never muxed
        self.params = params

    def set_paused(self, paused: bool) -> None:
        if paused and not self.paused:
            self.pauses += 1
        self.paused = paused

    async def rebind(self) -> None:
        """Recorder-initiated port moves need sockets we do not have."""
        raise OSError("count-only streams cannot move to new ports")

    def revert_rebind(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def summary(self) -> dict[str, Any]:
        p = self.params
        return {
            "label": self.label,
            "port": self.port,
            "rtcp_port": self.rtcp_port,
            "codec": p.codec,
            "payload_type": p.payload_type,
            "clock_rate": p.clock_rate,
            "srtp_suite": p.suite,
            "remote_rtp": list(p.remote_rtp) if p.remote_rtp else None,
            "counted_by": "sink",
            "packets": 0, "bytes": 0, "lost": 0, "seq_gaps": 0, "srtp_auth_failures": 0,
            "srtp_replays": 0, "rtcp_sent": 0, "rtcp_received": 0,
            "pauses": self.pauses, "paused": self.paused, "wav": None,
        }


class CountingSession(RecordedSession):
    """A :class:`RecordedSession` whose streams are :class:`SinkStream` s.

    The offer/answer logic (codec and SRTP suite choice, our fresh key, labels, direction,
    re-offers) is the parent's: a fresh stream is handed to it as the "existing" receiver,
    so only the media endpoint differs.
    """

    def __init__(self, request: Request, transport: str, source: tuple[str, int],
                 out_dir: Path, media_host: str, ports: Iterator[int],
                 rtcp_interval: float) -> None:
        super().__init__(request, transport, source, out_dir, media_host, (0, 0), rtcp_interval)
        self._ports = ports

    async def _answer_media(
        self,
        offer: SessionDescription,
        index: int,
        media: MediaDescription,
        existing: Any,
    ) -> tuple[MediaDescription, Any]:
        fresh = existing is None
        if fresh:
            existing = SinkStream(media.label or f"stream{index}", next(self._ports))
        line, receiver = await super()._answer_media(offer, index, media, existing)
        if fresh and line.port == 0:
            return line, None  # refused stream: no receiver, exactly as the parent does
        return line, receiver


def port_cycle(ports: tuple[int, ...]) -> Iterator[int]:
    """Round-robin over the sink's ports, shared by every session of one recorder."""
    return itertools.cycle(ports)
