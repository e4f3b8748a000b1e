"""The clock and timers the SIP core runs on, behind one small interface, so
the core is driven by the event loop in production and by a fake clock in
tests (a 32-second Timer H then takes microseconds)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Handle(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    def time(self) -> float:
        """Monotonic seconds."""

    def call_at(self, when: float, callback: Callable[..., None], *args: Any) -> Handle:
        """Run ``callback(*args)`` at ``when`` (on :meth:`time`'s scale)."""

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a coroutine (a database round trip) beside the core."""


class LoopScheduler:
    """The asyncio (uvloop) implementation: ``loop.time``/``loop.call_at``, and
    tasks tracked so shutdown can cancel them and failures are counted."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_error: Callable[[BaseException], None]) -> None:
        self.loop = loop
        self.time = loop.time
        self.call_at = loop.call_at
        self._on_error = on_error
        self.tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            assert exc is not None
            self._on_error(exc)

    async def cancel_all(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
