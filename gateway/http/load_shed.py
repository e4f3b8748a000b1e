"""Shedding webhooks when the event loop itself is the bottleneck (issue 13).

``texts.max_pending`` bounds the texts waiting for Postgres; it cannot see
requests that wait for the CPU before they reach it. When more arrive than
one process can verify and parse, every request is late, and a provider that
gives up after 2 s redelivers into the same backlog. The loop's lag (how late
a short timer fires) measures that backlog: while it is above
``texts.shed_at_loop_lag_s``, webhooks are answered 503 with Retry-After
before their body is read or their signature checked, which costs a fraction
of storing them, so the texts that are taken are still answered in time.
"""

from __future__ import annotations

import asyncio
import contextlib


class LoopLag:
    """How late a timer of ``interval_s`` fires on this loop, refreshed each
    interval, and whether that is past ``shed_at_s``. Reading it is free; the
    ticker costs one timer per interval."""

    def __init__(self, shed_at_s: float, interval_s: float = 0.02) -> None:
        self.lag_s = 0.0
        self.shed_at_s = shed_at_s
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    @property
    def overloaded(self) -> bool:
        return self.lag_s > self.shed_at_s

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._tick(), name="loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self._interval_s
            await asyncio.sleep(self._interval_s)
            self.lag_s = max(0.0, loop.time() - due)
