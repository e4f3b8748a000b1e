"""Group commit for inbound texts (issue 13): Twilio, Telnyx and SIP MESSAGE
texts that wait for storage are written together (see
:mod:`gateway.store.group_commit`), one statement (arrays through ``unnest``)
and one commit per batch.

The claim stays atomic per message: the statement inserts each message with
``ON CONFLICT (provider, provider_message_id) DO NOTHING`` and every side
effect (live events, R1-R3 timeline, R9 usage) reads from what was inserted,
so a redelivery, in the same batch or racing another, writes nothing twice.
Inserts take message keys in (provider, id) order, so two batches racing on
redeliveries never deadlock.

A value Postgres refuses fails the statement; the batch is then written again
text by text, so only the bad text gets its error.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from gateway.domain.billing import billing_period
from gateway.domain.index import Index
from gateway.domain.routing import route
from gateway.store import Conn, texts
from gateway.store.group_commit import BatchObserver, GroupCommit, Overloaded, answer, fail
from gateway.store.texts import Accepted, InboundText, UnknownNumber

__all__ = ["DATA_REFUSED", "Overloaded", "TextBatcher"]

# Postgres refusing a value (class 22/23): that text's fault, not its batch-mates'.
DATA_REFUSED = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)


@dataclass(slots=True)
class _Row:
    text: InboundText
    account_id: int
    number_id: int
    segments: int
    handler: int | None
    status: str
    recipients: tuple[int, ...]
    reason: str
    leads: tuple[int, ...]
    waiters: list[asyncio.Future[Any]] = field(default_factory=list)


class TextBatcher(GroupCommit[tuple[str, str], _Row]):
    """Writes inbound texts in batches through ``pool`` (see the module doc)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_batch: int = 256,
        max_pending: int = 4096,
        writers: int = 2,
        acquire_timeout_s: float = 1.5,
        on_batch: BatchObserver | None = None,
    ) -> None:
        super().__init__(
            pool,
            max_batch=max_batch,
            max_pending=max_pending,
            writers=writers,
            acquire_timeout_s=acquire_timeout_s,
            on_batch=on_batch,
        )

    async def accept(self, index: Index, text: InboundText) -> Accepted:
        """Store ``text`` with everything it causes; return once committed.
        Costs a share of one statement and one commit. Raises UnknownNumber,
        Overloaded, a DATA_REFUSED error for this text alone, or the
        database's error when it is away."""
        number = index.number(text.to_e164)
        if number is None:
            raise UnknownNumber(text.to_e164)
        decision = route(index, number, text.from_e164)
        if decision.strategy == "round_robin" and len(decision.targets) > 1:
            # The shared turn needs its own transaction: not batched.
            async with self._pool.acquire(timeout=self._acquire_timeout_s) as conn:
                return await texts.accept(conn, index, text)

        def new_row() -> _Row:
            recipients = decision.text_recipients()
            return _Row(
                text=text,
                account_id=number.account_id,
                number_id=number.id,
                segments=texts.segments_of(text),
                handler=recipients[0] if recipients else None,  # R9: the first recipient is charged, once
                status="received" if recipients else "undelivered_no_target",  # R6: stored, never lost
                recipients=recipients,
                reason=decision.reason,
                leads=tuple(decision.timeline_leads),
            )

        _, waiter = self._join((text.provider, text.provider_message_id), new_row)
        accepted: Accepted = await waiter
        return accepted

    async def _write(self, conn: Conn, batch: list[_Row]) -> None:
        try:
            ids = {row["ord"]: row["id"] for row in await conn.fetch(_BATCH, *_columns(batch))}
        except DATA_REFUSED:
            await self._one_by_one(conn, batch)
            return
        missing = [row for i, row in enumerate(batch) if i not in ids]
        existing = await _existing(conn, missing) if missing else {}
        for i, row in enumerate(batch):
            if i in ids:
                _stored(row, Accepted(ids[i], duplicate=False, recipients=row.recipients, reason=row.reason))
            else:
                _stored(
                    row, Accepted(existing[(row.text.provider, row.text.provider_message_id)], duplicate=True)
                )

    async def _one_by_one(self, conn: Conn, batch: list[_Row]) -> None:
        """A refused value failed the batch: write each text alone, so only
        the bad one fails. Rare, and costs a statement per text."""
        for row in batch:
            try:
                ids = await conn.fetch(_BATCH, *_columns([row]))
                if ids:
                    accepted = Accepted(
                        ids[0]["id"], duplicate=False, recipients=row.recipients, reason=row.reason
                    )
                else:
                    found = await _existing(conn, [row])
                    accepted = Accepted(
                        found[(row.text.provider, row.text.provider_message_id)], duplicate=True
                    )
            except DATA_REFUSED as exc:
                fail(row, exc)
            else:
                _stored(row, accepted)


def _stored(row: _Row, accepted: Accepted) -> None:
    """Redeliveries that joined the same batch are duplicates of the first."""
    answer(row, accepted, Accepted(accepted.message_id, duplicate=True))


