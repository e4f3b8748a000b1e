"""Outbound texts (issue 5, R10): the idempotent claim before sending, the
record after it, and delivery statuses from the providers' callbacks."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from gateway.domain.index import Number
from gateway.domain.routing import Decision, Reason
from gateway.store import Conn
from gateway.store.crm import InboundEvent, record_timeline, record_usage

MESSAGE_COLUMNS = (
    "id, number_id, direction, provider, provider_message_id, from_e164, to_e164, body, segments,"
    " sent_by, status, error_code, created_at, updated_at"
)


Claim = Literal["new", "replay", "conflict"]


async def claim(
    conn: Conn,
    *,
    number: Number,
    user_id: int,
    to_e164: str,
    body: str,
    segments: int,
    idempotency_key: str | None,
    fingerprint: bytes | None,
    local_id: str,
) -> tuple[Any, Claim]:
    """Insert the message as ``queued`` and commit, before any send. One round
    trip, two when ``idempotency_key`` was already used by this user: then
    ``replay`` (the same request: do not send again) or ``conflict`` (another
    request under the same key)."""
    row = await conn.fetchrow(
        "INSERT INTO messages (account_id, number_id, direction, provider, provider_message_id, from_e164,"
        " to_e164, body, segments, sent_by, status, idempotency_key, idempotency_fingerprint)"
        " VALUES ($1, $2, 'outbound', $3, $4, $5, $6, $7, $8, $9, 'queued', $10, $11)"
        " ON CONFLICT (account_id, sent_by, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
        f" RETURNING {MESSAGE_COLUMNS}",
        number.account_id,
        number.id,
        number.provider,
        local_id,
        number.e164,
        to_e164,
        body,
        segments,
        user_id,
        idempotency_key,
        fingerprint,
    )
    if row is not None:
        return row, "new"
    existing = await conn.fetchrow(
        f"SELECT {MESSAGE_COLUMNS}, idempotency_fingerprint FROM messages"
        " WHERE account_id = $1 AND sent_by = $2 AND idempotency_key = $3",
        number.account_id,
        user_id,
        idempotency_key,
    )
    assert existing is not None  # the conflicting row: messages are never deleted
    same = existing["idempotency_fingerprint"] in (None, fingerprint)
    row = {name: value for name, value in existing.items() if name != "idempotency_fingerprint"}
    return row, "replay" if same else "conflict"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a send came to: ``sent`` is the provider's (message id, status),
    else the send failed with ``error_code``."""

    message_id: int
    number: Number
    user_id: int
    to_e164: str
    segments: int
    at: datetime
    sent: tuple[str, str] | None
    error_code: str


async def record_outcome(conn: Conn, outcome: Outcome, leads: tuple[int, ...], reason: Reason) -> Any:
    """After the send: its status (and on success the provider's id), and on
    success the R1-R3 timeline records on ``leads`` (``lead_rules`` of the
    destination's leads, for ``reason``) and R9 usage for the sender. One
    transaction, up to five round trips: :class:`gateway.store.outcome_batch.SendOutcomes`
    does the same for many sends at once, and falls back to this one send at a time."""
    message_id, number, user_id, sent = outcome.message_id, outcome.number, outcome.user_id, outcome.sent
    async with conn.transaction():
        if sent is not None:
            row = await conn.fetchrow(
                "UPDATE messages SET provider_message_id = $2, status = $3, updated_at = now() WHERE id = $1"
                f" RETURNING {MESSAGE_COLUMNS}",
                message_id,
                *sent,
            )
            event = InboundEvent(
                number=number,
                channel="text",
                caller=outcome.to_e164,
                event_key=f"text:out:{message_id}",
                occurred_at=outcome.at,
                agent_id=user_id,
                message_id=message_id,
                direction="outbound",
            )
            decision = Decision(reason, "single", (user_id,), leads, 0)
            await record_timeline(conn, event, decision)
            await record_usage(
                conn,
                account_id=number.account_id,
                user_id=user_id,
                kind="text_segments",
                quantity=outcome.segments,
                at=outcome.at,
                number_id=number.id,
                event_key=event.event_key,
                message_id=message_id,
            )
            return row
        return await conn.fetchrow(
            "UPDATE messages SET status = 'failed', error_code = $2, updated_at = now() WHERE id = $1"
            f" RETURNING {MESSAGE_COLUMNS}",
            message_id,
            outcome.error_code[:200],
        )
