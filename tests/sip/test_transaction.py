"""RFC 3261 §17 transactions driven by a fake clock (time is only ever an argument)."""

from __future__ import annotations

import pytest

from mediafork.sip.dialog import build_response
from mediafork.sip.headers import Headers
from mediafork.sip.message import Request, Response
from mediafork.sip.transaction import (
    AckReceived,
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ResponseReceived,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    State,
    TimerConfig,
    TransactionTimedOut,
    TransportFailed,
)

T = TimerConfig(t1=0.5, t2=4.0, t4=5.0)


def request(method: str = "INVITE") -> Request:
    h = Headers()
    h.add("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKtest1;rport")
    h.add("Route", "<sip:proxy.example.com;lr>")
    h.add("Max-Forwards", "70")
    h.add("From", "<sip:src@192.0.2.1>;tag=ft")
    h.add("To", "<sip:rec@srs.example.com>")
    h.add("Call-ID", "cid@192.0.2.1")
    h.add("CSeq", f"5 {method}")
    return Request(method, "sip:rec@srs.example.com", h)


def response(req: Request, status: int) -> Response:
    return build_response(req, status, to_tag="tt")


def run_until(txn: object, end: float) -> list[float]:
    """Advance the fake clock timer by timer until ``end``; return when messages went out."""
    sent: list[float] = []
    while (deadline := txn.get_timer()) is not None and deadline <= end:  # type: ignore[attr-defined]
        txn.handle_timer(deadline)  # type: ignore[attr-defined]
        if txn.messages_to_send():  # type: ignore[attr-defined]
            sent.append(round(deadline, 6))
    return sent


def test_invite_retransmits_doubling_then_timer_b() -> None:
    txn = ClientInviteTransaction(request(), reliable=False, timers=T)
    txn.start(0.0)
    assert len(txn.messages_to_send()) == 1
    sent = run_until(txn, 100.0)
    # Timer A: T1, 2T1, 4T1... (not capped for INVITE, §17.1.1.2) until Timer B at 64*T1.
    assert sent == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert txn.next_event() == TransactionTimedOut("B")
    assert txn.terminated and txn.get_timer() is None


def test_non_invite_retransmits_capped_at_t2_then_timer_f() -> None:
    txn = ClientNonInviteTransaction(request("OPTIONS"), reliable=False, timers=T)
    txn.start(0.0)
    txn.messages_to_send()
    sent = run_until(txn, 100.0)
    gaps = [round(b - a, 6) for a, b in zip([0.0, *sent], sent, strict=False)]
    assert gaps[:4] == [0.5, 1.0, 2.0, 4.0] and set(gaps[4:]) == {4.0}
    assert sent[-1] <= 32.0
    assert txn.next_event() == TransactionTimedOut("F")


def test_non_invite_proceeding_retransmits_at_t2() -> None:
    req = request("BYE")
    txn = ClientNonInviteTransaction(req, reliable=False, timers=T)
    txn.start(0.0)
    txn.handle_message(response(req, 100), 0.1)
    assert isinstance(txn.next_event(), ResponseReceived) and txn.state is State.PROCEEDING
    sent = run_until(txn, 9.0)
    assert sent == [0.5, 4.5, 8.5]


def test_reliable_transport_never_retransmits() -> None:
    for txn in (
        ClientInviteTransaction(request(), reliable=True, timers=T),
        ClientNonInviteTransaction(request("OPTIONS"), reliable=True, timers=T),
    ):
        txn.start(0.0)
        txn.messages_to_send()
        assert run_until(txn, 100.0) == []
        assert isinstance(txn.next_event(), TransactionTimedOut)


def test_non_2xx_is_acked_in_the_transaction_and_timer_d() -> None:
    req = request()
    txn = ClientInviteTransaction(req, reliable=False, timers=T)
    txn.start(0.0)
    txn.messages_to_send()
    txn.handle_message(response(req, 180), 0.2)
    txn.handle_message(response(req, 486), 0.4)
    (ack,) = txn.messages_to_send()
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert ack.cseq == (5, "ACK") and ack.to.tag == "tt"
    assert ack.headers.get_all("Via") == [req.headers.get("Via")]
    assert ack.headers.get_all("Route") == ["<sip:proxy.example.com;lr>"]
    events = [txn.next_event(), txn.next_event()]
    assert [e.response.status for e in events if isinstance(e, ResponseReceived)] == [180, 486]
    # A retransmitted 486 is absorbed and ACKed again.
    txn.handle_message(response(req, 486), 1.0)
    assert [m.method for m in txn.messages_to_send()] == ["ACK"]  # type: ignore[union-attr]
    assert txn.next_event() is None
    assert txn.state is State.COMPLETED and txn.get_timer() == pytest.approx(32.4)
    txn.handle_timer(32.4)
    assert txn.terminated


