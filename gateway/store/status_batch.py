"""Delivery status callbacks, group-committed like inbound texts (issue 13,
item 4): Twilio status and Telnyx ``message.sent``/``message.finalized``
callbacks that wait for storage are written as one UPDATE per batch.

A status only moves forward (events arrive out of order, DESIGN §5). Two
callbacks for the same message in one batch fold into the furthest status
(and the last error code sent), as one by one would have left it. One writer:
batches never race each other for the same rows, so they cannot deadlock.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from gateway.domain.outbound import STATUS_RANK
from gateway.store import Conn
from gateway.store.group_commit import GroupCommit, answer

_RANK_NAMES = list(STATUS_RANK)
_RANKS = [STATUS_RANK[name] for name in _RANK_NAMES]


@dataclass(slots=True)
class _Update:
    provider: str
    message_id: str
    status: str
    error: str | None
    waiters: list[asyncio.Future[Any]] = field(default_factory=list)


class StatusBatcher(GroupCommit[tuple[str, str], _Update]):
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_batch: int = 256,
        max_pending: int = 4096,
        acquire_timeout_s: float = 1.5,
    ) -> None:
        super().__init__(
            pool,
            max_batch=max_batch,
            max_pending=max_pending,
            writers=1,
            acquire_timeout_s=acquire_timeout_s,
            on_batch=None,
        )

    async def update(self, provider: str, message_id: str, status: str, error: str | None) -> bool:
        """Move the outbound message forward to ``status``; True if it changed.
        Costs a share of one UPDATE and one commit. Raises Overloaded, or the
        database's error when it is away."""
        row, waiter = self._join((provider, message_id), lambda: _Update(provider, message_id, status, error))
        if STATUS_RANK[status] > STATUS_RANK[row.status]:
            row.status = status
        if error is not None:
            row.error = error
        changed: bool = await waiter
        return changed

    async def _write(self, conn: Conn, batch: list[_Update]) -> None:
        changed = {
            (r["provider"], r["provider_message_id"])
            for r in await conn.fetch(
                _UPDATE,
                [u.provider for u in batch],
                [u.message_id for u in batch],
                [u.status for u in batch],
                [u.error for u in batch],
                _RANK_NAMES,
                _RANKS,
            )
        }
        for update in batch:
            moved = (update.provider, update.message_id) in changed
            answer(update, moved, moved)


_UPDATE = """
WITH rank AS (SELECT * FROM unnest($5::text[], $6::int[]) AS r(status, rank))
UPDATE messages m
   SET status = u.status, error_code = COALESCE(u.error, m.error_code), updated_at = now()
  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS u(provider, pmid, status, error)
 WHERE m.provider = u.provider AND m.provider_message_id = u.pmid AND m.direction = 'outbound'
   AND (SELECT rank FROM rank WHERE rank.status = m.status)
       < (SELECT rank FROM rank WHERE rank.status = u.status)
RETURNING m.provider, m.provider_message_id
"""
