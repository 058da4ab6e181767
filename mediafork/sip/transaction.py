"""RFC 3261 §17 transactions as sans-I/O state machines (aioquic style).

Each transaction is fed messages and timer expiries with the current time and produces messages
to send and events. It never touches a socket or a clock: ``get_timer()`` says when it next
wants ``handle_timer(now)`` to be called. On reliable transports (TCP/TLS) nothing is
retransmitted and Timers D/K/I/J are zero (§17.1.1.2, §17.1.2.2).

The client INVITE transaction follows RFC 6026: after a 2xx it stays "Accepted" for 64*T1 so
retransmitted 2xx responses still reach the TU (which re-sends its ACK).
"""

from __future__ import annotations

import enum
import secrets
from collections import deque
from dataclasses import dataclass

from .errors import SipStateError
from .headers import Headers
from .message import Message, Request, Response

BRANCH_MAGIC = "z9hG4bK"


def new_branch() -> str:
    """A fresh RFC 3261 branch (the magic cookie marks it as globally unique)."""
    return BRANCH_MAGIC + secrets.token_hex(10)


@dataclass(frozen=True)
class TimerConfig:
    """RFC 3261 timer base values in seconds (Table 4)."""

    t1: float = 0.5
    """Round-trip time estimate; retransmissions start at T1."""
    t2: float = 4.0
    """Cap of the non-INVITE request and INVITE response retransmit interval."""
    t4: float = 5.0
    """How long a message may stay in the network (Timers I and K)."""
    d: float = 32.0
    """Timer D on unreliable transports (at least 32 s)."""


class State(enum.Enum):
    """Union of the states of all four transaction kinds."""

    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    ACCEPTED = "accepted"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


@dataclass(frozen=True)
class ResponseReceived:
    """A response for a client transaction that the TU must see."""

    response: Response
    """The response (1xx, the final one, or a retransmitted 2xx to INVITE)."""


@dataclass(frozen=True)
class TransactionTimedOut:
    """No (final) response or ACK arrived in time (Timer B, F, H or L)."""

    timer: str
    """Name of the timer that fired."""


@dataclass(frozen=True)
class TransportFailed:
    """The transport reported that the message could not be sent."""

    reason: str
    """What the transport said (no secrets)."""


@dataclass(frozen=True)
class AckReceived:
    """The ACK for a final response of a server INVITE transaction arrived."""

    ack: Request
    """The ACK (for a 2xx it may carry an SDP answer)."""


TransactionEvent = ResponseReceived | TransactionTimedOut | TransportFailed | AckReceived


