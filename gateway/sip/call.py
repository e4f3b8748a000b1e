"""The B2BUA: one inbound (or agent-placed) call, its caller's dialog and the
agent legs it rings (issue 6, R4, R7, R9), above the transaction layer.

It never touches a socket or the loop: requests leave through client
transactions, answers through the caller's server transactions, and timers
(hunt steps, session timers, the longest call) through the core's scheduler.
Its life:

    routing -> ringing --(a leg answers)--> answered --(caller's ACK)--> confirmed --> ended
                  \\--(CANCEL or early BYE, every leg fails, hunt exhausted)----------> ended

:meth:`Call._end` runs exactly once: it releases the R7 slot, stops every
timer, forgets the dialogs and hands the outcome to the recorder. Every path
out of a call goes through it, so a slot cannot leak: BYE from either side,
CANCEL, a failure final, no ACK (Timer H), session expiry (RFC 4028), the
longest call, or a transport error.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from aiosipua import SipRequest, SipResponse

from gateway.domain.call_slots import Slot
from gateway.domain.calls import Disposition, Step, Target, carrier_status, disposition
from gateway.domain.index import Number
from gateway.sip import session_timer
from gateway.sip.codec import encode
from gateway.sip.dialog import DialogSide, next_hop
from gateway.sip.scheduler import Handle
from gateway.sip.session_timer import Session
from gateway.sip.transport import Peer
from gateway.sip.wire import (
    ALLOW,
    cseq_number,
    new_call_id,
    new_tag,
    response,
    uri_host_port,
    uri_of,
)

if TYPE_CHECKING:
    from gateway.sip.server import ClientTx, ServerTx, SipServer

RELAYED_PROVISIONALS = (180, 181, 182, 183)


class CallState(enum.Enum):
    ROUTING = "routing"  # waiting for the routing decision (round robin's turn)
    RINGING = "ringing"
    ANSWERED = "answered"  # our 2xx is out, the caller's ACK is not in yet
    CONFIRMED = "confirmed"
    ENDED = "ended"


class LegState(enum.Enum):
    CALLING = "calling"
    EARLY = "early"
    ANSWERED = "answered"
    DONE = "done"


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
    # R18: the chain as it went, one entry per step rung: who, why, for how
    # long, and how it ended ("rang the agent 20 s, no answer; rang the route; answered").
    steps: list[dict[str, object]] = field(default_factory=list)


@dataclass(slots=True)
class Relay:
    """A re-INVITE relayed from one side to the other, until its ACK."""

    server: ServerTx
    other: Side
    cseq: int  # of the re-INVITE we got: its ACK carries it
    forwarded_cseq: int
    ack: tuple[bytes, Peer] | None = None  # our ACK to the other side, repeated for its 2xx copies
    answered: bool = False


class Side:
    """One of the call's two dialogs: the caller's, or an agent leg's."""

    __slots__ = ("dialog", "relay", "sdp", "session", "session_timer", "tag", "uses_update")

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.dialog: DialogSide | None = None
        self.relay: Relay | None = None
        self.session: Session | None = None
        self.session_timer: Handle | None = None
        self.sdp: tuple[bytes, str] | None = None  # the last SDP we sent this side
        self.uses_update = False


class Caller(Side):
    __slots__ = ("ist", "peer")

    def __init__(self, ist: ServerTx) -> None:
        super().__init__(new_tag())
        self.ist = ist
        self.peer = ist.peer


class Leg(Side):
    """One agent leg: an INVITE we sent, and its dialog once it answers."""

    __slots__ = ("ack", "call_id", "from_header", "invite", "peer", "state", "step", "target", "tx")

    def __init__(self, target: Target, step: int, peer: Peer) -> None:
        super().__init__(new_tag())
        self.target = target
        self.step = step
        self.call_id = new_call_id()
        self.from_header = ""
        self.ack: tuple[bytes, Peer] | None = None  # our ACK to its 2xx, repeated for retransmissions
        self.peer = peer
        self.state = LegState.CALLING
        self.invite: SipRequest | None = None
        self.tx: ClientTx | None = None


