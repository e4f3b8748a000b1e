"""Outbound calls placed by agents' phones (R11): digest authentication, the
caller ID chosen with ``X-Caller-Id`` (``company``, ``personal``, ``bridge``
or an E.164; else the user's default), then a B2BUA call to the trunk with
From and P-Asserted-Identity set to that number. No R7 slot: the limit is
on inbound calls."""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING

from gateway.domain.calls import Step, Target
from gateway.domain.outbound import choose_caller_id
from gateway.domain.routing import Decision, lead_rules
from gateway.sip import session_timer
from gateway.sip.call import Call, Outcome
from gateway.sip.wire import user_e164

if TYPE_CHECKING:
    from gateway.sip.server import ServerTx, SipServer


async def outbound_call(server: SipServer, rec: ServerTx, credentials: str | None) -> None:
    """Place the call; if the database fails under us, 503 rather than silence."""
    try:
        await _outbound_call(server, rec, credentials)
    except Exception:
        if rec.pending:
            server.reply(rec, 503, "Service Unavailable", headers=(("Retry-After", "5"),))
        raise


async def _outbound_call(server: SipServer, rec: ServerTx, credentials: str | None) -> None:
    """407 without credentials (or with a stale nonce), 403 with wrong ones,
    a replayed nonce or a caller ID the user may not use, 484 for a
    destination that is not E.164, else call it."""
    req = rec.request
    if credentials is None:
        server.metrics.refused.labels("challenged").inc()
        return _challenge(server, rec, stale=False)
    creds = server.digest.credentials(credentials)
    if creds is None:
        return _forbid(server, rec, "auth_failed", "Bad credentials")
    user_row = await server.store.sip_user(creds.params.get("username", ""))
    if not rec.pending:
        return  # CANCELled while we looked the user up
    verdict = "bad" if user_row is None else server.digest.verify(creds, "INVITE", req.uri, user_row.keys)
    if verdict == "stale":
        return _challenge(server, rec, stale=True)
    if user_row is None or verdict != "ok":
        return _forbid(server, rec, "auth_failed", "Bad credentials")
    index = server.index()
    user = index.user(user_row.user_id)
    if user is None:
        return _forbid(server, rec, "auth_failed", "Unknown user")
    destination = user_e164(req.uri)
    if destination is None:
        server.reply(
            rec,
            484,
            "Address Incomplete",
            headers=(("Warning", f'399 {server.via_host} "dial an E.164 number"'),),
        )
        return
    if server.outbound_trunk is None:
        warning = f'399 {server.via_host} "no outbound trunk configured"'
        server.reply(rec, 503, "Service Unavailable", headers=(("Warning", warning),))
        return
    if session_timer.interval_too_small(req):
        server.reply(rec, 422, "Session Interval Too Small", headers=(("Min-SE", str(session_timer.MIN_SE)),))
        return
    numbers = await server.store.account_numbers(user.account_id)
    if not rec.pending:
        return
    choice = (req.headers.get_first("x-caller-id") or "").strip() or None
    bridge = next((n for n in numbers if n.bridge), None)
    sender = choose_caller_id(user, numbers, choice, bridge)
    if sender.number is None:  # R11: same allow-list as R10
        return _forbid(server, rec, "caller_id", sender.why)
    number = sender.number
    trunk_uri = server.destination_uri(destination) or ""
    leads = index.leads_for(user.account_id, destination)
    timeline, _, reason = lead_rules(leads)
    decision = Decision(reason, "single", (user.id,), timeline, 0)
    outcome = Outcome(
        req.headers.get_first("call-id") or "", "outbound", number.e164, destination, time.time()
    )
    identity = f"<sip:{number.e164}@{server.via_host}>"
    call = Call(
        server,
        rec,
        outcome,
        slot=None,
        b_from_user=number.e164,
        b_headers=(("P-Asserted-Identity", identity),),
        max_call_s=server.settings.max_call_s,
        session_expires_s=server.settings.session_expires_s,
        on_end=partial(server.finish_call, number, decision),
    )
    call.start((Step((Target(user.id, trunk_uri),), server.settings.outbound_ring_timeout_s),))


def _challenge(server: SipServer, rec: ServerTx, *, stale: bool) -> None:
    headers = tuple(("Proxy-Authenticate", value) for value in server.digest.challenges(stale=stale))
    server.reply(rec, 407, "Proxy Authentication Required", headers=headers)


def _forbid(server: SipServer, rec: ServerTx, metric: str, why: str) -> None:
    server.metrics.refused.labels(metric).inc()
    text = why.replace('"', "'")
    server.reply(rec, 403, "Forbidden", headers=(("Warning", f'399 {server.via_host} "{text}"'),))