class _Transaction:
    def __init__(self, request: Request, reliable: bool, timers: TimerConfig) -> None:
        self.request = request
        self.reliable = reliable
        self.timers = timers
        self.state = State.TERMINATED
        self._deadlines: dict[str, float] = {}
        self._intervals: dict[str, float] = {}
        self._out: list[Message] = []
        self._events: deque[TransactionEvent] = deque()

    @property
    def branch(self) -> str:
        """The branch of the request's top Via: the transaction identifier."""
        return self.request.top_via.branch or ""

    @property
    def terminated(self) -> bool:
        """True once the transaction has nothing left to do."""
        return self.state is State.TERMINATED

    def get_timer(self) -> float | None:
        """Absolute time of the next timer, or None."""
        return min(self._deadlines.values()) if self._deadlines else None

    def handle_timer(self, now: float) -> None:
        """Fire every timer that is due at ``now``."""
        for name, deadline in sorted(self._deadlines.items(), key=lambda item: item[1]):
            if deadline <= now and name in self._deadlines:
                del self._deadlines[name]
                self._on_timer(name, now)

    def handle_transport_error(self, now: float, reason: str) -> None:
        """The transport failed to send for this transaction (§17.1.4, §17.2.4)."""
        if not self.terminated:
            self._events.append(TransportFailed(reason))
            self._terminate()

    def messages_to_send(self) -> list[Message]:
        """Messages produced since the last call (requests, ACKs or responses)."""
        out, self._out = self._out, []
        return out

    def next_event(self) -> TransactionEvent | None:
        """The next event for the TU, or None."""
        return self._events.popleft() if self._events else None

    def _set(self, name: str, now: float, delay: float) -> None:
        self._deadlines[name] = now + delay
        self._intervals[name] = delay

    def _terminate(self) -> None:
        self.state = State.TERMINATED
        self._deadlines.clear()

    def _on_timer(self, name: str, now: float) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class ClientInviteTransaction(_Transaction):
    """Client INVITE transaction (§17.1.1, RFC 6026)."""

    def __init__(
        self, request: Request, reliable: bool = False, timers: TimerConfig | None = None
    ) -> None:
        if request.method != "INVITE":
            raise SipStateError("ClientInviteTransaction needs an INVITE")
        super().__init__(request, reliable, timers or TimerConfig())
        self.ack: Request | None = None

    def start(self, now: float) -> None:
        """Send the INVITE and arm Timers A (unreliable only) and B."""
        self.state = State.CALLING
        self._out.append(self.request)
        if not self.reliable:
            self._set("A", now, self.timers.t1)
        self._set("B", now, 64 * self.timers.t1)

    def handle_transport_error(self, now: float, reason: str) -> None:
        # Once a final response is in (Accepted after a 2xx, Completed after an error), the
        # outcome is decided; the transaction only absorbs retransmissions. A connection lost
        # now (an SRS resetting TCP right after answering) must not turn an established
        # session into a "setup failed", or fail over from a dialog that exists.
        if self.state in (State.ACCEPTED, State.COMPLETED):
            return
        super().handle_transport_error(now, reason)

    def handle_message(self, response: Response, now: float) -> None:
        """Process a response matched to this transaction."""
        status = response.status
        if self.state in (State.CALLING, State.PROCEEDING):
            self._deadlines.pop("A", None)
            if status < 200:
                self.state = State.PROCEEDING
                self._deadlines.pop("B", None)
                self._events.append(ResponseReceived(response))
            elif status < 300:
                self.state = State.ACCEPTED
                self._deadlines.clear()
                self._set("M", now, 64 * self.timers.t1)
                self._events.append(ResponseReceived(response))
            else:
                self.state = State.COMPLETED
                self._deadlines.clear()
                self.ack = self.build_ack(response)
                self._out.append(self.ack)
                self._set("D", now, 0.0 if self.reliable else self.timers.d)
                self._events.append(ResponseReceived(response))
        elif self.state is State.ACCEPTED and 200 <= status < 300:
            self._events.append(ResponseReceived(response))
        elif self.state is State.COMPLETED and status >= 300 and self.ack is not None:
            self._out.append(self.ack)  # our ACK was lost: the final response came again

    def _on_timer(self, name: str, now: float) -> None:
        if name == "A" and self.state is State.CALLING:
            self._out.append(self.request)
            self._set("A", now, self._intervals["A"] * 2)
        elif name == "B" and self.state is State.CALLING:
            self._events.append(TransactionTimedOut("B"))
            self._terminate()
        elif name in ("D", "M"):
            self._terminate()

    def build_ack(self, response: Response) -> Request:
        """ACK for a non-2xx final response (§17.1.1.3): same branch, To from the response."""
        req = self.request
        headers = Headers()
        headers.add("Via", req.headers.values("Via")[0])
        for route in req.headers.get_all("Route"):
            headers.add("Route", route)
        headers.add("Max-Forwards", "70")
        headers.add("From", req.headers.get("From") or "")
        headers.add("To", response.headers.get("To") or "")
        headers.add("Call-ID", req.headers.get("Call-ID") or "")
        headers.add("CSeq", f"{req.cseq[0]} ACK")
        return Request("ACK", req.uri, headers)

    def build_cancel(self) -> Request:
        """CANCEL for this INVITE (§9.1): same Request-URI, Call-ID, To, From, CSeq number,
        the same single top Via (so it matches the INVITE's server transaction) and Routes."""
        req = self.request
        headers = Headers()
        headers.add("Via", req.headers.values("Via")[0])
        for route in req.headers.get_all("Route"):
            headers.add("Route", route)
        headers.add("Max-Forwards", "70")
        headers.add("From", req.headers.get("From") or "")
        headers.add("To", req.headers.get("To") or "")
        headers.add("Call-ID", req.headers.get("Call-ID") or "")
        headers.add("CSeq", f"{req.cseq[0]} CANCEL")
        for name in ("Authorization", "Proxy-Authorization"):
            for value in req.headers.get_all(name):
                headers.add(name, value)
        return Request("CANCEL", req.uri, headers)


