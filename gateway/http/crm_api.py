"""CRM endpoints of the routing engine: timelines, notifications and their
actions (R8), usage (R9). Every query is scoped by the caller's account; another
account's resource answers 404 exactly like a missing one."""

from __future__ import annotations

import json
from datetime import date

from aiohttp import web

from gateway.domain.billing import allowance, over_quota
from gateway.http.auth import principal
from gateway.http.deps import deps
from gateway.http.models import NotificationAction, NotificationsQuery, UsageQuery
from gateway.http.openapi import body, query
from gateway.http.problems import problem
from gateway.http.responses import forbidden, json_row, not_found
from gateway.http.routes import API
from gateway.http.validation import field_error, path_id
from gateway.store import Conn, crm_reads, notifications
from gateway.store.api_keys import Principal


async def _may_see_user(conn: Conn, who: Principal, user_id: int) -> bool:
    """Users see their own; owners and admins any user of their own account."""
    if who.user_id == user_id:
        return True
    return who.manages and await crm_reads.user_exists(conn, who.account_id, user_id)


@API.op("GET", "/v1/leads/{lead_id}/timeline", "A lead's calls and texts, newest first", errors=(404,))
async def lead_timeline(request: web.Request) -> web.Response:
    """``GET /v1/leads/{lead_id}/timeline``: newest first, at most 200. Two indexed reads."""
    who, lead_id = principal(request), path_id(request, "lead_id")
    async with deps(request).pool.acquire() as conn:
        if not await crm_reads.lead_exists(conn, who.account_id, lead_id):
            return not_found("lead")
        # A call's steps (R18) say who rang and why: "agent 20 s no answer; route answered".
        rows = await crm_reads.lead_timeline(conn, who.account_id, lead_id)
    events = [{**json_row(r), "steps": json.loads(r["steps"])} for r in rows]
    return web.json_response({"lead_id": lead_id, "events": events})


@API.op(
    "GET",
    "/v1/users/{user_id}/notifications",
    "A user's R8 notifications",
    query=NotificationsQuery,
    errors=(404,),
)
async def user_notifications(request: web.Request) -> web.Response:
    """``GET /v1/users/{user_id}/notifications?state=open``: a user's own, or any
    of the account's users' for owners and admins. One or two indexed reads."""
    who, user_id = principal(request), path_id(request, "user_id")
    state = query(request, NotificationsQuery).state
    async with deps(request).pool.acquire() as conn:
        if not await _may_see_user(conn, who, user_id):
            return not_found("user")
        rows = await crm_reads.user_notifications(conn, who.account_id, user_id, state)
    return web.json_response({"user_id": user_id, "notifications": [json_row(r) for r in rows]})


@API.op(
    "POST",
    "/v1/notifications/{notification_id}/actions",
    "Settle an R8 notification: new lead or associate",
    body=NotificationAction,
    errors=(403, 404, 409),
)
async def notification_action(request: web.Request) -> web.Response:
    """``POST /v1/notifications/{notification_id}/actions`` with
    ``{"action": "new_lead", "primary_agent_id"?, "name"?}`` or
    ``{"action": "associate", "lead_id"}``. Idempotent; one transaction."""
    who, notification_id = principal(request), path_id(request, "notification_id")
    request_body = await body(request, NotificationAction)
    action, lead_id = request_body.action, request_body.lead_id
    if action == "associate" and lead_id is None:
        raise field_error("lead_id", "is required to associate")
    agent = request_body.primary_agent_id
    if action == "new_lead" and agent is not None and agent != who.user_id and not who.manages:
        # The same rule as POST /v1/leads: agents own only leads they are the agent of.
        return forbidden("agents own only leads whose primary agent they are")
    async with deps(request).pool.acquire() as conn:
        try:
            outcome = await notifications.act(
                conn,
                account_id=who.account_id,
                notification_id=notification_id,
                actor_id=who.user_id,
                actor_may_act_for_others=who.manages,
                action=action,
                lead_id=lead_id,
                primary_agent_id=request_body.primary_agent_id,
                name=request_body.name,
            )
        except notifications.NotFound as missing:
            if str(missing) == "notification":
                return not_found("notification")
            raise field_error(str(missing), "names nothing in this account") from None
        except notifications.Conflict as conflict:
            return problem(409, "Conflict", str(conflict))
    status = 201 if outcome.created else 200
    return web.json_response({"action": action, "lead_id": outcome.lead_id, "state": "closed"}, status=status)


@API.op(
    "GET",
    "/v1/users/{user_id}/usage",
    "R9 usage of a user in a billing month",
    query=UsageQuery,
    errors=(404,),
)
async def user_usage(request: web.Request) -> web.Response:
    """``GET /v1/users/{user_id}/usage?period=YYYY-MM`` (R9): totals per kind
    against the package's allowance, and the entries. Two indexed reads."""
    who, user_id = principal(request), path_id(request, "user_id")
    year, month = query(request, UsageQuery).period.split("-")
    period = date(int(year), int(month), 1)
    async with deps(request).pool.acquire() as conn:
        if not await _may_see_user(conn, who, user_id):
            return not_found("user")
        user = await crm_reads.usage_allowances(conn, who.account_id, user_id)
        if user is None:
            return not_found("user")
        rows = await crm_reads.usage_entries(conn, who.account_id, user_id, period)
    included = {"call_minutes": user["included_minutes"], "text_segments": user["included_segments"]}
    addon = {"call_minutes": user["addon_minutes"], "text_segments": user["addon_segments"]}
    allowed = {kind: allowance(included[kind], addon[kind]) for kind in included}
    totals = {"call_minutes": 0, "text_segments": 0}
    entries = []
    for row in rows:  # in charge order: each entry is over quota by the running total before it
        kind = row["kind"]
        entries.append(
            {**json_row(row), "over_quota": over_quota(totals[kind], allowed[kind], row["quantity"])}
        )
        totals[kind] += row["quantity"]
    return web.json_response(
        {
            "user_id": user_id,
            "period": f"{period:%Y-%m}",
            "package": user["package"],
            "totals": totals,
            "included": included,
            "addon": addon,
            "allowance": allowed,
            "over_quota_mode": user["mode"],
            "over_quota": {kind: over_quota(totals[kind], allowed[kind], 0) for kind in totals},
            "entries": entries,
        }
    )
