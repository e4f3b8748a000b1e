"""One side of a B2BUA call once its dialog exists (RFC 3261 §12): what is
needed to send it in-dialog requests (ACK, BYE, re-INVITE, UPDATE, INFO)
and to recognise its retransmissions.

The gateway is a UA on each side, so each side only ever sees the gateway's
own Via, Contact and tags: topology hiding comes from never copying these
headers from one side to the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiosipua import SipRequest

from gateway.sip.transport import Peer
from gateway.sip.wire import uri_host_port


@dataclass(slots=True)
class DialogSide:
    call_id: str
    local: str  # our From/To header value, with our tag
    remote: str  # theirs, with their tag
    remote_target: str  # their Contact URI
    route_set: list[str]  # Route headers to send, in order
    peer: Peer  # where requests go
    local_cseq: int = 1
    last_remote_cseq: int = 0
    contact: str = ""
    pending: dict[int, object] = field(default_factory=dict)

    def request(
        self,
        method: str,
        via_host: str,
        *,
        branch: str,
        body: bytes = b"",
        content_type: str | None = None,
        cseq: int | None = None,
    ) -> SipRequest:
        """An in-dialog request. ACK reuses the INVITE's CSeq (pass ``cseq``);
        every other method takes the next local CSeq. ``branch`` comes from the
        core, which marks every branch it issues (loop detection, 482)."""
        if cseq is None:
            self.local_cseq += 1
            cseq = self.local_cseq
        req = SipRequest(method=method, uri=self.remote_target)
        h = req.headers
        h.append("Via", f"SIP/2.0/{self.peer.transport.upper()} {via_host};branch={branch};rport")
        for route in self.route_set:
            h.append("Route", route)
        h.append("Max-Forwards", "70")
        h.append("From", self.local)
        h.append("To", self.remote)
        h.append("Call-ID", self.call_id)
        h.append("CSeq", f"{cseq} {method}")
        if self.contact and method in ("INVITE", "UPDATE"):
            h.append("Contact", self.contact)
        if body:
            h.append("Content-Type", content_type or "application/sdp")
            req.body = body
        return req


def next_hop(route_set: list[str], remote_target: str, fallback: Peer) -> Peer:
    """Where an in-dialog request goes: the first route (loose routing), else the
    remote target; over TCP, back down the connection the dialog came on."""
    if fallback.transport == "tcp":
        return fallback
    hop = uri_host_port(route_set[0]) if route_set else uri_host_port(remote_target)
    return Peer("udp", hop[0], hop[1]) if hop else fallback
