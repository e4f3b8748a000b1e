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

from gateway.domain.billing import text_segments
from gateway.domain.index import Index
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


async def accept(conn: Conn, index: Index, text: InboundText) -> Accepted:
    """Store ``text`` with everything it causes, in one transaction; return only
    after commit. A few round trips; no lock beyond the claim's unique index."""
    number = index.number(text.to_e164)
    if number is None:
        raise UnknownNumber(text.to_e164)
    segments = text.segments if text.segments and 0 < text.segments <= 100 else text_segments(text.body)
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
            existing: int = await conn.fetchval(
                "SELECT id FROM messages WHERE provider = $1 AND provider_message_id = $2",
                text.provider,
                text.provider_message_id,
            )
            return Accepted(existing, duplicate=True)
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