async def _existing(conn: Conn, rows: list[_Row]) -> dict[tuple[str, str], int]:
    """Ids of texts stored before (redeliveries); one indexed lookup."""
    found = await conn.fetch(
        "SELECT m.provider, m.provider_message_id, m.id FROM messages m"
        " JOIN unnest($1::text[], $2::text[]) AS k(provider, pmid)"
        " ON m.provider = k.provider AND m.provider_message_id = k.pmid",
        [row.text.provider for row in rows],
        [row.text.provider_message_id for row in rows],
    )
    return {(r["provider"], r["provider_message_id"]): r["id"] for r in found}


def _columns(batch: list[_Row]) -> list[Any]:
    """The statement's arguments: one array per column, plus (text, user)
    pairs for live events and (text, lead) pairs for the timeline."""
    live = [(i, user) for i, row in enumerate(batch) for user in row.recipients]
    leads = [(i, lead) for i, row in enumerate(batch) for lead in row.leads]
    return [
        list(range(len(batch))),
        [row.account_id for row in batch],
        [row.number_id for row in batch],
        [row.text.provider for row in batch],
        [row.text.provider_message_id for row in batch],
        [row.text.from_e164 for row in batch],
        [row.text.to_e164 for row in batch],
        [row.text.body for row in batch],
        [json.dumps(row.text.media) for row in batch],
        [row.segments for row in batch],
        [row.handler for row in batch],
        [row.status for row in batch],
        [row.text.received_at for row in batch],
        [row.reason for row in batch],
        [f"text:{row.text.provider}:{row.text.provider_message_id}" for row in batch],
        [billing_period(row.text.received_at) for row in batch],
        [i for i, _ in live],
        [user for _, user in live],
        [i for i, _ in leads],
        [lead for _, lead in leads],
    ]


# texts.accept's statement for many texts at once. Usage over quota counts the
# texts ahead in the same batch (the running sum), as one by one would.
_BATCH = """
WITH input AS (
    SELECT * FROM unnest($1::int[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[],
                         $7::text[], $8::text[], $9::text[], $10::int[], $11::bigint[], $12::text[],
                         $13::timestamptz[], $14::text[], $15::text[], $16::date[])
        AS t(ord, account_id, number_id, provider, pmid, from_e164, to_e164, body, media, segments, handler,
             status, received_at, reason, event_key, period)
), msg AS (
    INSERT INTO messages (account_id, number_id, direction, provider, provider_message_id, from_e164, to_e164,
                          body, media, segments, user_id, status, created_at)
    SELECT account_id, number_id, 'inbound', provider, pmid, from_e164, to_e164, body, media::jsonb, segments,
           handler, status, received_at
      FROM input ORDER BY provider, pmid
    ON CONFLICT (provider, provider_message_id) DO NOTHING
    RETURNING id, provider, provider_message_id, from_e164, to_e164, body, media, number_id, created_at
), claimed AS (
    SELECT m.*, i.ord, i.account_id, i.handler, i.segments, i.reason, i.event_key, i.period, i.received_at
      FROM msg m JOIN input i ON i.provider = m.provider AND i.pmid = m.provider_message_id
), live AS (
    INSERT INTO user_events (account_id, user_id, kind, payload)
    SELECT c.account_id, r.user_id, 'text',
           jsonb_build_object('message_id', c.id, 'from', c.from_e164, 'to', c.to_e164, 'body', c.body,
                              'media', c.media, 'number_id', c.number_id, 'created_at', c.created_at)
      FROM claimed c JOIN unnest($17::int[], $18::bigint[]) AS r(ord, user_id) ON r.ord = c.ord
), timeline AS (
    INSERT INTO timeline_events (account_id, lead_id, number_id, channel, direction, agent_id, reason,
                                 message_id, occurred_at, idempotency_key)
    SELECT c.account_id, l.lead, c.number_id, 'text', 'inbound', c.handler, c.reason, c.id, c.received_at,
           c.event_key || ':lead:' || l.lead
      FROM claimed c JOIN unnest($19::int[], $20::bigint[]) AS l(ord, lead) ON l.ord = c.ord
    ON CONFLICT (idempotency_key) DO NOTHING
), allowance AS (
    SELECT c.*, u.included_segments AS included,
           CASE WHEN u.included_segments IS NULL THEN 0
                ELSE COALESCE((SELECT sum(quantity) FROM usage_ledger l
                                WHERE l.user_id = u.id AND l.period = c.period
                                  AND l.kind = 'text_segments'), 0)
           END + sum(c.segments) OVER (PARTITION BY c.handler, c.period ORDER BY c.ord) AS used_after
      FROM claimed c JOIN users u ON u.id = c.handler AND u.account_id = c.account_id
), usage AS (
    INSERT INTO usage_ledger (account_id, user_id, period, kind, quantity, over_quota, number_id, message_id,
                              idempotency_key, created_at)
    SELECT account_id, handler, period, 'text_segments', segments,
           included IS NOT NULL AND used_after > included, number_id, id,
           event_key || ':usage:' || handler || ':text_segments', received_at
      FROM allowance
    ON CONFLICT (idempotency_key) DO NOTHING
)
SELECT ord, id FROM claimed
"""
