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
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from gateway.domain.index import Index
from gateway.domain.routing import route
from gateway.store import Conn, texts
from gateway.store.group_commit import DATA_REFUSED, BatchObserver, GroupCommit, Overloaded, answer, fail
from gateway.store.texts import Accepted, InboundText, TextRow, UnknownNumber

__all__ = ["DATA_REFUSED", "Overloaded", "TextBatcher"]


@dataclass(slots=True)
class _Pending:
    row: TextRow
    waiters: list[asyncio.Future[Any]] = field(default_factory=list)


class TextBatcher(GroupCommit[tuple[str, str], _Pending]):
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
            extra_writer_at=max_batch // 4,
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

        def new_row() -> _Pending:
            return _Pending(texts.row_for(number, decision, text))

        _, waiter = self._join(_key(text), new_row)
        accepted: Accepted = await waiter
        return accepted

    async def _write(self, conn: Conn, batch: list[_Pending]) -> None:
        try:
            ids = await texts.write_rows(conn, [pending.row for pending in batch])
        except DATA_REFUSED:
            await self._one_by_one(conn, batch)
            return
        missing = [pending.row.text for i, pending in enumerate(batch) if i not in ids]
        existing = await texts.existing_ids(conn, missing) if missing else {}
        for i, pending in enumerate(batch):
            row = pending.row
            if i in ids:
                _stored(
                    pending, Accepted(ids[i], duplicate=False, recipients=row.recipients, reason=row.reason)
                )
            else:
                _stored(
                    pending,
                    Accepted(existing[(row.text.provider, row.text.provider_message_id)], duplicate=True),
                )

    async def _one_by_one(self, conn: Conn, batch: list[_Pending]) -> None:
        """A refused value failed the batch: write each text alone, so only
        the bad one fails. Rare, and costs a statement per text."""
        for pending in batch:
            row = pending.row
            try:
                ids = await texts.write_rows(conn, [row])
                if ids:
                    accepted = Accepted(ids[0], duplicate=False, recipients=row.recipients, reason=row.reason)
                else:
                    found = await texts.existing_ids(conn, [row.text])
                    accepted = Accepted(
                        found[(row.text.provider, row.text.provider_message_id)], duplicate=True
                    )
            except DATA_REFUSED as exc:
                fail(pending, exc)
            else:
                _stored(pending, accepted)


def _key(text: InboundText) -> tuple[str, str]:
    return text.provider, text.provider_message_id


def _first(row: TextRow, message_id: int) -> Accepted:
    return Accepted(message_id, duplicate=False, recipients=row.recipients, reason=row.reason)


def _stored(pending: _Pending, accepted: Accepted) -> None:
    """Redeliveries that joined the same batch are duplicates of the first."""
    answer(pending, accepted, Accepted(accepted.message_id, duplicate=True))
