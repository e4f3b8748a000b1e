"""Inbound calls from a carrier trunk (issue 6): the dialled number, its R7
slot, the routing decision (R1-R6) and the B2BUA call that rings the agents."""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING

from aiosipua import SipRequest

from gateway.domain.call_slots import Slot
from gateway.domain.calls import call_plan
from gateway.domain.index import Number
from gateway.domain.routing import Decision, route
from gateway.sip.call import Call, Outcome
from gateway.sip.transport import Peer
from gateway.sip.wire import response, user_e164, utc
from gateway.store.calls import CallRecord
from gateway.store.crm import decide

if TYPE_CHECKING:
    from gateway.sip.server import SipServer


def inbound_call(server: SipServer, req: SipRequest, peer: Peer) -> None:
    """Answer 100 at once, then 404 (not our number), 486 (R7 limit) or ring."""
    server.send(response(req, 100, "Trying"), peer)
    index = server.index()
    dialled = user_e164(req.uri) or user_e164(req.headers.get_first("to"))
    number = index.number(dialled) if dialled else None
    if number is None:
        server.metrics.refused.labels("unknown_number").inc()
        server.reply(req, peer, 404, "Not Found")
        return
    caller = user_e164(req.headers.get_first("p-asserted-identity")) or user_e164(
        req.headers.get_first("from")
    )
    invited_at = time.time()
    decision = route(index, number, caller)
    slot = server.slots.take(number.id, number.max_concurrent_calls)
    if slot is None:  # R7
        limit = number.max_concurrent_calls
        server.metrics.count_limit_rejection(number.id)
        server.metrics.calls.labels("inbound", "busy_limit").inc()
        server.reply(
            req,
            peer,
            486,
            "Busy Here",
            headers=(
                (
                    "Warning",
                    f'399 {server.via_host} "{number.e164} is at its limit of {limit} concurrent calls"',
                ),
                ("Reason", 'SIP;cause=486;text="Concurrent call limit reached"'),
            ),
        )
        now = utc(time.time())
        server.recorder.add_call(
            CallRecord(
                sip_call_id=req.headers.get_first("call-id") or "",
                direction="inbound",
                number=number,
                caller=caller or "anonymous",
                callee=number.e164,
                invited_at=utc(invited_at),
                ended_at=now,
                disposition="busy_limit",
                decision=decision,
            )
        )
        return
    if decision.strategy == "round_robin" and len(decision.targets) > 1:
        server.spawn(_rotate_then_ring(server, req, peer, number, caller, invited_at, slot))
        return
    _ring(server, req, peer, number, caller, invited_at, slot, decision)


async def _rotate_then_ring(
    server: SipServer,
    req: SipRequest,
    peer: Peer,
    number: Number,
    caller: str | None,
    invited_at: float,
    slot: Slot,
) -> None:
    """R4 round-robin: claim the shared turn; if the database is away, ring in
    configured order rather than not at all."""
    try:
        async with server.pool.acquire(timeout=1.0) as conn:
            decision = await decide(conn, server.index(), number, caller)
    except Exception:
        decision = route(server.index(), number, caller)
    _ring(server, req, peer, number, caller, invited_at, slot, decision)


def _ring(
    server: SipServer,
    req: SipRequest,
    peer: Peer,
    number: Number,
    caller: str | None,
    invited_at: float,
    slot: Slot,
    decision: Decision,
) -> None:
    outcome = Outcome(
        req.headers.get_first("call-id") or "", "inbound", caller or "anonymous", number.e164, invited_at
    )
    call = Call(
        server,
        req,
        peer,
        call_plan(server.index(), decision),
        outcome,
        slot=slot,
        b_from_user=caller or "anonymous",
        max_call_s=server.settings.max_call_s,
        on_end=partial(server.finish_call, number, decision),
    )
    server.track(call, req)
    call.start()
