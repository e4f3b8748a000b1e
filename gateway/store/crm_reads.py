"""What the CRM API reads back (issue 17, item 1: the SQL that lived in
``http/crm_api``): a lead's timeline, a user's R8 notifications and R9 usage.
Every query is scoped by account; each is one indexed read."""

from __future__ import annotations

from datetime import date
from typing import Any

from gateway.store import Conn


async def user_exists(conn: Conn, account_id: int, user_id: int) -> bool:
    found = await conn.fetchval("SELECT 1 FROM users WHERE id = $1 AND account_id = $2", user_id, account_id)
    return found is not None


async def lead_exists(conn: Conn, account_id: int, lead_id: int) -> bool:
    found = await conn.fetchval("SELECT 1 FROM leads WHERE id = $1 AND account_id = $2", lead_id, account_id)
    return found is not None


async def lead_timeline(conn: Conn, account_id: int, lead_id: int, limit: int = 200) -> list[Any]:
    """A lead's calls and texts, newest first, each call with its R18 steps
    (a JSON text): who rang and why."""
    return await conn.fetch(
        "SELECT t.id, t.channel, t.direction, t.number_id, t.agent_id, t.reason, t.disposition,"
        " t.duration_s, t.message_id, t.call_record_id, t.occurred_at, t.ended_at,"
        " COALESCE(c.steps, '[]') AS steps"
        " FROM timeline_events t LEFT JOIN call_records c ON c.id = t.call_record_id"
        " WHERE t.lead_id = $1 AND t.account_id = $2 ORDER BY t.occurred_at DESC, t.id DESC LIMIT $3",
        lead_id,
        account_id,
        limit,
    )


async def user_notifications(
    conn: Conn, account_id: int, user_id: int, state: str, limit: int = 200
) -> list[Any]:
    """A user's R8 notifications in ``state`` (or ``"all"``), newest first."""
    return await conn.fetch(
        "SELECT id, user_id, number_id, channel, caller_e164, source, tag, state, action, lead_id,"
        " call_record_id, message_id, created_at, closed_at FROM notifications"
        " WHERE user_id = $1 AND account_id = $2 AND ($3 = 'all' OR state = $3)"
        " ORDER BY created_at DESC, id DESC LIMIT $4",
        user_id,
        account_id,
        state,
        limit,
    )


async def usage_allowances(conn: Conn, account_id: int, user_id: int) -> Any:
    """The user's package and allowances, and the account's over-quota mode
    (as ``mode``); None if the user is not the account's."""
    return await conn.fetchrow(
        "SELECT u.package, u.included_minutes, u.included_segments, u.addon_minutes, u.addon_segments,"
        " a.over_quota AS mode FROM users u JOIN accounts a ON a.id = u.account_id"
        " WHERE u.id = $1 AND u.account_id = $2",
        user_id,
        account_id,
    )


async def usage_entries(conn: Conn, account_id: int, user_id: int, period: date) -> list[Any]:
    """The user's R9 usage rows of one billing month, in order."""
    return await conn.fetch(
        "SELECT kind, quantity, number_id, call_record_id, message_id, created_at"
        " FROM usage_ledger WHERE user_id = $1 AND account_id = $2 AND period = $3 ORDER BY id",
        user_id,
        account_id,
        period,
    )
