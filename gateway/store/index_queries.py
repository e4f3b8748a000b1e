"""SQL that fills the routing index, and the rows -> domain objects it needs.

``load_snapshot`` reads everything in one REPEATABLE READ transaction, so the
three tables agree with each other; lead phones stream through a server-side
cursor, a batch of accounts at a time (no per-row round trips, bounded client
memory).
"""

from __future__ import annotations

import gc
import json

import asyncpg

from gateway.domain.hours import parse_hours
from gateway.domain.index import Index, LeadRef, Number, User
from gateway.store import Conn

_NUMBERS = """
SELECT n.id, n.account_id, n.e164, n.kind, n.owner_user_id, n.office_id, n.unknown_route,
       COALESCE((SELECT array_agg(t.user_id ORDER BY t.position)
                   FROM number_route_targets t WHERE t.number_id = n.id), '{}') AS route_user_ids,
       n.unknown_step_timeout_s, n.source, n.tag, n.max_concurrent_calls, n.provider,
       n.bridge, n.description, n.overflow, n.overflow_target, n.overflow_text,
       n.business_hours::text AS business_hours, n.after_hours, n.after_hours_user_ids, n.after_hours_target,
       n.after_hours_text, n.missed_call_text, n.missed_call_quiet_from, n.missed_call_quiet_to,
       n.missed_call_every_s, n.fallback_target
  FROM numbers n
"""

_USERS = """
SELECT u.id, u.account_id, u.role, u.package, u.call_destination, u.sender_number_id,
       COALESCE((SELECT array_agg(o.office_id) FROM user_offices o WHERE o.user_id = u.id), '{}')
           AS office_ids
  FROM users u
"""

# One row per account, its phones as parallel arrays: asyncpg decodes arrays in
# C, which halves the client's per-phone cost against one Record per phone.
# The phone comes as an int8 key (see domain.index.phone_key), computed by the server.
_LEAD_PHONES = """
SELECT lp.account_id,
       array_agg(substr(lp.e164, 2)::int8) AS keys,
       array_agg(lp.lead_id) AS lead_ids,
       array_agg(l.primary_agent_id) AS agent_ids,
       array_agg(extract(epoch FROM l.created_at)::float8) AS created
  FROM lead_phones lp JOIN leads l ON l.id = lp.lead_id
 GROUP BY lp.account_id
"""

BATCH_ACCOUNTS = 200


def number_from_row(row: asyncpg.Record) -> Number:
    return Number(
        id=row["id"],
        account_id=row["account_id"],
        e164=row["e164"],
        kind=row["kind"],
        owner_user_id=row["owner_user_id"],
        office_id=row["office_id"],
        unknown_route=row["unknown_route"],
        route_user_ids=tuple(row["route_user_ids"]),
        step_timeout_s=row["unknown_step_timeout_s"],
        source=row["source"],
        tag=row["tag"],
        max_concurrent_calls=row["max_concurrent_calls"],
        provider=row["provider"],
        bridge=row["bridge"],
        description=row["description"],
        overflow=row["overflow"],
        overflow_target=row["overflow_target"],
        overflow_text=row["overflow_text"],
        hours=parse_hours(json.loads(row["business_hours"])) if row["business_hours"] else None,
        after_hours=row["after_hours"],
        after_hours_user_ids=tuple(row["after_hours_user_ids"]),
        after_hours_target=row["after_hours_target"],
        after_hours_text=row["after_hours_text"],
        missed_call_text=row["missed_call_text"],
        missed_call_quiet_from=row["missed_call_quiet_from"],
        missed_call_quiet_to=row["missed_call_quiet_to"],
        missed_call_every_s=row["missed_call_every_s"],
        fallback_target=row["fallback_target"],
    )


def user_from_row(row: asyncpg.Record) -> User:
    return User(
        id=row["id"],
        account_id=row["account_id"],
        role=row["role"],
        package=row["package"],
        office_ids=frozenset(row["office_ids"]),
        call_destination=row["call_destination"],
        sender_number_id=row["sender_number_id"],
    )


async def load_snapshot(conn: Conn) -> Index:
    """A complete, consistent index. Cost: three queries; lead phones arrive
    ``BATCH_ACCOUNTS`` accounts at a time (about 3 s per million phones on one
    core, most of it building Python objects), so client memory stays bounded."""
    index = Index()
    gc_was_enabled = gc.isenabled()
    # Millions of new tuples would trigger repeated full collections that scan
    # them all; nothing built here can form a cycle, so pausing GC is safe.
    gc.disable()
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            for row in await conn.fetch(_USERS):
                index.put_user(user_from_row(row))
            for row in await conn.fetch(_NUMBERS):
                index.put_number(number_from_row(row))
            agents: dict[int, int] = {}  # one shared int object per agent id
            load = index.load_lead_phone
            make = LeadRef._make
            cursor = await conn.cursor(_LEAD_PHONES)
            while batch := await cursor.fetch(BATCH_ACCOUNTS):
                for account_id, keys, lead_ids, agent_ids, created in batch:
                    for key, lead_id, agent_id, at in zip(keys, lead_ids, agent_ids, created, strict=True):
                        load(account_id, key, make((lead_id, agents.setdefault(agent_id, agent_id), at)))
    finally:
        if gc_was_enabled:
            gc.enable()
    return index


async def fetch_number(conn: Conn, number_id: int) -> Number | None:
    """One number with its route targets, or None if gone. One round trip."""
    row = await conn.fetchrow(_NUMBERS + " WHERE n.id = $1", number_id)
    return None if row is None else number_from_row(row)


async def fetch_user(conn: Conn, user_id: int) -> User | None:
    """One user with their offices, or None if gone. One round trip."""
    row = await conn.fetchrow(_USERS + " WHERE u.id = $1", user_id)
    return None if row is None else user_from_row(row)


async def fetch_account_users(conn: Conn, account_id: int) -> list[User]:
    """Every user of one account, with their offices. One round trip."""
    rows = await conn.fetch(_USERS + " WHERE u.account_id = $1 ORDER BY u.id", account_id)
    return [user_from_row(row) for row in rows]


async def fetch_office_members(conn: Conn, account_id: int, office_id: int) -> set[int]:
    """The ids of one office's users. One indexed read."""
    rows = await conn.fetch(
        "SELECT user_id FROM user_offices WHERE account_id = $1 AND office_id = $2", account_id, office_id
    )
    return {row["user_id"] for row in rows}


async def fetch_account_numbers(conn: Conn, account_id: int) -> list[Number]:
    """Every number of one account, with route targets. One round trip."""
    rows = await conn.fetch(_NUMBERS + " WHERE n.account_id = $1 ORDER BY n.id", account_id)
    return [number_from_row(row) for row in rows]
