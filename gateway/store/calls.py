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

from gateway.domain.billing import billable_minutes
from gateway.domain.index import Number
from gateway.domain.notifications import call_raises_r8
from gateway.domain.routing import Decision
from gateway.store import Conn
from gateway.store.crm import InboundEvent, raise_unknown_caller_notifications, record_timeline, record_usage

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


async def write_call(conn: Conn, rec: CallRecord) -> int | None:
    """Store one finished call and its effects, inside the caller's
    transaction (the outbox's apply). Returns the new record's id, or None
    when it was already stored. 2-5 round trips."""
    record_id: int | None = await conn.fetchval(
        "INSERT INTO call_records (account_id, number_id, sip_call_id, direction, caller_e164,"
        " callee_e164, targets_tried, answered_by, invited_at, answered_at, ended_at, disposition, steps)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::jsonb)"
        " ON CONFLICT (sip_call_id, direction) DO NOTHING RETURNING id",
        rec.number.account_id,
        rec.number.id,
        rec.sip_call_id,
        rec.direction,
        rec.caller,
        rec.callee,
        list(rec.targets_tried),
        rec.answered_by,
        rec.invited_at,
        rec.answered_at,
        rec.ended_at,
        rec.disposition,
        json.dumps(list(rec.steps)),
    )
    if record_id is None:
        return None
    answered = rec.answered_at is not None and rec.answered_by is not None
    duration = int((rec.ended_at - rec.answered_at).total_seconds()) if rec.answered_at else None
    key = f"call:{rec.direction}:{rec.sip_call_id}"
    event = InboundEvent(
        number=rec.number,
        channel="call",
        caller=rec.caller if rec.direction == "inbound" else rec.callee,
        event_key=key,
        occurred_at=rec.invited_at,
        agent_id=rec.answered_by,
        ended_at=rec.ended_at,
        duration_s=duration,
        disposition="answered" if answered else "missed",
        call_record_id=record_id,
        direction=rec.direction,
    )
    if rec.decision is not None:
        await record_timeline(conn, event, rec.decision)
        if rec.direction == "inbound" and call_raises_r8(rec.decision, rec.caller, rec.disposition):
            await raise_unknown_caller_notifications(conn, event, rec.decision)
    if answered and rec.answered_by is not None and rec.answered_at is not None:
        await record_usage(
            conn,
            account_id=rec.number.account_id,
            user_id=rec.answered_by,
            kind="call_minutes",
            quantity=billable_minutes(rec.answered_at, rec.ended_at),
            at=rec.ended_at,
            number_id=rec.number.id,
            event_key=key,
            call_record_id=record_id,
        )
    return record_id


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
