"""Keeps the live routing index fresh (DESIGN §2).

One dedicated connection LISTENs on ``gateway_index``. Its life:

1. connect, ``LISTEN``, then load a full snapshot: any change committed after
   ``LISTEN`` is either in the snapshot or queued as an event, and events are
   idempotent state-setters, so replaying them over the snapshot is exact;
2. apply events in commit order as they arrive;
3. every ``reload_interval_s``, load a new snapshot and swap it in (heals
   anything missed), and ping every few seconds to notice a dead server;
4. on losing the connection: mark not ready, reconnect with backoff, goto 1.

Readers only ever see ``keeper.index``: a swap replaces the reference in one
step, so a lookup never meets a half-loaded index.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import asyncpg

from gateway.domain.index import Index, LeadRef
from gateway.metrics import Metrics
from gateway.store.index_queries import fetch_number, fetch_user, load_snapshot

log = logging.getLogger(__name__)

CHANNEL = "gateway_index"
RELOAD_EVENT = '{"t":"reload"}'  # sent by bulk writers instead of one event per row
PING_INTERVAL_S = 5.0
_CONNECTION_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


class IndexKeeper:
    """Owner of the live :class:`Index`. Not thread-safe; lives on one loop."""

    def __init__(
        self,
        dsn: str,
        metrics: Metrics,
        reload_interval_s: float = 600.0,
        max_backoff_s: float = 5.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.index = Index()
        self.generation = 0
        self.loaded_at: float | None = None  # time.monotonic() of the last full load
        self.last_error: str | None = "not loaded yet"
        self.applied = 0
        self._dsn = dsn
        self._metrics = metrics
        self._reload_interval_s = reload_interval_s
        self._max_backoff_s = max_backoff_s
        self._connect_timeout_s = connect_timeout_s
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._events: asyncio.Queue[str] = asyncio.Queue()
        self._lock = asyncio.Lock()  # one user of the connection at a time
        self._changed = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        metrics.watch_index_age(self.age_s)

    # -- public --------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Loaded at least once and following changes right now."""
        return self.loaded_at is not None and self._conn is not None and not self._lost.is_set()

    def age_s(self) -> float:
        """Seconds since the current snapshot was loaded (inf before the first)."""
        return float("inf") if self.loaded_at is None else time.monotonic() - self.loaded_at

    async def start(self) -> None:
        """Connect and load the first snapshot (raising if the database cannot be
        reached), then follow changes in the background."""
        await self._connect_and_load()
        self._tasks = [
            asyncio.create_task(self._supervise(), name="index-supervisor"),
            asyncio.create_task(self._apply_events(), name="index-applier"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._close()

    async def reload(self) -> None:
        """Load a fresh snapshot now and swap it in. Costs a full load."""
        async with self._lock:
            conn = self._conn
            if conn is None:
                raise ConnectionError("index listener is not connected")
            await self._load(conn)

    async def wait_until(self, predicate: Callable[[Index], bool], limit_s: float = 5.0) -> None:
        """Wait until ``predicate(index)`` holds after an applied change or reload."""
        async with asyncio.timeout(limit_s), self._changed:
            await self._changed.wait_for(lambda: predicate(self.index))

    # -- connection lifecycle ------------------------------------------------

    async def _connect_and_load(self) -> None:
        conn = await asyncpg.connect(self._dsn, timeout=self._connect_timeout_s)
        try:
            conn.add_termination_listener(self._on_terminated)
            await conn.add_listener(CHANNEL, self._on_notify)
            self._lost.clear()
            async with self._lock:
                self._conn = conn
                await self._load(conn)
        except BaseException:
            self._conn = None
            await conn.close(timeout=1)
            raise
        self.last_error = None

    async def _load(self, conn: asyncpg.Connection) -> None:
        started = time.perf_counter()
        index = await load_snapshot(conn)
        self.index = index
        self.generation += 1
        self.loaded_at = time.monotonic()
        self._metrics.index_reload_seconds.observe(time.perf_counter() - started)
        self._metrics.index_generation.set(self.generation)
        self._publish_size()
        log.info(
            "index loaded: generation %d, %s in %.2fs",
            self.generation,
            index.size(),
            time.perf_counter() - started,
        )
        await self._notify_changed()

    async def _supervise(self) -> None:
        backoff = 0.1
        while True:
            try:
                if self._conn is None:
                    await self._connect_and_load()
                    self._metrics.index_listener_reconnects.inc()
                    log.info("index listener reconnected")
                    backoff = 0.1
                await self._watch()
            except asyncio.CancelledError:
                raise
            except _CONNECTION_ERRORS as exc:
                self.last_error = f"index listener: {type(exc).__name__}: {exc}".strip()
                log.warning("%s; retrying in %.1fs", self.last_error, backoff)
                await self._close()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)

    async def _watch(self) -> None:
        """Return only by raising: on a lost connection or a failed ping/reload."""
        while True:
            due = (self.loaded_at or 0.0) + self._reload_interval_s - time.monotonic()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, min(PING_INTERVAL_S, due))):
                    await self._lost.wait()
            if self._lost.is_set():
                raise ConnectionError("connection to Postgres lost")
            async with self._lock:
                conn = self._conn
                if conn is None:
                    raise ConnectionError("not connected")
                if time.monotonic() >= (self.loaded_at or 0.0) + self._reload_interval_s:
                    await self._load(conn)
                else:
                    await conn.fetchval("SELECT 1", timeout=self._connect_timeout_s)

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(*_CONNECTION_ERRORS):
                await conn.close(timeout=1)

    def _on_terminated(self, conn: object) -> None:
        if conn is self._conn:
            self._lost.set()

    # -- events --------------------------------------------------------------

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: object) -> None:
        self._events.put_nowait(str(payload))

    async def _apply_events(self) -> None:
        while True:
            first = await self._events.get()
            batch = [first]
            while not self._events.empty():
                batch.append(self._events.get_nowait())
            # A reload supersedes everything queued before it: start from the last one.
            last_reload = max((i for i, p in enumerate(batch) if p == RELOAD_EVENT), default=None)
            async with self._lock:
                if last_reload is not None:
                    conn = self._conn
                    try:
                        if conn is None:
                            raise ConnectionError("index listener is not connected")
                        await self._load(conn)
                    except _CONNECTION_ERRORS as exc:
                        log.warning("requested index reload failed (%s); reconnect will reload", exc)
                        self._lost.set()
                    batch = batch[last_reload + 1 :]
                for payload in batch:
                    try:
                        await self._apply(json.loads(payload))
                    except _CONNECTION_ERRORS as exc:
                        # A number/user re-read failed: the reconnect's reload will heal it.
                        log.warning("index event not applied (%s); reload pending", exc)
                        self._lost.set()
                    except (ValueError, KeyError, TypeError):
                        log.exception("malformed index event %r", payload[:200])
                self.applied += len(batch) + (last_reload is not None)
            self._publish_size()
            await self._notify_changed()

    async def _apply(self, event: dict[str, Any]) -> None:
        kind = event["t"]
        index = self.index
        if kind == "lp+":
            index.put_lead_phone(event["a"], event["p"], LeadRef(event["l"], event["g"], event["c"]))
            table = "lead_phones"
        elif kind == "lp-":
            index.drop_lead_phone(event["a"], event["p"], event["l"])
            table = "lead_phones"
        elif kind == "lead":
            index.put_lead(event["a"], LeadRef(event["l"], event["g"], event["c"]), event["p"])
            table = "leads"
        elif kind == "number":
            number = await fetch_number(self._require_conn(), event["id"])
            if number is None:
                index.drop_number(event["id"])
            else:
                index.put_number(number)
            table = "numbers"
        elif kind == "user":
            user = await fetch_user(self._require_conn(), event["id"])
            if user is None:
                index.drop_user(event["id"])
            else:
                index.put_user(user)
            table = "users"
        else:
            raise ValueError(f"unknown event type {kind!r}")
        self._metrics.index_notifications.labels(table=table).inc()

    def _require_conn(self) -> asyncpg.Connection:
        if self._conn is None:
            raise ConnectionError("index listener is not connected")
        return self._conn

    async def _notify_changed(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _publish_size(self) -> None:
        size = self.index.size()
        gauge = self._metrics.index_size
        gauge.labels(kind="numbers").set(size.numbers)
        gauge.labels(kind="users").set(size.users)
        gauge.labels(kind="lead_phones").set(size.lead_phones)
