"""Wake-ups for users' real-time streams (``GET /v1/events``).

One connection LISTENs on ``gateway_events`` (the ``user_events`` trigger sends
the user id); each open stream registers an :class:`asyncio.Event` and re-reads
``user_events`` past its last id when woken. A lost notification costs only
latency: streams also re-read on their heartbeat, so nothing is ever missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from typing import Any

import asyncpg

from gateway.store import Conn

log = logging.getLogger(__name__)

CHANNEL = "gateway_events"


class EventHub:
    """Routes NOTIFY wake-ups to the streams of the user they name."""

    def __init__(self, dsn: str, connect_timeout_s: float = 5.0) -> None:
        self._dsn = dsn
        self._timeout = connect_timeout_s
        self._waiters: dict[int, set[asyncio.Event]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self.closing = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="event-hub")

    async def stop(self) -> None:
        self.closing.set()
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def subscribe(self, user_id: int) -> asyncio.Event:
        waiter = asyncio.Event()
        self._waiters[user_id].add(waiter)
        return waiter

    def unsubscribe(self, user_id: int, waiter: asyncio.Event) -> None:
        self._waiters[user_id].discard(waiter)
        if not self._waiters[user_id]:
            del self._waiters[user_id]

    def _wake(self, connection: Any, pid: int, channel: str, payload: object) -> None:
        user_id = int(str(payload)) if str(payload).isdigit() else None
        for waiter in self._waiters.get(user_id or -1, ()):
            waiter.set()

    async def _listen(self) -> None:
        backoff = 0.1
        while True:
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(self._dsn, timeout=self._timeout)
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                log.warning("event hub cannot connect (%s); retrying", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            try:
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._wake)
                await lost.wait()
            finally:
                with contextlib.suppress(Exception):
                    await conn.close(timeout=1)


async def events_after(conn: Conn, user_id: int, after: int, limit: int = 500) -> list[Any]:
    """The user's events with id > ``after``, oldest first. One indexed read."""
    return list(
        await conn.fetch(
            "SELECT id, kind, payload::text AS payload FROM user_events WHERE user_id = $1 AND id > $2"
            " ORDER BY id LIMIT $3",
            user_id,
            after,
            limit,
        )
    )
