"""Call records, written at call end with everything the call causes (issue 6):
the record, timeline records (R1-R3), usage minutes to whoever answered (R9)
and, for an unanswered unknown caller, the R8 notifications.

Records reach Postgres through the outbox (:mod:`gateway.store.outbox`),
which makes them durable first. A replay writes nothing twice: the record is
claimed by ``UNIQUE (sip_call_id, direction)`` and every other row carries an
idempotency key derived from it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from gateway.domain.billing import billable_minutes
from gateway.domain.hours import BusinessHours
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


def call_to_json(rec: CallRecord) -> dict[str, Any]:
    """The outbox's form of a call record (issue 7): plain JSON, times in ISO 8601.
    One shallow dict per call; the number and decision, immutable and shared
    by many calls, are converted once each (``dataclasses.asdict`` deep-copies
    them on every call, a measurable share of a call's CPU at hundreds a second)."""
    data = {field.name: getattr(rec, field.name) for field in _RECORD_FIELDS}
    data["number"] = _plain(rec.number)
    data["decision"] = None if rec.decision is None else _plain(rec.decision)
    data["targets_tried"] = list(rec.targets_tried)
    data["steps"] = list(rec.steps)
    for key in ("invited_at", "ended_at", "answered_at"):
        value = data[key]
        data[key] = value.isoformat() if value is not None else None
    return data


@functools.lru_cache(maxsize=4096)
def _plain(value: Number | Decision) -> dict[str, Any]:
    return dataclasses.asdict(value)


def call_from_json(data: dict[str, Any]) -> CallRecord:
    number = data["number"]
    decision = data["decision"]
    return CallRecord(
        **{
            **data,
            "number": _number(number),
            "decision": None if decision is None else _decision(decision),
            "targets_tried": tuple(data["targets_tried"]),
            "steps": tuple(data.get("steps", ())),
            "invited_at": datetime.fromisoformat(data["invited_at"]),
            "ended_at": datetime.fromisoformat(data["ended_at"]),
            "answered_at": datetime.fromisoformat(data["answered_at"]) if data["answered_at"] else None,
        }
    )


_RECORD_FIELDS = dataclasses.fields(CallRecord)


def _number(n: dict[str, Any]) -> Number:
    """The outbox's number back as the frozen (hashable) value it was."""
    hours = n.get("hours")
    return Number(
        **{
            **n,
            "route_user_ids": tuple(n["route_user_ids"]),
            "after_hours_user_ids": tuple(n.get("after_hours_user_ids", ())),
            "hours": None
            if hours is None
            else BusinessHours(
                hours["time_zone"],
                tuple(tuple((start, end) for start, end in day) for day in hours["weekly"]),
                tuple(hours["closed_dates"]),
            ),
        }
    )


def _decision(d: dict[str, Any]) -> Decision:
    return Decision(
        reason=d["reason"],
        strategy=d["strategy"],
        targets=tuple(d["targets"]),
        timeline_leads=tuple(d["timeline_leads"]),
        step_timeout_s=d["step_timeout_s"],
        skipped=tuple(d["skipped"]),
    )
