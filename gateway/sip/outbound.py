"""Outbound calls placed by agents' phones (R11): digest authentication, the
caller ID chosen with ``X-Caller-Id`` (``company``, ``personal``, ``bridge``
or an E.164; else the user's default), then a B2BUA call to the trunk with
From and P-Asserted-Identity set to that number. No R7 slot: the limit is
on inbound calls."""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING

from aiosipua import SipRequest

from gateway.domain.calls import Step, Target
from gateway.domain.outbound import choose_caller_id
from gateway.domain.routing import Decision, lead_rules
from gateway.sip.call import Call, Outcome
from gateway.sip.transport import Peer
from gateway.sip.wire import user_e164
from gateway.store.index_queries import fetch_account_numbers

if TYPE_CHECKING:
    from gateway.sip.server import SipServer


async def outbound_call(server: SipServer, req: SipRequest, peer: Peer, credentials: str | None) -> None:
    """407 without credentials, 403 with wrong ones or a caller ID the user may
    not use, 484 for a destination that is not E.164, else call it."""
    if credentials is None:
        server.metrics.refused.labels("challenged").inc()
        server.reply(
            req,
            peer,
            407,
            "Proxy Authentication Required",
            headers=(("Proxy-Authenticate", server.digest.challenge()),),
        )
        return
    creds = server.digest.credentials(credentials)
    if creds is None:
        return _forbid(server, req, peer, "auth_failed", "Bad credentials")
    async with server.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT id, account_id, sip_ha1 FROM users WHERE lower(sip_username) = lower($1)",
            creds.params.get("username", ""),
        )
        verdict = "bad" if row is None else server.digest.verify(creds, "INVITE", row["sip_ha1"])
        if verdict == "stale":
            server.reply(
                req,
                peer,
                407,
                "Proxy Authentication Required",
                headers=(("Proxy-Authenticate", server.digest.challenge(stale=True)),),
            )
            return
        if row is None or verdict != "ok":
            return _forbid(server, req, peer, "auth_failed", "Bad credentials")
        index = server.index()
        user = index.user(row["id"])
        if user is None:
            return _forbid(server, req, peer, "auth_failed", "Unknown user")
        destination = user_e164(req.uri)
        if destination is None:
            server.reply(
                req,
                peer,
                484,
                "Address Incomplete",
                headers=(("Warning", f'399 {server.via_host} "dial an E.164 number"'),),
            )
            return
        if server.outbound_trunk is None:
            server.reply(
                req,
                peer,
                503,
                "Service Unavailable",
                headers=(("Warning", f'399 {server.via_host} "no outbound trunk configured"'),),
            )
            return
        numbers = await fetch_account_numbers(conn, user.account_id)
    choice = (req.headers.get_first("x-caller-id") or "").strip() or None
    bridge = next((n for n in numbers if n.bridge), None)
    sender = choose_caller_id(user, numbers, choice, bridge)
    if sender.number is None:  # R11: same allow-list as R10
        return _forbid(server, req, peer, "caller_id", sender.why)
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
        req,
        peer,
        (Step((Target(user.id, trunk_uri),), server.settings.outbound_ring_timeout_s),),
        outcome,
        slot=None,
        b_from_user=number.e164,
        b_headers=(("P-Asserted-Identity", identity),),
        max_call_s=server.settings.max_call_s,
        on_end=partial(server.finish_call, number, decision),
    )
    server.track(call, req)
    call.start()


def _forbid(server: SipServer, req: SipRequest, peer: Peer, metric: str, why: str) -> None:
    server.metrics.refused.labels(metric).inc()
    text = why.replace('"', "'")
    server.reply(req, peer, 403, "Forbidden", headers=(("Warning", f'399 {server.via_host} "{text}"'),))