class Call:
    def __init__(
        self,
        host: SipServer,
        ist: ServerTx,
        outcome: Outcome,
        *,
        slot: Slot | None,
        b_from_user: str,
        b_headers: tuple[tuple[str, str], ...] = (),
        max_call_s: float,
        session_expires_s: int,
        on_end: Callable[[Call], None],
    ) -> None:
        self.host = host
        self.invite = ist.request
        self.caller = Caller(ist)
        self.outcome = outcome
        self.slot = slot
        self.b_from_user = b_from_user
        self.b_headers = b_headers
        self.max_call_s = max_call_s
        self.session_expires_s = session_expires_s
        self.on_end = on_end
        self.live_id = 0  # on the admin console's board of live calls, when it holds a slot
        self.number: Number | None = None  # an inbound call's number (its events name it)
        self.state = CallState.ROUTING
        self.plan: tuple[Step, ...] = ()
        self.legs: list[Leg] = []
        self.winner: Leg | None = None
        self.step = -1
        self.final_reply: tuple[ServerTx, SipResponse] | None = None
        self._timers: list[Handle] = []
        self._step_timer: Handle | None = None
        self._step_started = 0.0
        self._started = host.now()
        self._provisional_seen = False
        ist.call = self
        ist.on_failure = self._caller_never_acked
        self._caller_dialog()
        host.track(self)

    # -- starting and ringing -------------------------------------------------

    def start(self, plan: tuple[Step, ...]) -> None:
        """Ring the hunt plan (nothing when the call already ended: a CANCEL
        may arrive while the routing decision was being made)."""
        if self.state is not CallState.ROUTING:
            return
        self.state = CallState.RINGING
        self.plan = plan
        self._next_step()

    def _caller_dialog(self) -> None:
        inv = self.invite
        to = inv.headers.get_first("to") or ""
        target = uri_of(inv.headers.get_first("contact")) or inv.uri
        routes = list(inv.headers.get("record-route"))
        caller = self.caller
        caller.dialog = DialogSide(
            call_id=inv.headers.get_first("call-id") or "",
            local=f"{to};tag={caller.tag}",
            remote=inv.headers.get_first("from") or "",
            remote_target=target,
            route_set=routes,
            peer=next_hop(routes, target, caller.peer),
            local_cseq=0,
            last_remote_cseq=cseq_number(inv),
            contact=self.host.contact,
        )
        caller.uses_update = _allows_update(inv)
        self.host.bind_dialog(caller.dialog.call_id, caller.tag, self, caller)

    def _log_step(self, result: str) -> None:
        """Close the step being rung in the outcome's step log."""
        if self.outcome.steps and "result" not in self.outcome.steps[-1]:
            entry = self.outcome.steps[-1]
            entry["seconds"] = round(self.host.now() - self._step_started, 1)
            entry["result"] = result

    def _next_step(self) -> None:
        self._log_step("no_answer")
        self.step += 1
        if self.step >= len(self.plan):
            self._unanswered()
            return
        step = self.plan[self.step]
        self.outcome.steps.append(
            {
                "label": step.label,
                "users": [t.user_id for t in step.targets if t.user_id is not None],
                "targets": [t.destination for t in step.targets if t.user_id is None],
            }
        )
        self._step_started = self.host.now()
        self._step_timer = self.host.schedule(step.timeout_s, self._step_timed_out, self.step)
        for target in step.targets:
            self._ring(target)
        if not any(leg.step == self.step and leg.state is not LegState.DONE for leg in self.legs):
            self._step_over()  # every target of the step was unreachable

    def _ring(self, target: Target) -> None:
        host = self.host
        uri = host.destination_uri(target.destination)
        hop = uri_host_port(uri) if uri else None
        if uri is None or hop is None:
            return  # unreachable: not rung, so it cannot answer
        leg = Leg(target, self.step, Peer("udp", hop[0], hop[1]))
        if target.user_id is not None:
            self.outcome.targets_tried.append(target.user_id)
        leg.from_header = f"<sip:{self.b_from_user}@{host.via_host}>;tag={leg.tag}"
        inv = SipRequest(method="INVITE", uri=uri)
        h = inv.headers
        h.append("Via", f"SIP/2.0/UDP {host.via_host};branch={host.new_branch()};rport")
        h.append("Max-Forwards", str(_forwards(self.invite)))
        h.append("From", leg.from_header)
        h.append("To", f"<{uri}>")
        h.append("Call-ID", leg.call_id)
        h.append("CSeq", "1 INVITE")
        h.append("Contact", host.contact)
        h.append("Allow", ALLOW)
        h.append("Supported", "timer")
        h.append("Session-Expires", str(self.session_expires_s))
        h.append("Min-SE", str(session_timer.MIN_SE))
        for name, value in self.b_headers:
            h.append(name, value)
        if self.invite.body:
            ctype = self.invite.headers.get_first("content-type") or "application/sdp"
            h.append("Content-Type", ctype)
            inv.body = self.invite.body
            leg.sdp = (inv.body, ctype)
        leg.invite = inv
        self.legs.append(leg)
        host.bind_dialog(leg.call_id, leg.tag, self, leg)
        leg.tx = host.request(inv, leg.peer, partial(self._leg_response, leg), partial(self._leg_failed, leg))

    def _step_timed_out(self, step: int) -> None:
        if self.state is not CallState.RINGING or step != self.step:
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
        """CANCEL a ringing leg; the transaction holds it until a provisional
        arrived (RFC 3261 §9.1). The leg is over for the hunt either way."""
        if leg.state in (LegState.CALLING, LegState.EARLY) and leg.tx is not None:
            self.host.cancel(leg.tx)
            leg.state = LegState.DONE

    # -- responses from agent legs ----------------------------------------------

    def _leg_response(self, leg: Leg, resp: SipResponse) -> None:
        code = resp.status_code
        if code < 200:
            if leg.state is LegState.CALLING:
                leg.state = LegState.EARLY
            if code in RELAYED_PROVISIONALS and self.state is CallState.RINGING:
                if not self._provisional_seen:
                    self._provisional_seen = True
                    self.host.metrics.setup_seconds.labels("provisional").observe(
                        self.host.now() - self._started
                    )
                ctype = resp.headers.get_first("content-type")
                self._answer_caller(code, resp.reason_phrase, resp.body, ctype)
            return
        if code < 300:
            self._leg_answered(leg, resp)
            return
        # The transaction ACKed the failure; the leg is over for the hunt.
        if leg.state is not LegState.DONE:
            leg.state = LegState.DONE
            self._leg_over(leg)

    def _leg_failed(self, leg: Leg) -> None:
        """Timer B: no answer at all (or a transport error)."""
        if leg.state is not LegState.ANSWERED:
            leg.state = LegState.DONE
            self._leg_over(leg)

    def _leg_over(self, leg: Leg) -> None:
        step_done = all(other.state is LegState.DONE for other in self.legs if other.step == self.step)
        if self.state is CallState.RINGING and leg.step == self.step and step_done:
            self._step_over()

    def _leg_answered(self, leg: Leg, resp: SipResponse) -> None:
        host = self.host
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
                contact=host.contact,
            )
            leg.uses_update = _allows_update(resp)
        if leg.state is LegState.ANSWERED:  # a retransmitted 2xx: ACK it again
            if leg.ack is not None:
                host.send_raw(leg.ack[0], leg.ack[1], "ACK", None)
            return
        if leg.state is LegState.DONE or self.state is not CallState.RINGING:
            # An answer crossing our CANCEL, a second answer, or one after the caller left.
            leg.state = LegState.ANSWERED
            self._ack_leg(leg, b"", None)
            self._send_in_dialog(leg, "BYE")
            leg.state = LegState.DONE
            return
        leg.state = LegState.ANSWERED
        self.winner = leg
        self.state = CallState.ANSWERED
        if self._step_timer is not None:
            self._step_timer.cancel()
        for other in self.legs:
            if other is not leg:
                self._cancel_leg(other)  # ring_all: the first 200 wins (R4)
        if self.invite.body:
            self._ack_leg(leg, b"", None)
        # else delayed offer: the 2xx carries the agent's offer, and the
        # caller's answer comes in its ACK, which the agent's ACK must carry.
        self.outcome.answered_at = time.time()
        self.outcome.answered_by = leg.target.user_id
        self._log_step("answered")
        host.call_answered(self)
        host.metrics.setup_seconds.labels("answer").observe(host.now() - self._started)
        leg.session = session_timer.as_uac(resp, self.session_expires_s)
        self.caller.session = session_timer.as_uas(self.invite, self.session_expires_s)
        self._answer_caller(200, "OK", resp.body, resp.headers.get_first("content-type"))
        self._watch_session(leg)
        self._watch_session(self.caller)
        self._timers.append(host.schedule(self.max_call_s, self._too_long))

    def _ack_leg(self, leg: Leg, body: bytes, content_type: str | None) -> None:
        if leg.dialog is None:
            return
        branch = self.host.new_branch()
        ack = leg.dialog.request(
            "ACK", self.host.via_host, cseq=1, body=body, content_type=content_type, branch=branch
        )
        leg.ack = (encode(ack), leg.dialog.peer)
        self.host.send_raw(leg.ack[0], leg.ack[1], "ACK", None)

    # -- the caller's side --------------------------------------------------------

    def _answer_caller(self, code: int, reason: str, body: bytes, content_type: str | None) -> None:
        extra: list[tuple[str, str]] = [("Contact", self.host.contact)]
        extra += [("Record-Route", rr) for rr in self.invite.headers.get("record-route")]
        if code == 200:
            extra.append(("Allow", ALLOW))
            session = self.caller.session
            if session is not None:
                extra.append(("Session-Expires", session.header(we_are_uac=False)))
                if session_timer.supports_timer(self.invite):
                    extra.append(("Require", "timer"))
            if body:
                self.caller.sdp = (body, content_type or "application/sdp")
        resp = response(
            self.invite,
            code,
            reason,
            to_tag=self.caller.tag,
            headers=tuple(extra),
            body=body,
            content_type=content_type,
        )
        self.host.respond(self.caller.ist, resp)

    def _final_to_caller(self, code: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        resp = response(self.invite, code, reason, to_tag=self.caller.tag, headers=headers)
        self.host.respond(self.caller.ist, resp)

    def on_cancel(self) -> None:
        """The caller CANCELled (its 200 was sent by the core): 487 if still ringing."""
        if self.state not in (CallState.ROUTING, CallState.RINGING):
            return  # too late: the call was answered or is over
        self._stop_ringing()
        self._final_to_caller(487, "Request Terminated")
        self._end("canceled")

    def _stop_ringing(self) -> None:
        for leg in self.legs:
            self._cancel_leg(leg)

    def _unanswered(self) -> None:
        disp = disposition(answered=False, canceled=False, failed=False, rejected=not self.legs)
        code, reason = carrier_status(disp)
        self._final_to_caller(code, reason)
        self._end(disp)

    def _caller_never_acked(self) -> None:
        """Timer H on our 2xx: the caller is gone; hang up both sides."""
        if self.state is CallState.ANSWERED:
            self._hang_up_both("failed")

    # -- in-dialog requests from either side -----------------------------------------

    def on_ack(self, side: object, req: SipRequest) -> None:
        if (
            side is self.caller
            and self.state is CallState.ANSWERED
            and cseq_number(req) == cseq_number(self.invite)
        ):
            self.state = CallState.CONFIRMED
            self.host.acked(self.caller.ist)
            winner = self.winner
            if winner is not None and winner.ack is None:  # delayed offer: the answer rides the ACK
                self._ack_leg(winner, req.body, req.headers.get_first("content-type"))
            return
        if not isinstance(side, Side) or side.relay is None:
            return
        relay = side.relay
        if relay.answered and cseq_number(req) == relay.cseq:
            side.relay = None
            self.host.acked(relay.server)
            other = relay.other
            if other.dialog is not None and relay.ack is None:
                ack = other.dialog.request(
                    "ACK",
                    self.host.via_host,
                    cseq=relay.forwarded_cseq,
                    body=req.body,
                    content_type=req.headers.get_first("content-type"),
                    branch=self.host.new_branch(),
                )
                relay.ack = (encode(ack), other.dialog.peer)
                self.host.send_raw(relay.ack[0], relay.ack[1], "ACK", None)

    def on_request(self, side: object, rec: ServerTx) -> None:
        req = rec.request
        method = req.method
        host = self.host
        if not isinstance(side, Side) or side.dialog is None:
            host.reply(rec, 481, "Call/Transaction Does Not Exist")
            return
        dialog = side.dialog
        seq = cseq_number(req)
        if seq <= dialog.last_remote_cseq:  # RFC 3261 §12.2.2: out of order
            host.reply(rec, 500, "Server Internal Error", headers=(("Retry-After", "1"),))
            return
        dialog.last_remote_cseq = seq
        if method == "BYE":
            self._bye(side, rec)
            return
        other = self._other(side)
        if other is None or other.dialog is None or self.state is CallState.ENDED:
            host.reply(rec, 481, "Call/Transaction Does Not Exist")
            return
        if method == "UPDATE" and not req.body:  # a session refresh: answered here
            self._refreshed(side)
            self._ok_refresh(side, rec)
            return
        if method == "INVITE" and (side.relay is not None or other.relay is not None):
            host.reply(rec, 491, "Request Pending", headers=(("Retry-After", "2"),))  # §14.2 glare
            return
        self._relay(side, rec, other)

    def _bye(self, side: Side, rec: ServerTx) -> None:
        host = self.host
        ok = response(rec.request, 200, "OK")
        if side is self.caller and self.state in (CallState.ROUTING, CallState.RINGING):
            host.respond(rec, ok)  # a BYE in the early dialog ends the attempt, like CANCEL
            self._stop_ringing()
            self._final_to_caller(487, "Request Terminated")
            self._end("canceled")
            return
        if isinstance(side, Leg) and side is not self.winner:
            host.respond(rec, ok)  # an agent leaving an early dialog of its own
            self._leg_failed(side)
            return
        if self.state is CallState.ENDED:
            host.respond(rec, ok)
            return
        other = self._other(side)
        if other is not None:
            self._send_in_dialog(other, "BYE")
        self.final_reply = (rec, ok)  # leaves once the call's record is durable (outbox fsync)
        self._end("answered")

    def _other(self, side: Side) -> Side | None:
        if side is self.caller:
            return self.winner
        if side is self.winner and self.state in (CallState.ANSWERED, CallState.CONFIRMED):
            return self.caller
        return None

    def _relay(self, side: Side, rec: ServerTx, other: Side) -> None:
        """re-INVITE, UPDATE, INFO: forwarded to the other side, its answer
        relayed back; a failure is ACKed by the transactions on both sides."""
        req = rec.request
        assert other.dialog is not None
        fwd = other.dialog.request(
            req.method,
            self.host.via_host,
            body=req.body,
            content_type=req.headers.get_first("content-type"),
            branch=self.host.new_branch(),
        )
        if req.body and req.method in ("INVITE", "UPDATE"):
            other.sdp = (req.body, req.headers.get_first("content-type") or "application/sdp")
        relay_ref: list[Relay] = []

        def relayed(resp: SipResponse) -> None:
            code = resp.status_code
            if code == 100:
                return
            relay = relay_ref[0] if relay_ref else None
            if relay is not None and relay.answered:  # a retransmitted 2xx from the other side
                if relay.ack is not None:
                    self.host.send_raw(relay.ack[0], relay.ack[1], "ACK", None)
                return
            extra: list[tuple[str, str]] = [("Contact", self.host.contact)]
            if 200 <= code < 300 and req.method in ("INVITE", "UPDATE"):
                self._refreshed(side)
                self._refreshed(other)
                if side.session is not None:
                    extra.append(("Session-Expires", side.session.header(we_are_uac=False)))
                if resp.body:
                    side.sdp = (resp.body, resp.headers.get_first("content-type") or "application/sdp")
            back = response(
                req,
                code,
                resp.reason_phrase,
                headers=tuple(extra),
                body=resp.body,
                content_type=resp.headers.get_first("content-type"),
            )
            self.host.respond(rec, back)
            if relay is not None and code >= 200:
                if code < 300:
                    relay.answered = True  # the other side's ACK waits for this side's
                else:
                    side.relay = None
            if code in (408, 481):  # RFC 3261 §14.1: the dialog is gone
                self._hang_up_both("answered")

        def timed_out() -> None:
            if side.relay is not None and side.relay.server is rec:
                side.relay = None
            self.host.reply(rec, 408, "Request Timeout")
            self._hang_up_both("answered")

        self.host.request(fwd, other.dialog.peer, relayed, timed_out)
        if req.method == "INVITE":
            relay = Relay(rec, other, cseq_number(req), cseq_number(fwd))
            relay_ref.append(relay)
            side.relay = relay

    # -- session timers (RFC 4028) ---------------------------------------------------------

    def _watch_session(self, side: Side) -> None:
        if side.session_timer is not None:
            side.session_timer.cancel()
        session = side.session
        if session is None or self.state is CallState.ENDED:
            return
        callback = self._refresh if session.we_refresh else self._session_expired
        side.session_timer = self.host.schedule(session.next_deadline(), callback, side)

    def _refreshed(self, side: Side) -> None:
        if side.session is not None:
            self._watch_session(side)

    def _ok_refresh(self, side: Side, rec: ServerTx) -> None:
        headers: list[tuple[str, str]] = [("Contact", self.host.contact)]
        if side.session is not None:
            headers.append(("Session-Expires", side.session.header(we_are_uac=False)))
        self.host.respond(rec, response(rec.request, 200, "OK", headers=tuple(headers)))

    def _refresh(self, side: Side) -> None:
        """Our turn to refresh: UPDATE without a body where the peer allows it,
        else a re-INVITE with the SDP it last had from us."""
        if self.state not in (CallState.ANSWERED, CallState.CONFIRMED) or side.dialog is None:
            return
        session = side.session
        assert session is not None
        use_update = side.uses_update or side.sdp is None
        if not use_update and side.relay is not None:
            self._watch_session(side)  # a re-INVITE is in flight: it refreshes too
            return
        body, ctype = (b"", None) if use_update or side.sdp is None else side.sdp
        req = side.dialog.request(
            "UPDATE" if use_update else "INVITE",
            self.host.via_host,
            body=body,
            content_type=ctype,
            branch=self.host.new_branch(),
        )
        req.headers.append("Session-Expires", session.header(we_are_uac=True))
        req.headers.append("Supported", "timer")
        dialog = side.dialog

        def answered(resp: SipResponse) -> None:
            code = resp.status_code
            if code < 200:
                return
            if req.method == "INVITE" and code < 300:
                branch = self.host.new_branch()
                ack = dialog.request("ACK", self.host.via_host, cseq=cseq_number(req), branch=branch)
                self.host.send(ack, dialog.peer)
            if code < 300:
                self._watch_session(side)
            elif code in (405, 501) and use_update:
                side.uses_update = False  # try a re-INVITE next time, soon
                side.session_timer = self.host.schedule(1.0, self._refresh, side)
            else:
                self._hang_up_both("answered")  # 481/408: the session is gone

        self.host.request(req, dialog.peer, answered, lambda: self._hang_up_both("answered"))

    def _session_expired(self, side: Side) -> None:
        if self.state in (CallState.ANSWERED, CallState.CONFIRMED):
            self.host.metrics.refused.labels("session_expired").inc()
            self._hang_up_both("answered")

    # -- endings ---------------------------------------------------------------------------

    def _send_in_dialog(self, side: Side, method: str) -> None:
        if side.dialog is not None:
            req = side.dialog.request(method, self.host.via_host, branch=self.host.new_branch())
            self.host.request(req, side.dialog.peer)

    def send_final_reply(self) -> None:
        """Send the answer held back until the call's record was durable."""
        reply, self.final_reply = self.final_reply, None
        if reply is not None:
            self.host.respond(reply[0], reply[1])

    def _too_long(self) -> None:
        if self.state in (CallState.ANSWERED, CallState.CONFIRMED):
            self._hang_up_both("answered")

    def _hang_up_both(self, disp: Disposition) -> None:
        if self.state is CallState.ENDED:
            return
        self._send_in_dialog(self.caller, "BYE")
        if self.winner is not None:
            if self.winner.ack is None:  # delayed offer with no answer from the caller
                self._ack_leg(self.winner, b"", None)
            self._send_in_dialog(self.winner, "BYE")
        self._end(disp)

    def abort(self) -> None:
        """The gateway is stopping: end the call where it stands."""
        if self.state in (CallState.ROUTING, CallState.RINGING):
            self._stop_ringing()
            self._final_to_caller(503, "Service Unavailable", (("Retry-After", "5"),))
            self._end("failed")
        elif self.state in (CallState.ANSWERED, CallState.CONFIRMED):
            self._hang_up_both("answered")

    def _end(self, disp: Disposition) -> None:
        if self.state is CallState.ENDED:
            return
        self._log_step(disp)
        self.state = CallState.ENDED
        if self.slot is not None:
            self.slot.release()
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        if self._step_timer is not None:
            self._step_timer.cancel()
        host = self.host
        ist = self.caller.ist
        host.acked(ist)  # no more 2xx retransmissions to a caller that is gone
        ist.on_failure = None
        ist.call = None  # the transaction lingers 32 s; the call need not
        for side in (self.caller, *self.legs):
            if side.session_timer is not None:
                side.session_timer.cancel()
            side.relay = None
        if self.caller.dialog is not None:
            host.unbind_dialog(self.caller.dialog.call_id, self.caller.tag)
        for leg in self.legs:
            host.unbind_dialog(leg.call_id, leg.tag)
            if leg.tx is not None:
                # Finished legs only repeat their ACK from now on (a late 2xx
                # copy); holding bytes rather than this call keeps ended calls
                # cheap for the GC while their transactions linger.
                if leg.ack is not None:
                    leg.tx.on_response = partial(_repeat_ack, host, leg.ack)
                else:
                    leg.tx.on_response = partial(_late_answer, host, leg)
                leg.tx.on_failure = None
        self.outcome.ended_at = time.time()
        self.outcome.disposition = disp
        self.on_end(self)


def _repeat_ack(host: SipServer, ack: tuple[bytes, Peer], resp: SipResponse) -> None:
    if 200 <= resp.status_code < 300:
        host.send_raw(ack[0], ack[1], "ACK", None)


def _late_answer(host: SipServer, leg: Leg, resp: SipResponse) -> None:
    """A 2xx for a leg of an ended call: re-ACK a copy, or ACK and hang up a
    leg that answered after the call ended (never left ringing)."""
    if not 200 <= resp.status_code < 300:
        return
    if leg.ack is not None:
        host.send_raw(leg.ack[0], leg.ack[1], "ACK", None)
        return
    to = resp.headers.get_first("to") or ""
    target = uri_of(resp.headers.get_first("contact")) or leg.target.destination
    routes = list(reversed(resp.headers.get("record-route")))
    dialog = DialogSide(leg.call_id, leg.from_header, to, target, routes, next_hop(routes, target, leg.peer))
    leg.ack = (encode(dialog.request("ACK", host.via_host, cseq=1, branch=host.new_branch())), dialog.peer)
    host.send_raw(leg.ack[0], leg.ack[1], "ACK", None)
    host.request(dialog.request("BYE", host.via_host, branch=host.new_branch()), dialog.peer)


def _forwards(invite: SipRequest) -> int:
    """RFC 3261 §16.6: one less than we got (the 0 case was refused with 483)."""
    value = (invite.headers.get_first("max-forwards") or "70").strip()
    return max(int(value) - 1, 0) if value.isdigit() and len(value) < 4 else 69


def _allows_update(message: SipRequest | SipResponse) -> bool:
    return any("UPDATE" in value.upper() for value in message.headers.get("allow"))
