"""UAC dialog state from a 2xx (RFC 3261 §12): tags, CSeq, remote target and route set."""

from __future__ import annotations

from mediafork.sip.dialog import Dialog, build_response
from mediafork.sip.headers import Headers
from mediafork.sip.message import Request


def invite() -> Request:
    h = Headers()
    h.add("Via", "SIP/2.0/UDP 192.0.2.10:5080;branch=z9hG4bKx")
    h.add("From", "<sip:mediafork@192.0.2.10>;tag=ours")
    h.add("To", "<sip:rec@srs.example.com>")
    h.add("Call-ID", "c1@192.0.2.10")
    h.add("CSeq", "10 INVITE")
    return Request("INVITE", "sip:rec@srs.example.com", h)


def ok(record_routes: list[str]) -> Dialog:
    req = invite()
    headers = [("Contact", "<sip:srs@198.51.100.7:5062>")] + [("Record-Route", r) for r in record_routes]
    return Dialog.from_invite_response(req, build_response(req, 200, to_tag="theirs", headers=headers))


def test_dialog_from_2xx_and_in_dialog_requests() -> None:
    dialog = ok(["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"])
    assert (dialog.call_id, dialog.local_tag, dialog.remote_tag) == ("c1@192.0.2.10", "ours", "theirs")
    assert dialog.route_set == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    bye = dialog.new_request("BYE")
    assert bye.uri == "sip:srs@198.51.100.7:5062" and bye.cseq == (11, "BYE")
    assert bye.headers.get_all("Route") == dialog.route_set
    assert bye.from_.tag == "ours" and bye.to.tag == "theirs"
    ack = dialog.ack(10)
    assert ack.cseq == (10, "ACK")
    assert dialog.new_request("UPDATE").cseq == (12, "UPDATE")


def test_strict_router_becomes_request_uri() -> None:
    dialog = ok(["<sip:strict.example.com>"])
    req = dialog.new_request("OPTIONS")
    assert req.uri == "sip:strict.example.com"
    assert req.headers.get_all("Route") == ["<sip:srs@198.51.100.7:5062>"]


def test_matching_peer_requests_and_remote_cseq() -> None:
    dialog = ok([])
    h = Headers()
    h.add("Via", "SIP/2.0/UDP 198.51.100.7;branch=z9hG4bKs")
    h.add("From", "<sip:rec@srs.example.com>;tag=theirs")
    h.add("To", "<sip:mediafork@192.0.2.10>;tag=ours")
    h.add("Call-ID", "c1@192.0.2.10")
    h.add("CSeq", "5 BYE")
    bye = Request("BYE", "sip:mediafork@192.0.2.10", h)
    assert dialog.matches(bye) and dialog.accept_remote_cseq(bye)
    assert not dialog.accept_remote_cseq(bye)  # same CSeq again: out of order
    other = Request("BYE", bye.uri, h.copy())
    other.headers.set("To", "<sip:mediafork@192.0.2.10>;tag=nope")
    assert not dialog.matches(other)
    resp = dialog.response(bye, 200)
    assert resp.to.tag == "ours" and resp.cseq == (5, "BYE")
    assert resp.headers.get_all("Via") == bye.headers.get_all("Via")
