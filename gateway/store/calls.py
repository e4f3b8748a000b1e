"""Call records, written at call end with everything the call causes (issue 6):
the record, timeline records (R1-R3), usage minutes to whoever answered (R9)
and, for an unanswered unknown caller, the R8 notifications.

:class:`CallRecorder` takes finished calls from the SIP side without ever
blocking it, and writes them in batches (one transaction per batch, one
round trip per statement). A replay writes nothing twice: the record is
claimed by ``UNIQUE (sip_call_id, direction)`` and every other row carries an
idempotency key derived from it. While the database is unreachable records
wait in memory and are retried with backoff; the durable outbox that survives
a crash meanwhile is issue 7's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

from gateway.domain.billing import billable_minutes
from gateway.domain.index import Number
from gateway.domain.routing import Decision
from gateway.store import Conn
from gateway.store.crm import InboundEvent, raise_unknown_caller_notifications, record_timeline, record_usage

log = logging.getLogger(__name__)
BATCH = 100
NOTIFY_ON = frozenset(("no_answer", "canceled"))  # R8: the unknown caller rang and nobody answered


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


async def write_call(conn: Conn, rec: CallRecord) -> int | None:
    """Store one finished call and its effects in one transaction. Returns the
    new record's id, or None when it was already stored. 2-5 round trips."""
    async with conn.transaction():
        return await _write_call(conn, rec)


async def _write_call(conn: Conn, rec: CallRecord) -> int | None:
    """:func:`write_call` inside the caller's transaction."""
    record_id: int | None = await conn.fetchval(
        "INSERT INTO call_records (account_id, number_id, sip_call_id, direction, caller_e164,"
        " callee_e164, targets_tried, answered_by, invited_at, answered_at, ended_at, disposition)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
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
        if rec.direction == "inbound" and rec.disposition in NOTIFY_ON and rec.caller.startswith("+"):
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


class CallRecorder:
    """Writes finished calls in the background; :meth:`add` never blocks."""

    def __init__(self, pool: asyncpg.Pool, *, max_backlog: int = 100_000) -> None:
        self._pool = pool
        self._backlog: deque[CallRecord] = deque(maxlen=max_backlog)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.written = 0
        self.failed = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="call-recorder")

    def add(self, rec: CallRecord) -> None:
        if len(self._backlog) == self._backlog.maxlen:
            log.error("call record backlog full; dropping the oldest record")
        self._backlog.append(rec)
        self._idle.clear()
        self._wake.set()

    def backlog(self) -> int:
        return len(self._backlog)

    async def drain(self, limit_s: float) -> bool:
        """Wait until every record so far is written (or ``limit_s`` passes)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), limit_s)
        return not self._backlog

    async def stop(self, grace_s: float) -> None:
        await self.drain(grace_s)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._backlog:
            log.error("%d call records not written at shutdown", len(self._backlog))

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            if not self._backlog:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
            batch = [self._backlog[i] for i in range(min(BATCH, len(self._backlog)))]
            try:
                await self._write(batch)
            except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("call records wait for the database (%s); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            for _ in batch:
                self._backlog.popleft()

    async def _write(self, batch: list[CallRecord]) -> None:
        async with self._pool.acquire() as conn:
            try:
                async with conn.transaction():  # one commit for the batch, no savepoints
                    for rec in batch:
                        await _write_call(conn, rec)
                self.written += len(batch)
                return
            except asyncpg.PostgresError as exc:
                if isinstance(exc, asyncpg.PostgresConnectionError):
                    raise
            for rec in batch:  # one bad record must not hold up the others
                try:
                    await write_call(conn, rec)
                    self.written += 1
                except asyncpg.PostgresError as exc:
                    if isinstance(exc, asyncpg.PostgresConnectionError):
                        raise
                    self.failed += 1
                    log.error("call record %s refused by the database: %s", rec.sip_call_id, exc)
