"""The B2BUA: one inbound (or agent-placed) call, its caller side "A" and the
agent legs "B" it rings (issue 6, R4, R7, R9).

A call is driven by the messages the dispatcher hands it and by loop timers;
it never blocks and owns no task. Its life:

    ringing --(a leg answers)--> answered --(ACK from A)--> confirmed --> ended
       \\--(CANCEL from A, every leg fails, hunt exhausted)------------> ended

``_end`` runs exactly once: it releases the R7 slot, stops every timer and
hands the outcome to the recorder. Every path out of a call goes through it,
so a slot cannot leak: BYE from either side, CANCEL, a failure final, ACK
timeout (Timer H), the maximum call length, or a transport error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Protocol

from aiosipua import SipRequest, SipResponse

from gateway.domain.call_slots import Slot
from gateway.domain.calls import Disposition, Step, Target, carrier_status, disposition
from gateway.sip.codec import encode
from gateway.sip.dialog import DialogSide, next_hop
from gateway.sip.transactions import T1, T2, TIMER_B, ClientTransaction
from gateway.sip.transport import Peer
from gateway.sip.wire import (
    cseq_number,
    new_branch,
    new_call_id,
    new_tag,
    response,
    tag_of,
    uri_host_port,
    uri_of,
)

if TYPE_CHECKING:
    from gateway.sip.metrics import SipMetrics

RELAYED_PROVISIONALS = (180, 181, 182, 183)


class Host(Protocol):
    loop: asyncio.AbstractEventLoop
    via_host: str
    contact: str
    metrics: SipMetrics

    def send(self, message: SipRequest | SipResponse, peer: Peer) -> bool: ...
    def send_raw(self, data: bytes, peer: Peer, method: str, status: int | None) -> bool: ...
    def register(self, key: str, tx: ClientTransaction) -> None: ...
    def unregister(self, key: str) -> None: ...
    def bind_dialog(self, call_id: str, local_tag: str, call: Call, side: object) -> None: ...
    def destination_uri(self, destination: str) -> str | None: ...


@dataclass(slots=True)
class Outcome:
    """What the call record stores, filled in as the call goes."""

    call_id: str
    direction: str
    caller: str
    callee: str
    invited_at: float
    targets_tried: list[int] = field(default_factory=list)
    answered_by: int | None = None
    answered_at: float | None = None
    ended_at: float | None = None
    disposition: Disposition = "no_answer"


class Leg:
    """One agent leg: an INVITE we sent, and its dialog once it answers."""

    __slots__ = (
        "ack",
        "call_id",
        "dialog",
        "from_header",
        "invite",
        "peer",
        "state",
        "step",
        "tag",
        "target",
        "tx",
    )

    def __init__(self, target: Target, step: int, uri: str, peer: Peer) -> None:
        self.target = target
        self.step = step
        self.call_id = new_call_id()
        self.from_header = ""
        self.tag = new_tag()
        self.ack: tuple[bytes, Peer] | None = None  # our last ACK, repeated for a retransmitted final
        self.peer = peer
        self.state = "calling"  # calling -> early -> answered | done
        self.invite: SipRequest | None = None
        self.tx: ClientTransaction | None = None
        self.dialog: DialogSide | None = None


class Call:
    def __init__(
        self,
        host: Host,
        invite: SipRequest,
        peer: Peer,
        plan: tuple[Step, ...],
        outcome: Outcome,
        *,
        slot: Slot | None,
        b_from_user: str,
        b_headers: tuple[tuple[str, str], ...] = (),
        max_call_s: float,
        on_end: Callable[[Call], None],
    ) -> None:
        self.host = host
        self.invite = invite
        self.peer = peer
        self.plan = plan
        self.outcome = outcome
        self.slot = slot
        self.b_from_user = b_from_user
        self.b_headers = b_headers
        self.max_call_s = max_call_s
        self.on_end = on_end
        self.a_tag = new_tag()
        self.a_dialog: DialogSide | None = None
        self.state = "ringing"
        self.legs: list[Leg] = []
        self.winner: Leg | None = None
        self.step = -1
        self.last_a_response: bytes | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._step_timer: asyncio.TimerHandle | None = None
        self._started = time.monotonic()
        self._provisional_seen = False
        self._ok_interval = T1
        self._ok: bytes = b""
        self.final_reply: tuple[bytes, Peer] | None = None

    # -- starting and ringing -------------------------------------------------

    def start(self) -> None:
        self._a_dialog_init()
        self._next_step()

    def _a_dialog_init(self) -> None:
        inv = self.invite
        to = inv.headers.get_first("to") or ""
        local = to if tag_of(to) else f"{to};tag={self.a_tag}"
        target = uri_of(inv.headers.get_first("contact")) or inv.uri
        routes = list(inv.headers.get("record-route"))
        self.a_dialog = DialogSide(
            call_id=inv.headers.get_first("call-id") or "",
            local=local,
            remote=inv.headers.get_first("from") or "",
            remote_target=target,
            route_set=routes,
            peer=next_hop(routes, target, self.peer),
            local_cseq=0,
            last_remote_cseq=cseq_number(inv),
            contact=self.host.contact,
        )
        self.host.bind_dialog(self.a_dialog.call_id, self.a_tag, self, "a")

    def _next_step(self) -> None:
        self.step += 1
        if self.step >= len(self.plan):
            self._unanswered()
            return
        step = self.plan[self.step]
        self._step_timer = self.host.loop.call_later(step.timeout_s, self._step_timed_out, self.step)
        for target in step.targets:
            self._ring(target)
        if not any(leg.step == self.step and leg.state != "done" for leg in self.legs):
            self._step_over()  # every target of the step was unreachable

    def _ring(self, target: Target) -> None:
        uri = self.host.destination_uri(target.destination)
        hop = uri_host_port(uri) if uri else None
        if uri is None or hop is None:
            return  # unreachable: not rung, so it cannot answer
        leg = Leg(target, self.step, uri, Peer("udp", hop[0], hop[1]))
        if target.user_id is not None:
            self.outcome.targets_tried.append(target.user_id)
        leg.from_header = f"<sip:{self.b_from_user}@{self.host.via_host}>;tag={leg.tag}"
        inv = SipRequest(method="INVITE", uri=uri)
        h = inv.headers
        h.append("Via", f"SIP/2.0/UDP {self.host.via_host};branch={new_branch()};rport")
        max_forwards = self.invite.headers.get_first("max-forwards") or "70"
        h.append("Max-Forwards", str(max(int(max_forwards) - 1, 1) if max_forwards.isdigit() else 69))
        h.append("From", leg.from_header)
        h.append("To", f"<{uri}>")
        h.append("Call-ID", leg.call_id)
        h.append("CSeq", "1 INVITE")
        h.append("Contact", self.host.contact)
        for name, value in self.b_headers:
            h.append(name, value)
        if self.invite.body:
            h.append("Content-Type", self.invite.headers.get_first("content-type") or "application/sdp")
            inv.body = self.invite.body
        leg.invite = inv
        self.legs.append(leg)
        self.host.bind_dialog(leg.call_id, leg.tag, self, leg)
        leg.tx = ClientTransaction(
            self.host, inv, leg.peer, partial(self._leg_response, leg), partial(self._leg_timed_out, leg)
        )

    def _step_timed_out(self, step: int) -> None:
        if self.state != "ringing" or step != self.step:
            return
        for leg in self.legs:
            if leg.step == step:
                self._cancel_leg(leg)
        self._next_step()

    def _step_over(self) -> None:
        if self._step_timer is not None:
            self._step_timer.cancel()
        self._next_step()

    def _cancel_leg(self, leg: Leg) -> None:
        if leg.state not in ("calling", "early") or leg.invite is None:
            return
        leg.state = "canceling"
        inv = leg.invite
        cancel = SipRequest(method="CANCEL", uri=inv.uri)
        for name in ("via", "from", "to", "call-id"):
            cancel.headers.append(
                name.title() if name != "call-id" else "Call-ID", inv.headers.get_first(name) or ""
            )
        cancel.headers.append("Max-Forwards", "70")
        cancel.headers.append("CSeq", "1 CANCEL")
        ClientTransaction(self.host, cancel, leg.peer)

    # -- responses from agent legs ----------------------------------------------

    def _leg_response(self, leg: Leg, resp: SipResponse) -> None:
        code = resp.status_code
        if code < 200:
            if leg.state == "calling":
                leg.state = "early"
            if code in RELAYED_PROVISIONALS and self.state == "ringing":
                if not self._provisional_seen:
                    self._provisional_seen = True
                    self.host.metrics.setup_seconds.labels("provisional").observe(
                        time.monotonic() - self._started
                    )
                self._answer_a(code, resp.reason_phrase, resp.body, resp.headers.get_first("content-type"))
            return
        if code < 300:
            self._leg_answered(leg, resp)
            return
        self._ack_failure(leg, resp)
        if leg.state == "done":
            return  # a retransmitted final
        leg.state = "done"
        self._leg_over(leg)

    def _leg_timed_out(self, leg: Leg) -> None:
        if leg.state == "done":
            return
        leg.state = "done"
        self._leg_over(leg)

    def _leg_over(self, leg: Leg) -> None:
        step_done = all(other.state == "done" for other in self.legs if other.step == self.step)
        if self.state == "ringing" and leg.step == self.step and step_done:
            self._step_over()

    def _leg_answered(self, leg: Leg, resp: SipResponse) -> None:
        if leg.dialog is None:
            to = resp.headers.get_first("to") or ""
            target = uri_of(resp.headers.get_first("contact")) or leg.target.destination
            routes = list(reversed(resp.headers.get("record-route")))
            leg.dialog = DialogSide(
                call_id=leg.call_id,
                local=leg.from_header,
                remote=to,
                remote_target=target,
                route_set=routes,
                peer=next_hop(routes, target, leg.peer),
                contact=self.host.contact,
            )
        ack = encode(leg.dialog.request("ACK", self.host.via_host, cseq=1))
        leg.ack = (ack, leg.dialog.peer)
        self.host.send_raw(ack, leg.dialog.peer, "ACK", None)
        if leg.state == "answered":
            return  # a retransmitted 200: it is ACKed again, nothing else
        if self.state != "ringing":  # a second answer, or one after the caller left: hang it up
            leg.state = "answered"
            self._send_b(leg, leg.dialog.request("BYE", self.host.via_host), transaction=True)
            leg.state = "done"
            return
        leg.state = "answered"
        self.winner = leg
        self.state = "answered"
        if self._step_timer is not None:
            self._step_timer.cancel()
        for other in self.legs:
            if other is not leg:
                self._cancel_leg(other)  # ring_all: the first 200 wins (R4)
        now = time.time()
        self.outcome.answered_at = now
        self.outcome.answered_by = leg.target.user_id
        self.host.metrics.setup_seconds.labels("answer").observe(time.monotonic() - self._started)
        self._answer_a(200, "OK", resp.body, resp.headers.get_first("content-type"))
        self._timers.append(self.host.loop.call_later(TIMER_B, self._ack_timed_out))
        self._timers.append(self.host.loop.call_later(self.max_call_s, self._too_long))

    def _ack_failure(self, leg: Leg, resp: SipResponse) -> None:
        """The hop-by-hop ACK of a non-2xx final (RFC 3261 §17.1.1.3)."""
        inv = leg.invite
        if inv is None:
            return
        ack = SipRequest(method="ACK", uri=inv.uri)
        h = ack.headers
        h.append("Via", inv.headers.get_first("via") or "")
        h.append("Max-Forwards", "70")
        h.append("From", inv.headers.get_first("from") or "")
        h.append("To", resp.headers.get_first("to") or "")
        h.append("Call-ID", leg.call_id)
        h.append("CSeq", "1 ACK")
        data = encode(ack)
        leg.ack = (data, leg.peer)
        self.host.send_raw(data, leg.peer, "ACK", None)

    # -- the caller's side --------------------------------------------------------

    def _answer_a(self, code: int, reason: str, body: bytes, content_type: str | None) -> None:
        extra: list[tuple[str, str]] = [("Contact", self.host.contact)]
        extra += [("Record-Route", rr) for rr in self.invite.headers.get("record-route")]
        resp = response(
            self.invite,
            code,
            reason,
            to_tag=self.a_tag,
            headers=tuple(extra),
            body=body,
            content_type=content_type,
        )
        data = encode(resp)
        self.last_a_response = data
        self.host.send_raw(data, self.peer, "INVITE", code)
        if code == 200 and self.peer.transport == "udp":
            self._ok = data
            self._timers.append(self.host.loop.call_later(T1, self._retransmit_ok))

    def _retransmit_ok(self) -> None:
        if self.state != "answered":
            return
        self.host.send_raw(self._ok, self.peer, "INVITE", 200)
        self._ok_interval = min(self._ok_interval * 2, T2)
        self._timers.append(self.host.loop.call_later(self._ok_interval, self._retransmit_ok))

    def _final_to_a(self, code: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        data = encode(response(self.invite, code, reason, to_tag=self.a_tag, headers=headers))
        self.last_a_response = data
        self.host.send_raw(data, self.peer, "INVITE", code)

    def resend_last(self) -> None:
        """The caller retransmitted its INVITE: repeat our latest answer."""
        if self.last_a_response is not None:
            self.host.send_raw(self.last_a_response, self.peer, "INVITE", None)

    def on_cancel(self, cancel: SipRequest) -> None:
        self.host.send(response(cancel, 200, "OK", to_tag=self.a_tag), self.peer)
        if self.state != "ringing":
            return  # too late: the call was answered or is over
        for leg in self.legs:
            self._cancel_leg(leg)
        self._final_to_a(487, "Request Terminated")
        self._end("canceled")

    def _unanswered(self) -> None:
        disp = disposition(answered=False, canceled=False, failed=False, rejected=not self.legs)
        code, reason = carrier_status(disp)
        self._final_to_a(code, reason)
        self._end(disp)

    # -- in-dialog requests from either side -----------------------------------------

    def on_request(self, side: object, req: SipRequest, peer: Peer) -> None:
        method = req.method
        if method == "ACK":
            if side == "a" and self.state == "answered":
                self.state = "confirmed"
            return
        dialog = self.a_dialog if side == "a" else (side.dialog if isinstance(side, Leg) else None)
        other = self._other(side)
        if self.state == "ended" or dialog is None or other is None:
            if method == "BYE" and self.state == "ended":
                self.host.send(response(req, 200, "OK"), peer)
            else:
                self.host.send(response(req, 481, "Call/Transaction Does Not Exist"), peer)
            return
        seq = cseq_number(req)
        if seq <= dialog.last_remote_cseq:
            cached = dialog.pending.get(seq)
            if isinstance(cached, bytes):
                self.host.send_raw(cached, peer, method, None)
            return  # a retransmission still being relayed
        dialog.last_remote_cseq = seq
        if method == "BYE":
            ok = encode(response(req, 200, "OK"))
            dialog.pending[seq] = ok
            self._send_side(other, "BYE")
            # The 200 leaves once the call's record is durable (the outbox's fsync).
            self.final_reply = (ok, peer)
            self._end("answered")
            return
        self._relay(req, peer, dialog, other)

    def _other(self, side: object) -> object | None:
        if side == "a":
            return self.winner
        if side is self.winner and self.state in ("answered", "confirmed"):
            return "a"
        return None

    def _relay(self, req: SipRequest, peer: Peer, dialog: DialogSide, other: object) -> None:
        """re-INVITE, UPDATE, INFO: forwarded to the other side, with its answer relayed back."""
        target = self.a_dialog if other == "a" else other.dialog if isinstance(other, Leg) else None
        if target is None:
            return
        fwd = target.request(
            req.method, self.host.via_host, body=req.body, content_type=req.headers.get_first("content-type")
        )
        seq = cseq_number(req)

        def relay_back(resp: SipResponse) -> None:
            if resp.status_code == 100:
                return
            back = response(
                req,
                resp.status_code,
                resp.reason_phrase,
                headers=(("Contact", self.host.contact),),
                body=resp.body,
                content_type=resp.headers.get_first("content-type"),
            )
            data = encode(back)
            if resp.status_code >= 200:
                dialog.pending[seq] = data
            self.host.send_raw(data, peer, req.method, resp.status_code)
            if req.method == "INVITE" and 200 <= resp.status_code < 300:
                self.host.send(target.request("ACK", self.host.via_host, cseq=cseq_number(fwd)), target.peer)

        def timed_out() -> None:
            self.host.send(response(req, 408, "Request Timeout"), peer)

        ClientTransaction(self.host, fwd, target.peer, relay_back, timed_out)

    def _send_side(self, side: object, method: str) -> None:
        dialog = self.a_dialog if side == "a" else side.dialog if isinstance(side, Leg) else None
        if dialog is not None:
            ClientTransaction(self.host, dialog.request(method, self.host.via_host), dialog.peer)

    def _send_b(self, leg: Leg, req: SipRequest, *, transaction: bool = False) -> None:
        peer = leg.dialog.peer if leg.dialog is not None else leg.peer
        if transaction:
            ClientTransaction(self.host, req, peer)
        else:
            self.host.send(req, peer)

    # -- endings ---------------------------------------------------------------------------

    def send_final_reply(self) -> None:
        """Send the answer held back until the call's record was durable."""
        reply, self.final_reply = self.final_reply, None
        if reply is not None:
            self.host.send_raw(reply[0], reply[1], "BYE", 200)

    def _ack_timed_out(self) -> None:
        if self.state == "answered":  # Timer H: the caller never ACKed our 200
            self._hang_up_both("failed")

    def _too_long(self) -> None:
        if self.state in ("answered", "confirmed"):
            self._hang_up_both("answered")

    def _hang_up_both(self, disp: Disposition) -> None:
        self._send_side("a", "BYE")
        if self.winner is not None:
            self._send_side(self.winner, "BYE")
        self._end(disp)

    def abort(self) -> None:
        """The gateway is stopping: end the call where it stands."""
        if self.state == "ringing":
            for leg in self.legs:
                self._cancel_leg(leg)
            self._final_to_a(503, "Service Unavailable", (("Retry-After", "5"),))
            self._end("failed")
        elif self.state in ("answered", "confirmed"):
            self._hang_up_both("answered")

    def _end(self, disp: Disposition) -> None:
        if self.state == "ended":
            return
        self.state = "ended"
        if self.slot is not None:
            self.slot.release()
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        if self._step_timer is not None:
            self._step_timer.cancel()
        for leg in self.legs:
            if leg.tx is not None and leg.ack is not None:
                # Finished legs only repeat their ACK from now on; dropping the
                # reference to this call keeps ended calls cheap for the GC.
                leg.tx.on_response = partial(_repeat_ack, self.host, leg.ack)
                leg.tx.on_timeout = None
        self.outcome.ended_at = time.time()
        self.outcome.disposition = disp
        self.on_end(self)


def _repeat_ack(host: Host, ack: tuple[bytes, Peer], resp: SipResponse) -> None:
    if resp.status_code >= 200:
        host.send_raw(ack[0], ack[1], "ACK", None)
