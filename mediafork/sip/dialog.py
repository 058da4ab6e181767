"""UAC dialogs (RFC 3261 §12) and building responses to requests (§8.2.6).

A dialog is created from the 2xx to our INVITE. It remembers what identifies it (Call-ID and
tags), the CSeq spaces of both sides, where in-dialog requests go (remote target and route set)
and builds those requests; it also recognises the peer's in-dialog requests.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from .errors import SipParseError
from .headers import Headers, NameAddr, parse_name_addrs
from .message import Request, Response
from .uri import SipUri

REASON_PHRASES = {
    100: "Trying",
    180: "Ringing",
    200: "OK",
    302: "Moved Temporarily",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    415: "Unsupported Media Type",
    420: "Bad Extension",
    422: "Session Interval Too Small",
    481: "Call/Transaction Does Not Exist",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    603: "Decline",
}


def new_tag() -> str:
    """A fresh From/To tag (RFC 3261 §19.3: at least 32 bits of randomness)."""
    return secrets.token_hex(6)


def build_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> Response:
    """A response to ``request`` (§8.2.6.2): Via, From, Call-ID, CSeq copied; To gets
    ``to_tag`` unless it already has one (or the response is 100 Trying)."""
    out = Headers()
    for via in request.headers.get_all("Via"):
        out.add("Via", via)
    out.add("From", request.headers.get("From") or "")
    to_value = request.headers.get("To") or ""
    if to_tag and status != 100 and request.to.tag is None:
        to_value = f"{to_value};tag={to_tag}"
    out.add("To", to_value)
    out.add("Call-ID", request.headers.get("Call-ID") or "")
    out.add("CSeq", request.headers.get("CSeq") or "")
    for name, value in headers or []:
        out.add(name, value)
    return Response(status, reason or REASON_PHRASES.get(status, "Unknown"), out, body)


@dataclass
class Dialog:
    """The state of one dialog, seen from our side (we sent the INVITE)."""

    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str
    """Our From header value without tag (name-addr form)."""
    remote_uri: str
    """Their To header value without tag (name-addr form)."""
    local_seq: int
    remote_seq: int | None
    remote_target: str
    """URI from the peer's Contact: Request-URI of in-dialog requests."""
    route_set: list[str] = field(default_factory=list)
    """Record-Route of the 2xx, reversed (§12.1.2)."""
    secure: bool = False

    @classmethod
    def from_invite_response(cls, invite: Request, response: Response) -> Dialog:
        """Create the dialog from our INVITE and the 2xx (or reliable 1xx) that answered it."""
        to = response.to
        if to.tag is None:
            raise SipParseError("2xx to INVITE without To tag")
        frm = invite.from_
        if frm.tag is None:
            raise SipParseError("our INVITE has no From tag")
        contacts = response.contacts
        if not contacts:
            raise SipParseError("2xx to INVITE without Contact")
        routes = [
            str(r)
            for line in response.headers.get_all("Record-Route")
            for r in parse_name_addrs(line)
        ]
        routes.reverse()
        local = NameAddr(
            frm.uri, frm.display_name, {k: v for k, v in frm.params.items() if k != "tag"}
        )
        remote = NameAddr(
            to.uri, to.display_name, {k: v for k, v in to.params.items() if k != "tag"}
        )
        return cls(
            call_id=invite.call_id,
            local_tag=frm.tag,
            remote_tag=to.tag,
            local_uri=str(local),
            remote_uri=str(remote),
            local_seq=invite.cseq[0],
            remote_seq=None,
            remote_target=str(contacts[0].uri),
            route_set=routes,
            secure=SipUri.parse(invite.uri).scheme == "sips",
        )

    def _base_headers(self, cseq: int, method: str) -> tuple[str, Headers]:
        headers = Headers()
        uri = self.remote_target
        routes = list(self.route_set)
        if routes and not NameAddr.parse(routes[0]).uri.has_param("lr"):
            # Strict router (§12.2.1.1): it becomes the Request-URI; the target goes last.
            uri = str(NameAddr.parse(routes[0]).uri)
            routes = routes[1:] + [f"<{self.remote_target}>"]
        for route in routes:
            headers.add("Route", route)
        headers.add("Max-Forwards", "70")
        headers.add("From", f"{self.local_uri};tag={self.local_tag}")
        headers.add("To", f"{self.remote_uri};tag={self.remote_tag}")
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", f"{cseq} {method}")
        return uri, headers

    def new_request(self, method: str) -> Request:
        """A new in-dialog request (BYE, re-INVITE, UPDATE, OPTIONS...) with the next CSeq.

        The caller adds Via (it knows the transport and branch), Contact and the body.
        """
        if method in ("ACK", "CANCEL"):
            raise ValueError("ACK and CANCEL reuse the CSeq of the request they refer to")
        self.local_seq += 1
        uri, headers = self._base_headers(self.local_seq, method)
        return Request(method, uri, headers)

    def ack(self, invite_cseq: int) -> Request:
        """The ACK for a 2xx to the INVITE with CSeq number ``invite_cseq`` (§13.2.2.4)."""
        uri, headers = self._base_headers(invite_cseq, "ACK")
        return Request("ACK", uri, headers)

    def matches(self, request: Request) -> bool:
        """True if ``request`` from the peer belongs to this dialog (§12.2.2)."""
        try:
            return (
                request.call_id == self.call_id
                and request.to.tag == self.local_tag
                and request.from_.tag == self.remote_tag
            )
        except SipParseError:
            return False

    def accept_remote_cseq(self, request: Request) -> bool:
        """Check and record the peer's CSeq; False if it is out of order (answer 500)."""
        number = request.cseq[0]
        if request.method in ("ACK", "CANCEL"):
            return True
        if self.remote_seq is not None and number <= self.remote_seq:
            return False
        self.remote_seq = number
        return True

    def update_target(self, request: Request) -> None:
        """A target refresh request (re-INVITE, UPDATE) may move the remote target (§12.2.2)."""
        contacts = request.contacts
        if contacts:
            self.remote_target = str(contacts[0].uri)

    def response(
        self,
        request: Request,
        status: int,
        reason: str | None = None,
        *,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> Response:
        """A response to an in-dialog request from the peer (our tag is already in To)."""
        return build_response(
            request, status, reason, to_tag=self.local_tag, headers=headers, body=body
        )