class ClientNonInviteTransaction(_Transaction):
    """Client non-INVITE transaction (§17.1.2)."""

    def __init__(
        self, request: Request, reliable: bool = False, timers: TimerConfig | None = None
    ) -> None:
        if request.method in ("INVITE", "ACK"):
            raise SipStateError("ClientNonInviteTransaction cannot carry INVITE or ACK")
        super().__init__(request, reliable, timers or TimerConfig())

    def start(self, now: float) -> None:
        """Send the request and arm Timers E (unreliable only) and F."""
        self.state = State.TRYING
        self._out.append(self.request)
        if not self.reliable:
            self._set("E", now, self.timers.t1)
        self._set("F", now, 64 * self.timers.t1)

    def handle_message(self, response: Response, now: float) -> None:
        """Process a response matched to this transaction."""
        if self.state not in (State.TRYING, State.PROCEEDING):
            return  # retransmitted final response in Completed: absorbed (§17.1.2.2)
        if response.status < 200:
            self.state = State.PROCEEDING
        else:
            self.state = State.COMPLETED
            self._deadlines.clear()
            self._set("K", now, 0.0 if self.reliable else self.timers.t4)
        self._events.append(ResponseReceived(response))

    def _on_timer(self, name: str, now: float) -> None:
        if name == "E" and self.state in (State.TRYING, State.PROCEEDING):
            self._out.append(self.request)
            if self.state is State.PROCEEDING:
                interval = self.timers.t2
            else:
                interval = min(self._intervals["E"] * 2, self.timers.t2)
            self._set("E", now, interval)
        elif name == "F" and self.state in (State.TRYING, State.PROCEEDING):
            self._events.append(TransactionTimedOut("F"))
            self._terminate()
        elif name == "K":
            self._terminate()


class ServerInviteTransaction(_Transaction):
    """Server INVITE transaction (§17.2.1, RFC 6026).

    Unlike bare RFC 3261, the 2xx is retransmitted here (T1 doubling to T2) until the ACK is
    passed in or 64*T1 passes; the TU (the dialog) would otherwise have to run that timer.
    """

    def __init__(
        self, request: Request, reliable: bool = False, timers: TimerConfig | None = None
    ) -> None:
        super().__init__(request, reliable, timers or TimerConfig())
        self.state = State.PROCEEDING
        self.last_response: Response | None = None

    def send_response(self, response: Response, now: float) -> None:
        """Send a response from the TU."""
        if self.state is not State.PROCEEDING:
            raise SipStateError("final response already sent")
        self.last_response = response
        self._out.append(response)
        if response.status < 200:
            return
        if response.status < 300:
            self.state = State.ACCEPTED
            if not self.reliable:
                self._set("G", now, self.timers.t1)
            self._set("L", now, 64 * self.timers.t1)
        else:
            self.state = State.COMPLETED
            if not self.reliable:
                self._set("G", now, self.timers.t1)
            self._set("H", now, 64 * self.timers.t1)

    def handle_message(self, message: Message, now: float) -> None:
        """A retransmitted INVITE or the ACK."""
        if not isinstance(message, Request):
            return
        if message.method == "INVITE":
            if self.last_response is not None and self.state in (
                State.PROCEEDING,
                State.COMPLETED,
                State.ACCEPTED,
            ):
                self._out.append(self.last_response)
        elif message.method == "ACK":
            if self.state is State.COMPLETED:
                self.state = State.CONFIRMED
                self._deadlines.clear()
                self._set("I", now, 0.0 if self.reliable else self.timers.t4)
                self._events.append(AckReceived(message))
            elif self.state is State.ACCEPTED:
                self._events.append(AckReceived(message))
                self._terminate()

    def _on_timer(self, name: str, now: float) -> None:
        if name == "G" and self.state in (State.COMPLETED, State.ACCEPTED):
            assert self.last_response is not None
            self._out.append(self.last_response)
            self._set("G", now, min(self._intervals["G"] * 2, self.timers.t2))
        elif name in ("H", "L") and self.state in (State.COMPLETED, State.ACCEPTED):
            self._events.append(TransactionTimedOut(name))
            self._terminate()
        elif name == "I":
            self._terminate()


class ServerNonInviteTransaction(_Transaction):
    """Server non-INVITE transaction (§17.2.2)."""

    def __init__(
        self, request: Request, reliable: bool = False, timers: TimerConfig | None = None
    ) -> None:
        super().__init__(request, reliable, timers or TimerConfig())
        self.state = State.TRYING
        self.last_response: Response | None = None

    def send_response(self, response: Response, now: float) -> None:
        """Send a response from the TU."""
        if self.state not in (State.TRYING, State.PROCEEDING):
            raise SipStateError("final response already sent")
        self.last_response = response
        self._out.append(response)
        if response.status < 200:
            self.state = State.PROCEEDING
        else:
            self.state = State.COMPLETED
            self._set("J", now, 0.0 if self.reliable else 64 * self.timers.t1)

    def handle_message(self, message: Message, now: float) -> None:
        """A retransmission of the request: resend the last response (§17.2.2)."""
        if (
            isinstance(message, Request)
            and self.last_response is not None
            and self.state in (State.PROCEEDING, State.COMPLETED)
        ):
            self._out.append(self.last_response)

    def _on_timer(self, name: str, now: float) -> None:
        if name == "J":
            self._terminate()
