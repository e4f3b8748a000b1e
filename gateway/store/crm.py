"""What a routed call or text leaves behind in the CRM: timeline records
(R1-R3), unknown-caller notifications (R8) and usage (R9).

Every write carries an idempotency key derived from the event's own stable key
(the SIP Call-ID, the provider's message id), so a replay, a retry or a
redelivery writes nothing twice. Callers run these inside their own
transaction, beside the message or call record they belong to.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Any, Literal

from gateway.domain.billing import allowance, billing_period, quota_allows
from gateway.domain.index import Index, Number
from gateway.domain.notifications import r8_recipients
from gateway.domain.routing import Channel, Decision, rotate, route
from gateway.store import Conn

UsageKind = Literal["call_minutes", "text_segments"]


@dataclass(frozen=True, slots=True)
class InboundEvent:
    """One inbound call or text, as the CRM records it."""

    number: Number
    channel: Channel
    caller: str  # E.164
    event_key: str  # stable and unique: "call:<Call-ID>", "text:<provider>:<id>"
    occurred_at: datetime
    agent_id: int | None = None  # who answered the call / got the text
    ended_at: datetime | None = None
    duration_s: int | None = None
    disposition: str | None = None  # calls: answered, no_answer, busy_limit, ...
    message_id: int | None = None
    call_record_id: int | None = None
    direction: Literal["inbound", "outbound"] = "inbound"


async def record_timeline(conn: Conn, event: InboundEvent, decision: Decision) -> int:
    """R1-R3: one record on each lead the decision names (all duplicates when
    they share the agent, only the newest otherwise). Returns how many were new.
    One round trip whatever the number of leads."""
    if not decision.timeline_leads:
        return 0
    leads = list(decision.timeline_leads)
    rows = await conn.fetch(
        "INSERT INTO timeline_events (account_id, lead_id, number_id, channel, direction, agent_id,"
        " reason, disposition, duration_s, message_id, call_record_id, occurred_at, ended_at,"
        " idempotency_key)"
        " SELECT $1, lead, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13 || ':lead:' || lead"
        " FROM unnest($14::bigint[]) AS lead"
        " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
        event.number.account_id,
        event.number.id,
        event.channel,
        event.direction,
        event.agent_id,
        decision.reason,
        event.disposition,
        event.duration_s,
        event.message_id,
        event.call_record_id,
        event.occurred_at,
        event.ended_at,
        event.event_key,
        leads,
    )
    return len(rows)


def r8_recipients_sql(pairs: tuple[int, int], admins: int) -> str:
    """R8's recipients inside a batch statement, as a CTE body over its
    ``claimed`` rows: the (ord, user) pairs routed (parameters ``pairs``),
    and for the ords in parameter ``admins`` the account's owners and admins
    (``r8_recipients`` returned None for them)."""
    return (
        f"SELECT c.ord, n.user_id FROM claimed c"
        f" JOIN unnest(${pairs[0]}::int[], ${pairs[1]}::bigint[]) AS n(ord, user_id) ON n.ord = c.ord"
        f" UNION SELECT c.ord, u.id FROM claimed c JOIN unnest(${admins}::int[]) AS a(ord) ON a.ord = c.ord"
        " JOIN users u ON u.account_id = c.account_id AND u.role IN ('owner', 'admin')"
    )


async def raise_unknown_caller_notifications(
    conn: Conn, event: InboundEvent, decision: Decision
) -> list[int]:
    """R8: an unknown caller was not answered; notify the users
    :func:`r8_recipients` names (the routed users, else the account's owners
    and admins), carrying the number's source and tag as they are now. Returns
    the new notification ids (none when already raised). One round trip."""
    recipients = r8_recipients(decision)
    rows = await conn.fetch(
        "WITH recipient AS (SELECT u FROM unnest($10::bigint[]) AS u"
        " UNION SELECT id FROM users WHERE $11 AND account_id = $1 AND role IN ('owner', 'admin')),"
        " raised AS (INSERT INTO notifications (account_id, user_id, number_id, channel, event_key,"
        " caller_e164, source, tag, call_record_id, message_id)"
        " SELECT $1, u, $2, $3, $4, $5, $6, $7, $8, $9 FROM recipient"
        " ON CONFLICT DO NOTHING"
        " RETURNING id, user_id, number_id, channel, caller_e164, source, tag, created_at),"
        # Announced on each user's real-time stream, in the same transaction.
        " announced AS (INSERT INTO user_events (account_id, user_id, kind, payload)"
        " SELECT $1, user_id, 'notification', to_jsonb(raised) FROM raised)"
        " SELECT id FROM raised",
        event.number.account_id,
        event.number.id,
        event.channel,
        event.event_key,
        event.caller,
        event.number.source,
        event.number.tag,
        event.call_record_id,
        event.message_id,
        list(recipients or ()),
        recipients is None,
    )
    return [row["id"] for row in rows]


@dataclass(frozen=True, slots=True)
class UsageEntry:
    quantity: int
    recorded: bool  # False when this event was already charged


async def record_usage(
    conn: Conn,
    *,
    account_id: int,
    user_id: int,
    kind: UsageKind,
    quantity: int,
    at: datetime,
    number_id: int | None,
    event_key: str,
    call_record_id: int | None = None,
    message_id: int | None = None,
) -> UsageEntry:
    """R9: charge ``quantity`` to the user (never to the number). Idempotent per
    (event, user, kind). One round trip; whether it is over quota is derived when
    usage is read (``domain/billing.over_quota``)."""
    inserted = await conn.fetchval(
        "INSERT INTO usage_ledger (account_id, user_id, period, kind, quantity, number_id,"
        " call_record_id, message_id, idempotency_key, created_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
        account_id,
        user_id,
        billing_period(at),
        kind,
        quantity,
        number_id,
        call_record_id,
        message_id,
        f"{event_key}:usage:{user_id}:{kind}",
        at,
    )
    return UsageEntry(quantity, inserted is not None)


async def next_round_robin_turn(conn: Conn, number_id: int) -> int:
    """R4: claim the number's next round-robin turn, atomically across every
    process that routes. One round trip; rotate the targets with the result."""
    turn: int = await conn.fetchval(
        "INSERT INTO round_robin_cursors AS c (number_id, turns) VALUES ($1, 1)"
        " ON CONFLICT (number_id) DO UPDATE SET turns = c.turns + 1 RETURNING c.turns - 1",
        number_id,
    )
    return turn


async def decide(conn: Conn, index: Index, number: Number, caller: str | None) -> Decision:
    """The routing decision with round-robin applied: pure ``route()``, plus one
    round trip to claim the number's shared turn when the route rotates."""
    decision = route(index, number, caller)
    if decision.strategy == "round_robin" and len(decision.targets) > 1:
        turn = await next_round_robin_turn(conn, number.id)
        decision = replace(decision, targets=rotate(decision.targets, turn))
    return decision


