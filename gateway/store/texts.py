"""Inbound texts, from any provider, through one pipeline (issue 5):
claim -> route (R1-R6) -> message, timeline, usage -> commit -> acknowledge.

The claim is ``INSERT ... ON CONFLICT (provider, provider_message_id) DO
NOTHING`` inside the same transaction as the side effects (DESIGN §5): a
redelivery, even one racing the first delivery, changes nothing and is still
acknowledged. Texting has no concurrency limit (seed: "no limit to the number
of text messages").
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from gateway.domain.billing import billing_period, text_segments
from gateway.domain.index import Index, Number
from gateway.domain.routing import route
from gateway.store import Conn
from gateway.store.crm import InboundEvent, decide, record_timeline, record_usage

Provider = Literal["twilio", "telnyx", "sip"]


@dataclass(frozen=True, slots=True)
class InboundText:
    """A text as every provider's adapter normalises it (E.164 numbers)."""

    provider: Provider
    provider_message_id: str
    from_e164: str
    to_e164: str
    body: str
    received_at: datetime
    media: list[dict[str, str]] = field(default_factory=list)
    segments: int | None = None  # the provider's count, when it sends one


@dataclass(frozen=True, slots=True)
class Accepted:
    message_id: int
    duplicate: bool
    recipients: tuple[int, ...] = ()
    reason: str = ""


class UnknownNumber(Exception):
    """The text was sent to a number this gateway does not own."""


def segments_of(text: InboundText) -> int:
    """R9: the provider's segment count when it sends a plausible one, else ours."""
    return text.segments if text.segments and 0 < text.segments <= 100 else text_segments(text.body)


async def accept(conn: Conn, index: Index, text: InboundText) -> Accepted:
    """Store ``text`` with everything it causes, atomically; return only after
    commit. One statement (one round trip, one commit) unless the number hunts
    round-robin, whose shared turn needs a transaction of a few round trips.
    No lock beyond the claim's unique index."""
    number = index.number(text.to_e164)
    if number is None:
        raise UnknownNumber(text.to_e164)
    segments = segments_of(text)
    decision = route(index, number, text.from_e164)
    if decision.strategy == "round_robin" and len(decision.targets) > 1:
        return await _accept_round_robin(conn, index, text, number, segments)
    recipients = decision.text_recipients()
    handler = recipients[0] if recipients else None  # R9: the first recipient is charged, once
    event_key = f"text:{text.provider}:{text.provider_message_id}"
    message_id = await conn.fetchval(
        _ACCEPT_IN_ONE_STATEMENT,
        number.account_id,
        number.id,
        text.provider,
        text.provider_message_id,
        text.from_e164,
        text.to_e164,
        text.body,
        json.dumps(text.media),
        segments,
        handler,
        "received" if recipients else "undelivered_no_target",  # R6: stored, never lost
        text.received_at,
        list(recipients),
        decision.reason,
        event_key,
        list(decision.timeline_leads),
        billing_period(text.received_at),
    )
    if message_id is None:
        return Accepted(await _existing(conn, text), duplicate=True)
    return Accepted(message_id, duplicate=False, recipients=recipients, reason=decision.reason)


# The claim, the message, each recipient's live event, the R1-R3 timeline and
# the R9 usage, as one atomic statement: every part reads from the claim, so a
# redelivery (the claim inserts nothing) writes nothing else. Over quota is
# billing.over_quota's rule: an allowance, and used + quantity beyond it.
_ACCEPT_IN_ONE_STATEMENT = """
WITH msg AS (
    INSERT INTO messages (account_id, number_id, direction, provider, provider_message_id, from_e164, to_e164,
                          body, media, segments, user_id, status, created_at)
    VALUES ($1, $2, 'inbound', $3, $4, $5, $6, $7, $8::jsonb, $9, $10, $11, $12)
    ON CONFLICT (provider, provider_message_id) DO NOTHING
    RETURNING id, from_e164, to_e164, body, media, number_id, created_at
), live AS (
    INSERT INTO user_events (account_id, user_id, kind, payload)
    SELECT $1, u, 'text', jsonb_build_object('message_id', m.id, 'from', m.from_e164, 'to', m.to_e164,
           'body', m.body, 'media', m.media, 'number_id', m.number_id, 'created_at', m.created_at)
      FROM msg m, unnest($13::bigint[]) u
), timeline AS (
    INSERT INTO timeline_events (account_id, lead_id, number_id, channel, direction, agent_id, reason,
                                 message_id, occurred_at, idempotency_key)
    SELECT $1, lead, $2, 'text', 'inbound', $10, $14, m.id, $12, $15 || ':lead:' || lead
      FROM msg m, unnest($16::bigint[]) lead
    ON CONFLICT (idempotency_key) DO NOTHING
), allowance AS (
    SELECT u.included_segments AS included,
           CASE WHEN u.included_segments IS NULL THEN 0
                ELSE COALESCE((SELECT sum(quantity) FROM usage_ledger l
                                WHERE l.user_id = u.id AND l.period = $17 AND l.kind = 'text_segments'), 0)
           END AS used
      FROM users u WHERE u.id = $10 AND u.account_id = $1
), usage AS (
    INSERT INTO usage_ledger (account_id, user_id, period, kind, quantity, over_quota, number_id, message_id,
                              idempotency_key, created_at)
    SELECT $1, $10, $17, 'text_segments', $9, a.included IS NOT NULL AND a.used + $9 > a.included, $2, m.id,
           $15 || ':usage:' || $10 || ':text_segments', $12
      FROM msg m, allowance a
    ON CONFLICT (idempotency_key) DO NOTHING
)
SELECT id FROM msg
"""


