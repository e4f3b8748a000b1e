"""Event webhooks to the CRM (issue 16, item 1): the endpoints an account
registers and the delivery queue the triggers of migration 0023 fill.

Every query is scoped by account except the sender's claim, which serves
every account (the sender is the gateway's, not a tenant's). Each is one
round trip.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.store import Conn

_ENDPOINT = "id, url, event_types, enabled, created_at"


async def create_endpoint(conn: Conn, account_id: int, url: str, event_types: list[str], secret: str) -> Any:
    """The new endpoint's row (without its secret)."""
    return await conn.fetchrow(
        f"INSERT INTO webhook_endpoints (account_id, url, event_types, secret) VALUES ($1, $2, $3, $4)"
        f" RETURNING {_ENDPOINT}",
        account_id,
        url,
        event_types,
        secret,
    )


async def accounts_listening(conn: Conn, event_types: tuple[str, ...]) -> set[int]:
    """Accounts with an enabled endpoint that takes any of ``event_types``
    (an empty list takes every type). Reads every enabled endpoint: a few
    per account, read every few seconds at most."""
    rows = await conn.fetch(
        "SELECT DISTINCT account_id FROM webhook_endpoints"
        " WHERE enabled AND (event_types = '{}' OR event_types && $1::text[])",
        list(event_types),
    )
    return {row["account_id"] for row in rows}


async def queue_event(
    conn: Conn, account_id: int, event_id: str, event_type: str, data: dict[str, Any]
) -> None:
    """Queue one event for the account's endpoints that take it (for facts no
    table holds: a call ringing or answered). One statement."""
    await conn.execute(
        "SELECT webhook_fanout(jsonb_build_array(jsonb_build_object("
        " 'account_id', $1::bigint, 'id', $2::text, 'type', $3::text, 'at', now(), 'data', $4::jsonb)))",
        account_id,
        event_id,
        event_type,
        json.dumps(data),
    )


async def endpoints(conn: Conn, account_id: int) -> list[Any]:
    return await conn.fetch(
        f"SELECT {_ENDPOINT} FROM webhook_endpoints WHERE account_id = $1 ORDER BY id", account_id
    )


async def update_endpoint(conn: Conn, account_id: int, endpoint_id: int, changes: dict[str, Any]) -> Any:
    """The changed row, None when the endpoint is not the account's. ``changes``
    names only url, event_types and enabled (the caller validated them)."""
    names = [name for name in ("url", "event_types", "enabled") if name in changes]
    if not names:
        return await conn.fetchrow(
            f"SELECT {_ENDPOINT} FROM webhook_endpoints WHERE id = $1 AND account_id = $2",
            endpoint_id,
            account_id,
        )
    sets = ", ".join(f"{name} = ${i}" for i, name in enumerate(names, start=3))
    return await conn.fetchrow(
        f"UPDATE webhook_endpoints SET {sets} WHERE id = $1 AND account_id = $2 RETURNING {_ENDPOINT}",
        endpoint_id,
        account_id,
        *(changes[name] for name in names),
    )


async def delete_endpoint(conn: Conn, account_id: int, endpoint_id: int) -> bool:
    """Deletes its queued deliveries too."""
    done = await conn.execute(
        "DELETE FROM webhook_endpoints WHERE id = $1 AND account_id = $2", endpoint_id, account_id
    )
    return bool(done.endswith(" 1"))


async def deliveries(
    conn: Conn, account_id: int, endpoint_id: int, status: str | None, limit: int
) -> list[Any]:
    """The endpoint's newest deliveries first (index ``webhook_deliveries_endpoint``)."""
    return await conn.fetch(
        "SELECT id, event_id, event_type, status, attempts, next_attempt_at, last_status, last_error,"
        " created_at, delivered_at FROM webhook_deliveries WHERE endpoint_id = $1 AND account_id = $2"
        " AND ($3::text IS NULL OR status = $3) ORDER BY id DESC LIMIT $4",
        endpoint_id,
        account_id,
        status,
        limit,
    )


async def redeliver(conn: Conn, account_id: int, delivery_id: int) -> bool:
    """Queue a delivery again now, whatever became of it; False when it is not
    the account's."""
    done = await conn.execute(
        "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = now(), attempts = 0"
        " WHERE id = $1 AND account_id = $2",
        delivery_id,
        account_id,
    )
    return bool(done.endswith(" 1"))


@dataclass(frozen=True, slots=True)
class Due:
    id: int
    endpoint_id: int
    url: str
    secret: str
    event_id: str
    payload: str  # the JSON body, exactly as signed
    attempts: int  # including this one
    created_at: datetime


async def claim_due(conn: Conn, limit: int, lease_s: float, per_endpoint: int, busy: list[int]) -> list[Due]:
    """Up to ``limit`` deliveries that are due, oldest first, at most
    ``per_endpoint`` per endpoint and none for the endpoints in ``busy``,
    leased for ``lease_s`` (a sender that dies mid-send leaves them to be
    claimed again then). SKIP LOCKED: gateways sharing the queue never claim
    the same one. One round trip over the partial index of pending deliveries."""
    rows = await conn.fetch(
        "WITH candidate AS (SELECT id FROM (SELECT id, next_attempt_at, row_number() OVER"
        " (PARTITION BY endpoint_id ORDER BY next_attempt_at) AS nth FROM webhook_deliveries"
        " WHERE status = 'pending' AND next_attempt_at <= now() AND endpoint_id <> ALL ($4::bigint[])) AS d"
        " WHERE nth <= $3 ORDER BY next_attempt_at LIMIT $1),"
        " due AS (SELECT id FROM webhook_deliveries WHERE id IN (SELECT id FROM candidate)"
        " FOR UPDATE SKIP LOCKED)"
        " UPDATE webhook_deliveries d SET attempts = d.attempts + 1,"
        " next_attempt_at = now() + $2 * interval '1 second'"
        " FROM due, webhook_endpoints e WHERE d.id = due.id AND e.id = d.endpoint_id"
        " RETURNING d.id, d.endpoint_id, e.url, e.secret, d.event_id, d.payload::text AS payload, d.attempts,"
        " d.created_at",
        limit,
        lease_s,
        per_endpoint,
        busy,
    )
    return [Due(**dict(row)) for row in rows]


async def delivered(conn: Conn, delivery_id: int, status: int) -> None:
    await conn.execute(
        "UPDATE webhook_deliveries SET status = 'delivered', delivered_at = now(), last_status = $2,"
        " last_error = NULL WHERE id = $1",
        delivery_id,
        status,
    )


async def failed_attempt(
    conn: Conn, delivery_id: int, status: int | None, error: str, retry_in_s: float | None
) -> None:
    """Record a failed attempt: retry in ``retry_in_s``, or give up (None)."""
    await conn.execute(
        "UPDATE webhook_deliveries SET last_status = $2, last_error = $3,"
        " status = CASE WHEN $4::float8 IS NULL THEN 'failed' ELSE 'pending' END,"
        " next_attempt_at = CASE WHEN $4::float8 IS NULL THEN next_attempt_at"
        " ELSE now() + $4::float8 * interval '1 second' END WHERE id = $1",
        delivery_id,
        status,
        error[:500],
        retry_in_s,
    )