async def may_use(
    conn: Conn, account_id: int, user_id: int, kind: UsageKind, quantity: int, at: datetime
) -> bool:
    """R9 for outbound sends: False only when the account blocks over-quota usage
    and this would exceed the user's allowance for the period. One round trip."""
    row = await _allowance(conn, account_id, user_id, kind, billing_period(at))
    included = allowance(row["included"], row["addon"])
    return quota_allows(row["mode"], int(row["used"]), included, quantity)


async def _allowance(conn: Conn, account_id: int, user_id: int, kind: UsageKind, period: date) -> Any:
    """The user's allowance for ``kind``, their usage so far in ``period`` and the
    account's over-quota mode. One round trip; LookupError outside the account.
    The period's sum is only computed for a user with an allowance: without one
    nothing is ever over quota, and a busy shared agent must not pay a growing
    sum on every text."""
    row = await conn.fetchrow(
        "WITH u AS (SELECT u.id, a.over_quota AS mode,"
        "  CASE WHEN $3 = 'call_minutes' THEN u.included_minutes ELSE u.included_segments END AS included,"
        "  CASE WHEN $3 = 'call_minutes' THEN u.addon_minutes ELSE u.addon_segments END AS addon"
        "  FROM users u JOIN accounts a ON a.id = u.account_id WHERE u.id = $1 AND u.account_id = $2)"
        " SELECT mode, included, addon, CASE WHEN included IS NULL THEN 0 ELSE COALESCE((SELECT sum(quantity)"
        "  FROM usage_ledger l WHERE l.user_id = u.id AND l.period = $4 AND l.kind = $3), 0) END AS used"
        " FROM u",
        user_id,
        account_id,
        kind,
        period,
    )
    if row is None:
        raise LookupError(f"user {user_id} is not in account {account_id}")
    return row
