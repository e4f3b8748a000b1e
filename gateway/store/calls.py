"""Call records, written at call end with everything the call causes (issue 6):
the record, timeline records (R1-R3), usage minutes to whoever answered (R9)
and, for an unanswered unknown caller, the R8 notifications.

Records reach Postgres through the outbox (:mod:`gateway.store.outbox`),
which makes them durable first. A replay writes nothing twice: the record is
claimed by ``UNIQUE (sip_call_id, direction)`` and every other row carries an
idempotency key derived from it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import TypeAdapter

from gateway.domain.billing import billable_minutes, billing_period
from gateway.domain.index import Number
from gateway.domain.notifications import call_raises_r8, r8_recipients
from gateway.domain.routing import Decision
from gateway.store import Conn
from gateway.store.crm import r8_recipients_sql

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CallRecord:
    sip_call_id: str
    direction: Literal["inbound", "outbound"]
    number: Number
    caller: str  # E.164, or "anonymous"
    callee: str
    invited_at: datetime
    ended_at: datetime
    disposition: str
    decision: Decision | None = None  # the routing (inbound) or the destination's leads (outbound)
    targets_tried: tuple[int, ...] = ()
    answered_by: int | None = None
    answered_at: datetime | None = None
    steps: tuple[dict[str, Any], ...] = ()  # R18: the chain as it went (see sip.call.Outcome)


async def write_calls(conn: Conn, records: list[CallRecord]) -> dict[int, int]:
    """Store finished calls and everything they cause, inside the caller's
    transaction (the outbox's apply): {position in ``records``: new record id}
    for each call not stored before (a replay writes nothing twice). One round
    trip whatever the batch: Postgres's cost grows with the rows on a fixed
    ~1 ms. A value Postgres refuses fails the whole statement; the outbox then
    writes the batch call by call."""
    if not records:
        return {}
    return {row["ord"]: row["id"] for row in await conn.fetch(_BATCH, *_columns(records))}


def _columns(batch: list[CallRecord]) -> list[list[Any]]:
    """The statement's arrays: one entry per call, then (call, lead) pairs for
    the R1-R3 timeline, (call, user) pairs for R8 notifications and the calls
    whose R8 goes to the account's owners and admins."""
    leads: list[tuple[int, int]] = []
    notify: list[tuple[int, int]] = []
    admins: list[int] = []
    for i, rec in enumerate(batch):
        decision = rec.decision
        if decision is None:
            continue
        leads += [(i, lead) for lead in decision.timeline_leads]
        if rec.direction == "inbound" and call_raises_r8(decision, rec.caller, rec.disposition):
            recipients = r8_recipients(decision)
            if recipients is None:
                admins.append(i)
            else:
                notify += [(i, user) for user in recipients]
    answered = [rec.answered_at is not None and rec.answered_by is not None for rec in batch]
    return [
        list(range(len(batch))),
        [rec.number.account_id for rec in batch],
        [rec.number.id for rec in batch],
        [rec.sip_call_id for rec in batch],
        [rec.direction for rec in batch],
        [rec.caller for rec in batch],
        [rec.callee for rec in batch],
        ["{" + ",".join(map(str, rec.targets_tried)) + "}" for rec in batch],
        [rec.answered_by for rec in batch],
        [rec.invited_at for rec in batch],
        [rec.answered_at for rec in batch],
        [rec.ended_at for rec in batch],
        [rec.disposition for rec in batch],
        [json.dumps(list(rec.steps)) for rec in batch],
        [f"call:{rec.direction}:{rec.sip_call_id}" for rec in batch],
        ["answered" if a else "missed" for a in answered],
        [int((rec.ended_at - rec.answered_at).total_seconds()) if rec.answered_at else None for rec in batch],
        [None if rec.decision is None else rec.decision.reason for rec in batch],
        # R9: minutes to whoever answered, never to the number.
        [
            billable_minutes(rec.answered_at, rec.ended_at) if a else None
            for rec, a in zip(batch, answered, strict=True)
        ],
        [billing_period(rec.ended_at) for rec in batch],
        [rec.caller if rec.direction == "inbound" else rec.callee for rec in batch],
        [i for i, _ in leads],
        [lead for _, lead in leads],
        [i for i, _ in notify],
        [user for _, user in notify],
        admins,
    ]


# The claim, each record, the R1-R3 timeline, the R9 usage and the R8
# notifications (announced on each user's live stream), for many calls in one
# statement: every part reads from the claim, so a replay writes nothing else.
# Records are inserted in Call-ID order, so two writers racing never deadlock.
_BATCH = """
WITH input AS (
    SELECT * FROM unnest($1::int[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[],
                         $7::text[], $8::text[], $9::bigint[], $10::timestamptz[], $11::timestamptz[],
                         $12::timestamptz[], $13::text[], $14::text[], $15::text[], $16::text[], $17::int[],
                         $18::text[], $19::int[], $20::date[], $21::text[])
        AS t(ord, account_id, number_id, sip_call_id, direction, caller, callee, targets, answered_by,
             invited_at, answered_at, ended_at, disposition, steps, event_key, outcome, duration_s, reason,
             minutes, period, other_party)
), rec AS (
    INSERT INTO call_records (account_id, number_id, sip_call_id, direction, caller_e164, callee_e164,
                              targets_tried, answered_by, invited_at, answered_at, ended_at, disposition,
                              steps)
    SELECT account_id, number_id, sip_call_id, direction, caller, callee, targets::bigint[], answered_by,
           invited_at, answered_at, ended_at, disposition, steps::jsonb
      FROM input ORDER BY sip_call_id, direction
    ON CONFLICT (sip_call_id, direction) DO NOTHING
    RETURNING id, sip_call_id, direction
), claimed AS (
    SELECT DISTINCT ON (r.id) r.id, i.*
      FROM rec r JOIN input i ON i.sip_call_id = r.sip_call_id AND i.direction = r.direction
     ORDER BY r.id, i.ord
), timeline AS (
    INSERT INTO timeline_events (account_id, lead_id, number_id, channel, direction, agent_id, reason,
                                 disposition, duration_s, call_record_id, occurred_at, ended_at,
                                 idempotency_key)
    SELECT c.account_id, l.lead, c.number_id, 'call', c.direction, c.answered_by, c.reason, c.outcome,
           c.duration_s, c.id, c.invited_at, c.ended_at, c.event_key || ':lead:' || l.lead
      FROM claimed c JOIN unnest($22::int[], $23::bigint[]) AS l(ord, lead) ON l.ord = c.ord
    ON CONFLICT (idempotency_key) DO NOTHING
), usage AS (
    INSERT INTO usage_ledger (account_id, user_id, period, kind, quantity, number_id, call_record_id,
                              idempotency_key, created_at)
    SELECT account_id, answered_by, period, 'call_minutes', minutes, number_id, id,
           event_key || ':usage:' || answered_by || ':call_minutes', ended_at
      FROM claimed WHERE minutes IS NOT NULL
    ON CONFLICT (idempotency_key) DO NOTHING
), r8 AS (
    {R8}
), raised AS (
    -- R8 carries the number's source and tag as they are now.
    INSERT INTO notifications (account_id, user_id, number_id, channel, event_key, caller_e164, source, tag,
                               call_record_id)
    SELECT c.account_id, r.user_id, c.number_id, 'call', c.event_key, c.other_party, n.source, n.tag, c.id
      FROM r8 r JOIN claimed c ON c.ord = r.ord JOIN numbers n ON n.id = c.number_id
     ORDER BY c.ord, r.user_id
    ON CONFLICT DO NOTHING
    RETURNING id, user_id, number_id, channel, caller_e164, source, tag, created_at, account_id
), announced AS (
    INSERT INTO user_events (account_id, user_id, kind, payload)
    SELECT account_id, user_id, 'notification', to_jsonb(raised) - 'account_id'
      FROM raised ORDER BY id
)
SELECT ord, id FROM claimed
""".replace("{R8}", r8_recipients_sql((24, 25), 26))


# The outbox's form of a call record (issue 7), derived from the dataclass
# itself: nested numbers, decisions, tuples and times round-trip without a
# hand-written converter to keep in step with every new field (issue 17).
_CALL_JSON = TypeAdapter(CallRecord)


def call_to_json(rec: CallRecord) -> dict[str, Any]:
    """Plain JSON, times in ISO 8601. About 8 microseconds."""
    data: dict[str, Any] = _CALL_JSON.dump_python(rec, mode="json")
    return data


def call_from_json(data: dict[str, Any]) -> CallRecord:
    """The record back, as frozen and hashable as it was. Validated: a damaged
    entry raises ``pydantic.ValidationError``. About 8 microseconds."""
    return _CALL_JSON.validate_python(data)