async def _existing(conn: Conn, text: InboundText) -> int:
    existing: int = await conn.fetchval(
        "SELECT id FROM messages WHERE provider = $1 AND provider_message_id = $2",
        text.provider,
        text.provider_message_id,
    )
    return existing


async def _accept_round_robin(
    conn: Conn, index: Index, text: InboundText, number: Number, segments: int
) -> Accepted:
    """:func:`accept` for a number that hunts round-robin (R4): the turn is
    claimed in the same transaction as the rest. A few round trips."""
    async with conn.transaction():
        message_id = await conn.fetchval(
            "INSERT INTO messages (account_id, number_id, direction, provider, provider_message_id,"
            " from_e164, to_e164, body, media, segments, status, created_at)"
            " VALUES ($1, $2, 'inbound', $3, $4, $5, $6, $7, $8::jsonb, $9, 'received', $10)"
            " ON CONFLICT (provider, provider_message_id) DO NOTHING RETURNING id",
            number.account_id,
            number.id,
            text.provider,
            text.provider_message_id,
            text.from_e164,
            text.to_e164,
            text.body,
            json.dumps(text.media),
            segments,
            text.received_at,
        )
        if message_id is None:
            return Accepted(await _existing(conn, text), duplicate=True)
        decision = await decide(conn, index, number, text.from_e164)
        recipients = decision.text_recipients()
        # The first recipient handles it: R9 charges them, once, whoever else a blast reached.
        handler = recipients[0] if recipients else None
        await conn.execute(
            "UPDATE messages SET user_id = $2, status = $3 WHERE id = $1",
            message_id,
            handler,
            "received" if recipients else "undelivered_no_target",  # R6: stored, never lost
        )
        if recipients:
            # Every recipient sees it live (a ring_all blast reaches them all).
            await conn.execute(
                "INSERT INTO user_events (account_id, user_id, kind, payload)"
                " SELECT $1, u, 'text', jsonb_build_object('message_id', m.id, 'from', m.from_e164,"
                " 'to', m.to_e164, 'body', m.body, 'media', m.media, 'number_id', m.number_id,"
                " 'created_at', m.created_at)"
                " FROM unnest($2::bigint[]) u, messages m WHERE m.id = $3",
                number.account_id,
                list(recipients),
                message_id,
            )
        event = InboundEvent(
            number=number,
            channel="text",
            caller=text.from_e164,
            event_key=f"text:{text.provider}:{text.provider_message_id}",
            occurred_at=text.received_at,
            agent_id=handler,
            message_id=message_id,
        )
        await record_timeline(conn, event, decision)
        if handler is not None:
            await record_usage(
                conn,
                account_id=number.account_id,
                user_id=handler,
                kind="text_segments",
                quantity=segments,
                at=text.received_at,
                number_id=number.id,
                event_key=event.event_key,
                message_id=message_id,
            )
    return Accepted(message_id, duplicate=False, recipients=recipients, reason=decision.reason)


def media_list(urls: list[str], types: list[str]) -> list[dict[str, Any]]:
    return [{"url": url, "content_type": kind} for url, kind in zip(urls, types, strict=False)]


def text_to_json(text: InboundText) -> dict[str, Any]:
    """The outbox's form of a text (issue 7)."""
    data = dataclasses.asdict(text)
    data["received_at"] = text.received_at.isoformat()
    return data


def text_from_json(data: dict[str, Any]) -> InboundText:
    return InboundText(**{**data, "received_at": datetime.fromisoformat(data["received_at"])})