def test_timer_d_and_k_are_zero_on_reliable_transports() -> None:
    req = request()
    txn = ClientInviteTransaction(req, reliable=True, timers=T)
    txn.start(0.0)
    txn.handle_message(response(req, 503), 0.1)
    assert txn.get_timer() == pytest.approx(0.1)
    txn.handle_timer(0.1)
    assert txn.terminated
    opt = request("OPTIONS")
    nit = ClientNonInviteTransaction(opt, reliable=True, timers=T)
    nit.start(0.0)
    nit.handle_message(response(opt, 200), 0.1)
    assert nit.get_timer() == pytest.approx(0.1)
    unreliable = ClientNonInviteTransaction(opt, reliable=False, timers=T)
    unreliable.start(0.0)
    unreliable.handle_message(response(opt, 200), 0.1)
    assert unreliable.get_timer() == pytest.approx(5.1)  # Timer K = T4


def test_2xx_goes_to_accepted_and_retransmissions_reach_the_tu() -> None:
    req = request()
    txn = ClientInviteTransaction(req, reliable=False, timers=T)
    txn.start(0.0)
    txn.handle_message(response(req, 200), 0.3)
    txn.handle_message(response(req, 200), 0.8)
    assert txn.state is State.ACCEPTED
    statuses = []
    while (event := txn.next_event()) is not None:
        assert isinstance(event, ResponseReceived)
        statuses.append(event.response.status)
    assert statuses == [200, 200]
    assert [m for m in txn.messages_to_send() if isinstance(m, Request)] == [req]  # no ACK here


def test_cancel_built_per_rfc3261_section_9_1() -> None:
    req = request()
    txn = ClientInviteTransaction(req, timers=T)
    cancel = txn.build_cancel()
    assert cancel.method == "CANCEL" and cancel.uri == req.uri
    assert cancel.cseq == (5, "CANCEL")
    assert cancel.headers.get_all("Via") == req.headers.get_all("Via")
    for name in ("From", "To", "Call-ID", "Route"):
        assert cancel.headers.get(name) == req.headers.get(name)


def test_transport_error_ends_the_transaction() -> None:
    txn = ClientNonInviteTransaction(request("OPTIONS"), timers=T)
    txn.start(0.0)
    txn.handle_transport_error(0.1, "ECONNREFUSED")
    assert txn.next_event() == TransportFailed("ECONNREFUSED") and txn.terminated


def test_server_invite_non_2xx_retransmits_until_ack_then_timer_i() -> None:
    req = request()
    txn = ServerInviteTransaction(req, reliable=False, timers=T)
    txn.send_response(response(req, 488), 0.0)
    assert len(txn.messages_to_send()) == 1
    assert run_until(txn, 3.6) == [0.5, 1.5, 3.5]  # Timer G
    txn.handle_message(req, 3.7)  # retransmitted INVITE → last response again
    assert len(txn.messages_to_send()) == 1
    ack = Request("ACK", req.uri, req.headers.copy())
    txn.handle_message(ack, 4.0)
    assert isinstance(txn.next_event(), AckReceived) and txn.state is State.CONFIRMED
    assert txn.get_timer() == pytest.approx(9.0)  # Timer I = T4
    assert run_until(txn, 20.0) == [] and txn.terminated


def test_server_invite_timer_h_without_ack() -> None:
    req = request()
    txn = ServerInviteTransaction(req, reliable=True, timers=T)
    txn.send_response(response(req, 500), 0.0)
    txn.messages_to_send()
    assert run_until(txn, 100.0) == []
    assert txn.next_event() == TransactionTimedOut("H")


def test_server_invite_2xx_retransmitted_until_ack() -> None:
    req = request()
    txn = ServerInviteTransaction(req, reliable=False, timers=T)
    txn.send_response(response(req, 200), 0.0)
    txn.messages_to_send()
    assert run_until(txn, 8.0) == [0.5, 1.5, 3.5, 7.5]
    txn.handle_message(Request("ACK", req.uri, req.headers.copy()), 8.0)
    assert isinstance(txn.next_event(), AckReceived) and txn.terminated


def test_server_non_invite_absorbs_retransmissions_then_timer_j() -> None:
    req = request("BYE")
    txn = ServerNonInviteTransaction(req, reliable=False, timers=T)
    txn.send_response(response(req, 200), 0.0)
    txn.messages_to_send()
    txn.handle_message(req, 1.0)
    assert [m.status for m in txn.messages_to_send() if isinstance(m, Response)] == [200]
    assert txn.get_timer() == pytest.approx(32.0)
    txn.handle_timer(32.0)
    assert txn.terminated
    reliable = ServerNonInviteTransaction(req, reliable=True, timers=T)
    reliable.send_response(response(req, 200), 0.0)
    assert reliable.get_timer() == 0.0
