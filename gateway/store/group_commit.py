"""Group commit: many waiting requests, one statement and one commit (issue 13).

Requests join a pending set keyed by what they write (a redelivery joins the
request already waiting for the same key); writers take up to ``max_batch``
of them at a time and write each batch on a pooled connection. Batching is
natural, not timed: while one batch is written the next one fills, so an idle
gateway writes its first request at once and a busy one as many as arrived
during the last commit.

Several writers may run at once (``writers``), so one batch's commit overlaps
the next one's statement. The first starts with the first request; each
further one only once more than ``extra_writer_at`` wait: on a shallow queue
a second writer only splits the batch (paying the statement's fixed cost
twice) and competes with the HTTP side for the CPU. A writer keeps its
connection for a whole busy period (no acquire and reset round trip per
batch) and lets it go when nothing waits.
A database that is away fails every request of the batch with the
connection's error, for the caller to queue or answer 503. When more than
``max_pending`` wait, a newcomer is refused at once (:class:`Overloaded`)
instead of waiting past the provider's budget.

Subclasses say how a batch is written (:meth:`GroupCommit._write`) and answer
each waiter with :func:`answer` or :func:`fail`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable
from typing import Any, Generic, Protocol, TypeVar

import asyncpg

from gateway.store import Conn

BatchObserver = Callable[[int, float], None]  # (requests in the batch, seconds to commit)

# Postgres refusing a value (class 22/23): that request's fault, not its batch-mates'.
DATA_REFUSED = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)


class Overloaded(Exception):
    """More requests are waiting than can be written within the provider's budget."""


class Waiting(Protocol):
    """A pending write: whatever it holds, plus whoever waits for it."""

    @property
    def waiters(self) -> list[asyncio.Future[Any]]: ...


Row = TypeVar("Row", bound=Waiting)
Key = TypeVar("Key", bound=Hashable)


class GroupCommit(ABC, Generic[Key, Row]):
    """The pending set and its writers (see the module doc)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_batch: int,
        max_pending: int,
        writers: int,
        acquire_timeout_s: float,
        on_batch: BatchObserver | None,
        extra_writer_at: int = 0,
    ) -> None:
        self._pool = pool
        self._extra_writer_at = extra_writer_at
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._max_writers = writers
        self._acquire_timeout_s = acquire_timeout_s
        self._on_batch = on_batch
        self._pending: dict[Key, Row] = {}
        self._writers: set[asyncio.Task[None]] = set()

    @property
    def depth(self) -> int:
        """Requests waiting for a batch (not counting those being written)."""
        return len(self._pending)

    @property
    def writing(self) -> int:
        """Writers running now (at most ``writers``)."""
        return len(self._writers)

    def _join(self, key: Key, new_row: Callable[[], Row]) -> tuple[Row, asyncio.Future[Any]]:
        """The pending row for ``key`` (made by ``new_row`` if none waits)
        and a future for its answer; a writer is started if none runs, or
        another (up to ``writers``) if more than ``extra_writer_at`` wait.
        Raises Overloaded when a new row would make too many wait."""
        row = self._pending.get(key)
        if row is None:
            if len(self._pending) >= self._max_pending:
                raise Overloaded(f"{len(self._pending)} already waiting")
            row = self._pending[key] = new_row()
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        row.waiters.append(waiter)
        if not self._writers or (
            len(self._writers) < self._max_writers and len(self._pending) > self._extra_writer_at
        ):
            self._writers.add(asyncio.get_running_loop().create_task(self._write_all()))
        return row, waiter

    @abstractmethod
    async def _write(self, conn: Conn, batch: list[Row]) -> None:
        """Write ``batch`` and answer its waiters; raise when the database is away."""

    async def _write_all(self) -> None:
        try:
            await self._write_while_waiting()
        finally:
            # Here, not in a done callback (which runs a loop turn later and
            # would let a request arrive, see every writer busy, and wait alone).
            task = asyncio.current_task()
            if task is not None:
                self._writers.discard(task)

    async def _write_while_waiting(self) -> None:
        batch = self._take()
        while batch:
            try:
                async with self._pool.acquire(timeout=self._acquire_timeout_s) as conn:
                    while batch:
                        started = time.perf_counter()
                        await self._write(conn, batch)
                        if self._on_batch is not None:
                            self._on_batch(len(batch), time.perf_counter() - started)
                        batch = self._take()
            except Exception as exc:  # the database is away (or worse): nobody was stored
                for row in batch:
                    fail(row, exc)
                batch = self._take()
            except BaseException:  # cancelled (shutdown): nobody may wait for ever
                for row in batch:
                    fail(row, ConnectionError("the gateway is stopping"))
                raise
            # Requests that came while the connection went back to the pool.
            batch = batch or self._take()

    def _take(self) -> list[Row]:
        keys = list(itertools.islice(self._pending, self._max_batch))
        return [self._pending.pop(key) for key in keys]


def answer(row: Waiting, first: object, later: object) -> None:
    """``first`` to the first waiter, ``later`` to redeliveries that joined it."""
    for n, waiter in enumerate(row.waiters):
        if not waiter.done():
            waiter.set_result(first if n == 0 else later)


def fail(row: Waiting, exc: BaseException) -> None:
    for waiter in row.waiters:
        if not waiter.done():
            waiter.set_exception(exc)
