"""Leads: one or more phones, one primary agent, exactly one source, any tags.

Single-lead writes reach the routing index through the row triggers; a bulk
import sets ``gateway.bulk`` so the triggers stay quiet and sends one reload
event instead (migration 0007).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.store import Conn, update_columns
from gateway.store.index_keeper import CHANNEL, RELOAD_EVENT


@dataclass(frozen=True, slots=True)
class LeadRow:
    """One validated lead, ready to write."""

    name: str
    primary_agent_id: int
    source: str
    phones: tuple[str, ...]  # E.164, deduplicated
    tags: tuple[str, ...]
    created_at: datetime | None = None


async def get_lead(conn: Conn, account_id: int, lead_id: int) -> dict[str, Any] | None:
    """The lead with its phones and tags, or None. One round trip."""
    row = await conn.fetchrow(
        "SELECT l.id, l.name, l.primary_agent_id, l.source, l.created_at,"
        " COALESCE((SELECT array_agg(p.e164 ORDER BY p.e164) FROM lead_phones p WHERE p.lead_id = l.id),"
        " '{}') AS phones,"
        " COALESCE((SELECT array_agg(t.tag ORDER BY t.tag) FROM lead_tags t WHERE t.lead_id = l.id),"
        " '{}') AS tags"
        " FROM leads l WHERE l.id = $1 AND l.account_id = $2",
        lead_id,
        account_id,
    )
    if row is None:
        return None
    lead = dict(row)
    lead["created_at"] = lead["created_at"].isoformat()
    return lead


async def create_lead(conn: Conn, account_id: int, lead: LeadRow) -> int:
    """Insert one lead with its phones and tags in one transaction."""
    async with conn.transaction():
        lead_id: int = await conn.fetchval(
            "INSERT INTO leads (account_id, name, primary_agent_id, source, created_at)"
            " VALUES ($1, $2, $3, $4, COALESCE($5, now())) RETURNING id",
            account_id,
            lead.name,
            lead.primary_agent_id,
            lead.source,
            lead.created_at,
        )
        await _set_phones_and_tags(conn, account_id, lead_id, lead.phones, lead.tags)
    return lead_id


async def update_lead(
    conn: Conn,
    account_id: int,
    lead_id: int,
    changes: dict[str, Any],
    phones: tuple[str, ...] | None,
    tags: tuple[str, ...] | None,
) -> bool:
    """Change columns and replace phones/tags when given. False if no such lead."""
    async with conn.transaction():
        exists = await conn.fetchval(
            "SELECT 1 FROM leads WHERE id = $1 AND account_id = $2 FOR UPDATE", lead_id, account_id
        )
        if not exists:
            return False
        await update_columns(conn, "leads", lead_id, account_id, changes)
        if phones is not None:
            await conn.execute(
                "DELETE FROM lead_phones WHERE lead_id = $1 AND NOT (e164 = ANY($2::text[]))",
                lead_id,
                list(phones),
            )
        if tags is not None:
            await conn.execute("DELETE FROM lead_tags WHERE lead_id = $1", lead_id)
        await _set_phones_and_tags(conn, account_id, lead_id, phones or (), tags or ())
    return True


async def delete_lead(conn: Conn, account_id: int, lead_id: int) -> bool:
    status = await conn.execute("DELETE FROM leads WHERE id = $1 AND account_id = $2", lead_id, account_id)
    return status != "DELETE 0"


async def find_by_phone(conn: Conn, account_id: int, e164: str) -> list[int]:
    """Ids of the account's leads owning ``e164``, newest first. One indexed read."""
    rows = await conn.fetch(
        "SELECT l.id FROM lead_phones p JOIN leads l ON l.id = p.lead_id"
        " WHERE p.account_id = $1 AND p.e164 = $2 ORDER BY l.created_at DESC, l.id DESC LIMIT 100",
        account_id,
        e164,
    )
    return [row["id"] for row in rows]


async def user_ids(conn: Conn, account_id: int) -> set[int]:
    """Every user id of the account (the primary agents an import may name)."""
    return {row["id"] for row in await conn.fetch("SELECT id FROM users WHERE account_id = $1", account_id)}


async def import_leads(conn: Conn, account_id: int, leads: list[LeadRow]) -> list[int]:
    """All-or-nothing bulk insert through binary COPY: ids reserved from the
    sequence, then three COPYs, one transaction, one index reload at commit.
    About 1-2 s per 100,000 leads."""
    async with conn.transaction():
        await conn.execute("SET LOCAL gateway.bulk = 'on'")
        ids: list[int] = [
            row[0]
            for row in await conn.fetch(
                "SELECT nextval(pg_get_serial_sequence('leads', 'id')) FROM generate_series(1, $1)",
                len(leads),
            )
        ]
        now = await conn.fetchval("SELECT now()")
        await conn.copy_records_to_table(
            "leads",
            columns=["id", "account_id", "name", "primary_agent_id", "source", "created_at"],
            records=[
                (lead_id, account_id, lead.name, lead.primary_agent_id, lead.source, lead.created_at or now)
                for lead_id, lead in zip(ids, leads, strict=True)
            ],
        )
        await conn.copy_records_to_table(
            "lead_phones",
            columns=["account_id", "lead_id", "e164"],
            records=[
                (account_id, lead_id, phone)
                for lead_id, lead in zip(ids, leads, strict=True)
                for phone in lead.phones
            ],
        )
        await conn.copy_records_to_table(
            "lead_tags",
            columns=["account_id", "lead_id", "tag"],
            records=[
                (account_id, lead_id, tag)
                for lead_id, lead in zip(ids, leads, strict=True)
                for tag in lead.tags
            ],
        )
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, RELOAD_EVENT)
    return ids


async def _set_phones_and_tags(
    conn: Conn, account_id: int, lead_id: int, phones: tuple[str, ...], tags: tuple[str, ...]
) -> None:
    if phones:
        await conn.execute(
            "INSERT INTO lead_phones (account_id, lead_id, e164) SELECT $1, $2, p FROM unnest($3::text[]) p"
            " ON CONFLICT DO NOTHING",
            account_id,
            lead_id,
            list(phones),
        )
    if tags:
        await conn.execute(
            "INSERT INTO lead_tags (account_id, lead_id, tag) SELECT $1, $2, t FROM unnest($3::text[]) t"
            " ON CONFLICT DO NOTHING",
            account_id,
            lead_id,
            list(tags),
        )
