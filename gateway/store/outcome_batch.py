"""What an outbound send left behind, group-committed like inbound texts
(issue 13, item 5): the message's new status, and on success its R1-R3
timeline records and R9 usage, for every send that finished while the last
batch was written, in one statement and one commit.

Only the bookkeeping after the send is batched. The claim before it stays
one autocommitted INSERT per request: it must be durable before the provider
is called, and it answers Idempotency-Key replays. An idle gateway writes an
outcome at once (batching is natural, not timed), so a lone
``POST /v1/messages`` is not held back; under a burst of sends, each pays a
share of one statement and one commit instead of five round trips and a
commit of its own.

A send already went out when its outcome is written, so it is never refused
for load (no ``max_pending`` bound worth the name): it waits its turn. A value
Postgres refuses fails the statement; the batch is then written send by send
(:func:`gateway.store.outbound.record_outcome`), so only that send gets its
error. Each batch names distinct messages, so two writers never lock the same
rows.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from gateway.domain.billing import billing_period
from gateway.domain.index import Index
from gateway.domain.routing import Reason, lead_rules
from gateway.store import Conn, outbound
from gateway.store.group_commit import DATA_REFUSED, BatchObserver, GroupCommit, answer, fail
from gateway.store.outbound import Outcome

__all__ = ["SendOutcomes"]

# A send has gone out; its record waits however deep the queue is.
_UNBOUNDED = 1 << 40


@dataclass(slots=True)
class _Pending:
    outcome: Outcome
    leads: tuple[int, ...]
    reason: Reason
    waiters: list[asyncio.Future[Any]] = field(default_factory=list)


class SendOutcomes(GroupCommit[int, _Pending]):
    """Records send outcomes in batches through ``pool`` (see the module doc)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_batch: int = 256,
        acquire_timeout_s: float = 1.5,
        on_batch: BatchObserver | None = None,
    ) -> None:
        super().__init__(
            pool,
            max_batch=max_batch,
            max_pending=_UNBOUNDED,
            writers=2,
            acquire_timeout_s=acquire_timeout_s,
            on_batch=on_batch,
        )

    async def record(self, index: Index, outcome: Outcome) -> Any:
        """As :func:`gateway.store.outbound.record_outcome` (the same row
        back), for a share of one statement and one commit; the timeline's
        leads are looked up in ``index``. Raises a DATA_REFUSED error for this
        send alone, or the database's error when it is away."""
        leads, _, reason = lead_rules(index.leads_for(outcome.number.account_id, outcome.to_e164))
        _, waiter = self._join(outcome.message_id, lambda: _Pending(outcome, leads, reason))
        return await waiter

    async def _write(self, conn: Conn, batch: list[_Pending]) -> None:
        try:
            rows = await conn.fetch(_BATCH, *_columns(batch))
        except DATA_REFUSED:
            await self._one_by_one(conn, batch)
            return
        by_ord = {row["ord"]: row for row in rows}
        for i, pending in enumerate(batch):
            row = by_ord.get(i)
            if row is None:  # the claim's row is gone: only an account's deletion removes it
                fail(pending, LookupError(f"message {pending.outcome.message_id} is not stored"))
            else:
                answer(pending, _without_ord(row), _without_ord(row))

    async def _one_by_one(self, conn: Conn, batch: list[_Pending]) -> None:
        """A refused value failed the batch: record each send alone, so only
        that one fails. Rare, and costs a transaction per send."""
        for pending in batch:
            try:
                row = await outbound.record_outcome(conn, pending.outcome, pending.leads, pending.reason)
            except DATA_REFUSED as exc:
                fail(pending, exc)
            else:
                answer(pending, row, row)


def _without_ord(row: asyncpg.Record) -> dict[str, Any]:
    return {name: value for name, value in row.items() if name != "ord"}


def _columns(batch: list[_Pending]) -> list[Any]:
    """The batch as the statement's arrays; sends with leads repeat their
    ord once per lead (R2 gives every duplicate a record)."""
    sends = [pending.outcome for pending in batch]
    leads = [(i, lead) for i, pending in enumerate(batch) if pending.outcome.sent for lead in pending.leads]
    return [
        list(range(len(batch))),
        [send.message_id for send in sends],
        [send.sent[0] if send.sent else None for send in sends],
        [send.sent[1] if send.sent else "failed" for send in sends],
        [None if send.sent else send.error_code[:200] for send in sends],
        [send.number.account_id for send in sends],
        [send.number.id for send in sends],
        [send.user_id for send in sends],
        [send.segments for send in sends],
        [send.at for send in sends],
        [billing_period(send.at) for send in sends],
        [pending.reason for pending in batch],
        [i for i, _ in leads],
        [lead for _, lead in leads],
    ]


# As outbound.record_outcome, for many sends: the status (and on success the
# provider's id), then for the sends that went out the R1-R3 timeline on the
# destination's leads and the R9 usage of the sender, idempotent per message.
_BATCH = f"""
WITH input AS (
    SELECT * FROM unnest($1::int[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[],
                         $7::bigint[], $8::bigint[], $9::int[], $10::timestamptz[], $11::date[], $12::text[])
        AS t(ord, mid, pmid, new_status, error, account, number, sender, quantity, at, period, why)
), updated AS (
    UPDATE messages m
       SET provider_message_id = coalesce(i.pmid, m.provider_message_id),
           status = i.new_status,
           error_code = CASE WHEN i.pmid IS NULL THEN i.error ELSE m.error_code END,
           updated_at = now()
      FROM input i
     WHERE m.id = i.mid
    RETURNING i.ord, {", ".join("m." + c.strip() for c in outbound.MESSAGE_COLUMNS.split(","))}
), timeline AS (
    INSERT INTO timeline_events (account_id, lead_id, number_id, channel, direction, agent_id, reason,
                                 message_id, occurred_at, idempotency_key)
    SELECT i.account, l.lead, i.number, 'text', 'outbound', i.sender, i.why, i.mid, i.at,
           'text:out:' || i.mid || ':lead:' || l.lead
      FROM input i JOIN unnest($13::int[], $14::bigint[]) AS l(ord, lead) ON l.ord = i.ord
    ON CONFLICT (idempotency_key) DO NOTHING
), usage AS (
    INSERT INTO usage_ledger (account_id, user_id, period, kind, quantity, number_id, message_id,
                              idempotency_key, created_at)
    SELECT account, sender, period, 'text_segments', quantity, number, mid,
           'text:out:' || mid || ':usage:' || sender || ':text_segments', at
      FROM input WHERE pmid IS NOT NULL
    ON CONFLICT (idempotency_key) DO NOTHING
)
SELECT * FROM updated
"""
