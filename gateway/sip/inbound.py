"""Inbound calls from a carrier trunk (issue 6): the dialled number, its R7
slot, the routing decision (R1-R6) and the B2BUA call that rings the agents."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from gateway.domain.call_slots import Slot
from gateway.domain.calls import (
    AFTER_HOURS_TEXT,
    after_hours_plan,
    call_plan,
    over_limit_action,
    overflow_plan,
    text_back_message,
)
from gateway.domain.index import Number
from gateway.domain.routing import Decision, route
from gateway.sip import session_timer
from gateway.sip.call import Call, Outcome
from gateway.sip.wire import user_e164, utc
from gateway.store.calls import CallRecord

if TYPE_CHECKING:
    from gateway.sip.server import ServerTx, SipServer

log = logging.getLogger(__name__)


def inbound_call(server: SipServer, rec: ServerTx) -> None:
    """404 (not our number), 422 (session interval too small), 486 (R7
    limit), else ring. The 100 Trying is already out."""
    req = rec.request
    index = server.index()
    dialled = user_e164(req.uri) or user_e164(req.headers.get_first("to"))
    number = index.number(dialled) if dialled else None
    if number is None:
        server.metrics.refused.labels("unknown_number").inc()
        server.reply(rec, 404, "Not Found")
        return
    if session_timer.interval_too_small(req):
        server.reply(rec, 422, "Session Interval Too Small", headers=(("Min-SE", str(session_timer.MIN_SE)),))
        return
    caller = user_e164(req.headers.get_first("p-asserted-identity")) or user_e164(
        req.headers.get_first("from")
    )
    invited_at = time.time()
    decision = route(index, number, caller, call_at=utc(invited_at))
    call_id = req.headers.get_first("call-id") or ""
    taken = server.slots.take(number.id, number.max_concurrent_calls, call_id)
    offer = _Offer(server, rec, number, caller, invited_at, decision)
    if taken is None or isinstance(taken, Slot):
        _admitted(offer, taken)
    else:  # the cluster counter answers after a round trip (issue 14)
        server.scheduler.spawn(_admit_then_ring(offer, taken))


@dataclass(frozen=True, slots=True)
class _Offer:
    """An INVITE to one of our numbers, routed, waiting for its R7 slot."""

    server: SipServer
    rec: ServerTx
    number: Number
    caller: str | None
    invited_at: float
    decision: Decision


async def _admit_then_ring(offer: _Offer, taken: Awaitable[Slot | None]) -> None:
    """R7 on the cluster counter. Meanwhile the INVITE's transaction absorbs
    retransmissions, and a CANCEL answers it 487 (so a slot taken for a call
    that is gone goes straight back)."""
    try:
        slot = await taken
    except Exception:  # a bug, not the database: the counter falls back by itself when that is away
        offer.server.metrics.handler_errors.inc()
        log.exception("R7 admission failed for %s", offer.number.e164)
        if offer.rec.pending:
            offer.server.reply(offer.rec, 503, "Service Unavailable", headers=(("Retry-After", "5"),))
        return
    if not offer.rec.pending:
        if slot is not None:
            slot.release()
        return
    _admitted(offer, slot)


def _admitted(offer: _Offer, slot: Slot | None) -> None:
    """Ring the call that holds ``slot``; past the limit (no slot), what the
    number's overflow setting says (R15)."""
    server, rec, number, caller, invited_at, decision = (
        offer.server, offer.rec, offer.number, offer.caller, offer.invited_at, offer.decision
    )  # fmt: skip
    req = rec.request
    index = server.index()
    if slot is None:  # R7, and what the caller past it gets (issue 15, item 8)
        action = over_limit_action(number, caller)
        server.metrics.count_limit_rejection(number.id)
        server.scheduler.spawn(server.store.over_limit(number, caller, action))
        if action != "forward":
            _busy(offer)
            if action == "text_back" and caller is not None:
                server.scheduler.spawn(server.store.text_back(number, caller, text_back_message(number)))
            return
    outcome = Outcome(
        req.headers.get_first("call-id") or "", "inbound", caller or "anonymous", number.e164, invited_at
    )
    on_end = partial(server.finish_call, number, decision)
    call = Call(
        server,
        rec,
        outcome,
        slot=slot,  # None for an overflow forward: it holds none of the number's slots
        b_from_user=caller or "anonymous",
        max_call_s=server.settings.max_call_s,
        session_expires_s=server.settings.session_expires_s,
        on_end=on_end,
    )
    call.number = number
    server.call_event(call, "call.started")
    if slot is not None:
        call.live_id = server.live.started(number.account_id, number.id, outcome.caller, invited_at)
    else:
        server.metrics.calls.labels("inbound", "overflow_forward").inc()
        call.start(overflow_plan(number))
        return
    if decision.reason == "after_hours":
        if number.after_hours == "text_back" and caller is not None:
            server.scheduler.spawn(
                server.store.text_back(number, caller, number.after_hours_text or AFTER_HOURS_TEXT)
            )
        call.start(after_hours_plan(number, decision, index))
        return
    if decision.strategy == "round_robin" and len(decision.targets) > 1:
        # The call exists (and absorbs retransmissions and CANCEL) before the
        # database is asked for the shared turn (R4).
        server.scheduler.spawn(_rotate_then_ring(server, call, number, caller))
        return
    call.start(call_plan(index, decision, number))


async def _rotate_then_ring(server: SipServer, call: Call, number: Number, caller: str | None) -> None:
    """R4 round-robin: claim the shared turn; if the database is away, ring in
    configured order rather than not at all."""
    try:
        decision = await server.store.rotate(number, caller)
    except Exception:
        decision = route(server.index(), number, caller)
    call.on_end = partial(server.finish_call, number, decision)
    call.start(call_plan(server.index(), decision, number))


def _busy(offer: _Offer) -> None:
    """R7: 486 with Warning and Reason saying why, counted and recorded."""
    server, rec, number, caller = offer.server, offer.rec, offer.number, offer.caller
    limit = number.max_concurrent_calls
    call_id = rec.request.headers.get_first("call-id") or ""  # read before the final settles rec
    server.metrics.calls.labels("inbound", "busy_limit").inc()
    server.reply(
        rec,
        486,
        "Busy Here",
        headers=(
            ("Warning", f'399 {server.via_host} "{number.e164} is at its limit of {limit} concurrent calls"'),
            ("Reason", 'SIP;cause=486;text="Concurrent call limit reached"'),
        ),
    )
    server.recorder.add_call(
        CallRecord(
            sip_call_id=call_id,
            direction="inbound",
            number=number,
            caller=caller or "anonymous",
            callee=number.e164,
            invited_at=utc(offer.invited_at),
            ended_at=utc(time.time()),
            disposition="busy_limit",
            decision=offer.decision,
        )
    )
