"""R8: acting on an unknown-caller notification.

Seed (Chime, Source and Tag): "If this is being added as a New Lead, the lead's
Source will be the Source applied to the Company Number and the Tag will be
added to the lead's profile. If this is being associated with an existing
lead, which already has a Source, the Source applied to the Company Number
will be added to the lead's profile as a Tag and the Tag will also be added
to the lead's profile as a Tag." A lead keeps exactly one source.

Both actions are idempotent: repeating one returns the same lead; acting
differently on a closed notification is a conflict. Acting closes every
notification the same call or text raised (a ring_all route notifies several
users; one answer settles it for all).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import asyncpg

from gateway.store import Conn

Action = Literal["new_lead", "associate"]


class NotFound(Exception):
    """No such notification or lead in this account (or not this user's to see)."""


class Conflict(Exception):
    """The notification was already settled another way."""


@dataclass(frozen=True, slots=True)
class Outcome:
    lead_id: int
    created: bool  # a new lead was made by this request


def fallback_source(channel: str) -> str:
    """A lead needs exactly one source; a number without one gives this."""
    return "Inbound call" if channel == "call" else "Inbound text"


async def act(
    conn: Conn,
    *,
    account_id: int,
    notification_id: int,
    actor_id: int,
    actor_may_act_for_others: bool,
    action: Action,
    lead_id: int | None = None,
    primary_agent_id: int | None = None,
    name: str = "",
) -> Outcome:
    """Settle a notification with ``action``. One transaction, a handful of
    statements; the new or changed lead reaches the routing index through NOTIFY."""
    async with conn.transaction():
        note = await conn.fetchrow(
            "SELECT * FROM notifications WHERE id = $1 AND account_id = $2 FOR UPDATE",
            notification_id,
            account_id,
        )
        if note is None or (note["user_id"] != actor_id and not actor_may_act_for_others):
            raise NotFound("notification")
        if note["state"] == "closed":
            return _repeat(note, action, lead_id)
        if action == "new_lead":
            outcome = await _new_lead(conn, note, primary_agent_id or actor_id, name)
        else:
            assert lead_id is not None
            outcome = await _associate(conn, note, lead_id)
        await _add_to_timeline(conn, note, outcome.lead_id)
        await conn.execute(
            "UPDATE notifications SET state = 'closed', closed_at = now(), closed_by = $3,"
            " action = $4, lead_id = $5"
            " WHERE account_id = $1 AND event_key = $2 AND state = 'open'",
            account_id,
            note["event_key"],
            actor_id,
            action,
            outcome.lead_id,
        )
        return outcome


def _repeat(note: Any, action: Action, lead_id: int | None) -> Outcome:
    same = note["action"] == action and (action == "new_lead" or note["lead_id"] == lead_id)
    if not same or note["lead_id"] is None:
        raise Conflict(f"notification already settled: {note['action']}")
    return Outcome(note["lead_id"], created=False)


async def _new_lead(conn: Conn, note: Any, agent_id: int, name: str) -> Outcome:
    source = note["source"] or fallback_source(note["channel"])
    try:
        new_id: int = await conn.fetchval(
            "INSERT INTO leads (account_id, name, primary_agent_id, source) VALUES ($1, $2, $3, $4)"
            " RETURNING id",
            note["account_id"],
            name,
            agent_id,
            source,
        )
    except asyncpg.ForeignKeyViolationError:
        raise NotFound("primary_agent_id") from None
    await _add_phone_and_tags(conn, note, new_id, [note["tag"]])
    return Outcome(new_id, created=True)


async def _associate(conn: Conn, note: Any, lead_id: int) -> Outcome:
    exists = await conn.fetchval(
        "SELECT 1 FROM leads WHERE id = $1 AND account_id = $2 FOR UPDATE", lead_id, note["account_id"]
    )
    if exists is None:
        raise NotFound("lead_id")
    # The lead's one source stays; the number's source joins its tags.
    await _add_phone_and_tags(conn, note, lead_id, [note["source"], note["tag"]])
    return Outcome(lead_id, created=False)


async def _add_to_timeline(conn: Conn, note: Any, lead_id: int) -> None:
    """Issue 15, item 3: the missed call or the text that raised the
    notification opens the lead's history, under the same idempotency key the
    call or text writer uses (``<event key>:lead:<lead id>``), so nothing is
    recorded twice. One statement."""
    if note["call_record_id"] is not None:
        await conn.execute(
            "INSERT INTO timeline_events (account_id, lead_id, number_id, channel, direction, agent_id,"
            " reason, disposition, duration_s, call_record_id, occurred_at, ended_at, idempotency_key)"
            " SELECT c.account_id, $3::bigint, c.number_id, 'call', c.direction, c.answered_by,"
            " 'unknown_caller', CASE WHEN c.answered_at IS NULL THEN 'missed' ELSE 'answered' END,"
            " extract(epoch FROM c.ended_at - c.answered_at)::int, c.id, c.invited_at, c.ended_at,"
            " 'call:' || c.direction || ':' || c.sip_call_id || ':lead:' || $3::bigint"
            " FROM call_records c WHERE c.account_id = $1 AND c.id = $2"
            " ON CONFLICT (idempotency_key) DO NOTHING",
            note["account_id"],
            note["call_record_id"],
            lead_id,
        )
    elif note["message_id"] is not None:
        await conn.execute(
            "INSERT INTO timeline_events (account_id, lead_id, number_id, channel, direction, agent_id,"
            " reason, message_id, occurred_at, idempotency_key)"
            " SELECT m.account_id, $3::bigint, m.number_id, 'text', m.direction, m.user_id,"
            " 'unknown_caller', m.id, m.created_at,"
            " 'text:' || m.provider || ':' || m.provider_message_id || ':lead:' || $3::bigint"
            " FROM messages m WHERE m.account_id = $1 AND m.id = $2"
            " ON CONFLICT (idempotency_key) DO NOTHING",
            note["account_id"],
            note["message_id"],
            lead_id,
        )


async def _add_phone_and_tags(conn: Conn, note: Any, lead_id: int, tags: list[str | None]) -> None:
    await conn.execute(
        "INSERT INTO lead_phones (account_id, lead_id, e164) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        note["account_id"],
        lead_id,
        note["caller_e164"],
    )
    wanted = [tag for tag in tags if tag]
    if wanted:
        await conn.execute(
            "INSERT INTO lead_tags (account_id, lead_id, tag) SELECT $1, $2, t FROM unnest($3::text[]) t"
            " ON CONFLICT DO NOTHING",
            note["account_id"],
            lead_id,
            wanted,
        )
