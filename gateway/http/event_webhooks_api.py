"""Event webhook endpoints and their deliveries (issue 16, item 1): owners
and admins register where the account's events go; the secret is shown once,
when the endpoint is created. Deliveries are listed per endpoint with their
status, attempts and last error, and any of them can be sent again."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.event_webhooks import TargetRefused, check_target, new_secret
from gateway.http.auth import principal
from gateway.http.deps import deps
from gateway.http.models import DeliveriesQuery, WebhookEndpointChange, WebhookEndpointIn
from gateway.http.openapi import body, query
from gateway.http.responses import forbidden, not_found
from gateway.http.routes import API
from gateway.http.validation import field_error, path_id
from gateway.store import event_webhooks as store

_ONLY_MANAGERS = "only an owner or admin manages event webhooks"


def _endpoint_json(row: Any) -> dict[str, Any]:
    data = dict(row)
    data["created_at"] = row["created_at"].isoformat()
    return data


async def _checked_url(request: web.Request, url: str) -> None:
    try:
        await check_target(url, deps(request).webhook_private_targets)
    except TargetRefused as exc:
        raise field_error("url", str(exc)) from None


@API.op(
    "POST",
    "/v1/webhook-endpoints",
    "Send the account's events to a URL (owner/admin); the answer holds the signing secret, once",
    body=WebhookEndpointIn,
    ok=201,
    errors=(403,),
)
async def create_endpoint(request: web.Request) -> web.Response:
    """One DNS lookup (the SSRF check) and one round trip."""
    who = principal(request)
    asked = await body(request, WebhookEndpointIn)
    if not who.manages:
        return forbidden(_ONLY_MANAGERS)
    await _checked_url(request, asked.url)
    secret = new_secret()
    async with deps(request).pool.acquire() as conn:
        row = await store.create_endpoint(conn, who.account_id, asked.url, list(asked.event_types), secret)
    return web.json_response({**_endpoint_json(row), "secret": secret}, status=201)


@API.op("GET", "/v1/webhook-endpoints", "The account's event webhook endpoints (owner/admin)", errors=(403,))
async def list_endpoints(request: web.Request) -> web.Response:
    who = principal(request)
    if not who.manages:
        return forbidden(_ONLY_MANAGERS)
    async with deps(request).pool.acquire() as conn:
        rows = await store.endpoints(conn, who.account_id)
    return web.json_response({"endpoints": [_endpoint_json(row) for row in rows]})


@API.op(
    "PATCH",
    "/v1/webhook-endpoints/{endpoint_id}",
    "Change an endpoint's URL, event types, or pause it (owner/admin)",
    body=WebhookEndpointChange,
    errors=(403, 404),
)
async def patch_endpoint(request: web.Request) -> web.Response:
    who, endpoint_id = principal(request), path_id(request, "endpoint_id")
    asked = await body(request, WebhookEndpointChange)
    if not who.manages:
        return forbidden(_ONLY_MANAGERS)
    changes = asked.model_dump(exclude_unset=True)
    if "url" in changes:
        await _checked_url(request, changes["url"])
    async with deps(request).pool.acquire() as conn:
        row = await store.update_endpoint(conn, who.account_id, endpoint_id, changes)
    if row is None:
        return not_found("webhook endpoint")
    return web.json_response(_endpoint_json(row))


@API.op(
    "DELETE",
    "/v1/webhook-endpoints/{endpoint_id}",
    "Remove an endpoint and its queued deliveries (owner/admin)",
    ok=204,
    errors=(403, 404),
)
async def delete_endpoint(request: web.Request) -> web.Response:
    who, endpoint_id = principal(request), path_id(request, "endpoint_id")
    if not who.manages:
        return forbidden(_ONLY_MANAGERS)
    async with deps(request).pool.acquire() as conn:
        gone = await store.delete_endpoint(conn, who.account_id, endpoint_id)
    return web.Response(status=204) if gone else not_found("webhook endpoint")


@API.op(
    "GET",
    "/v1/webhook-endpoints/{endpoint_id}/deliveries",
    "An endpoint's deliveries, newest first: status, attempts, last error (owner/admin)",
    query=DeliveriesQuery,
    errors=(403, 404),
)
async def list_deliveries(request: web.Request) -> web.Response:
    who, endpoint_id = principal(request), path_id(request, "endpoint_id")
    asked = query(request, DeliveriesQuery)
    if not who.manages:
        return forbidden(_ONLY_MANAGERS)
    async with deps(request).pool.acquire() as conn:
        owned = any(row["id"] == endpoint_id for row in await store.endpoints(conn, who.account_id))
        rows = await store.deliveries(conn, who.account_id, endpoint_id, asked.status, asked.limit)
    if not owned:
        return not_found("webhook endpoint")
    return web.json_response(
        {
            "deliveries": [
                {
                    **dict(row),
                    **{
                        name: row[name].isoformat() if row[name] is not None else None
                        for name in ("next_attempt_at", "created_at", "delivered_at")
                    },
                }
                for row in rows
            ]
        }
    )


@API.op(
    "POST",
    "/v1/webhook-deliveries/{delivery_id}/redeliver",
    "Send a delivery again now, whatever became of it (owner/admin)",
    ok=202,
    errors=(403, 404),
)
async def redeliver(request: web.Request) -> web.Response:
    who, delivery_id = principal(request), path_id(request, "delivery_id")
    if not who.manages:
        return forbidden(_ONLY_MANAGERS)
    async with deps(request).pool.acquire() as conn:
        queued = await store.redeliver(conn, who.account_id, delivery_id)
    if not queued:
        return not_found("webhook delivery")
    return web.json_response({"id": delivery_id, "status": "pending"}, status=202)
