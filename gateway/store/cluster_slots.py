"""R7 across every gateway on one database (issue 14): the ``postgres`` slot backend.

Admission is one statement (``take_call_slots``, migration 0020) that, under
a per-number advisory lock, counts the number's slots in the UNLOGGED
``call_slots`` table and takes one if fewer than the limit are held.
Concurrent INVITEs are group-committed: while one batch is in flight the
next fills, so a burst costs a round trip per batch, not per call. Release
is a DELETE, batched the same way and never waited for.

Each gateway holds a lease (a ``gateway_instances`` row it renews every
``heartbeat_s``, valid for ``lease_s``). The heartbeat also reclaims the
slots of gateways whose lease expired (a ``kill -9``, a partition), and
reconciles this gateway's own rows with the calls it really holds: rows it
no longer holds go, calls it holds that the table lost (a Postgres restart
empties UNLOGGED tables; another gateway reclaimed us while we were cut
off; we admitted while degraded) come back, even above the limit, because
they are real.

Degraded mode: while Postgres cannot be reached, an admission fails or
times out (``admit_timeout_s``), or our lease has lapsed, this gateway
admits from its own count, at most ``ceil(limit / live gateways at the last
contact)`` calls per number (:func:`gateway.domain.call_slots.degraded_share`),
and returns to the cluster counter at the first heartbeat that succeeds.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

import asyncpg

from gateway.domain.call_slots import CallSlots, Slot, degraded_share
from gateway.store import DB_AWAY, Conn
from gateway.store.group_commit import GroupCommit, Overloaded

log = logging.getLogger(__name__)

Mode = Literal["cluster", "degraded"]
Pending = Coroutine[Any, Any, Slot | None]
# Told (mode, admitted) for every admission decided (the admission metrics).
AdmissionObserver = Callable[[Mode, bool], None]


def new_instance_id() -> str:
    """Unique per process start, so a restarted gateway never inherits rows."""
    return f"{socket.gethostname()[:60]}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(slots=True)
class _Take:
    number_id: int
    slot_id: int
    limit: int
    call_id: str
    waiters: list[asyncio.Future[Any]] = field(default_factory=list)


class _Admissions(GroupCommit[int, _Take]):
    def __init__(self, owner: ClusterSlots, pool: asyncpg.Pool, acquire_timeout_s: float) -> None:
        super().__init__(
            pool,
            max_batch=256,
            max_pending=4096,
            writers=2,
            acquire_timeout_s=acquire_timeout_s,
            on_batch=None,
        )
        self._owner = owner

    def join(self, take: _Take) -> asyncio.Future[Any]:
        return self._join(take.slot_id, lambda: take)[1]

    async def _write(self, conn: Conn, batch: list[_Take]) -> None:
        try:
            admitted = await conn.fetchval(
                "SELECT take_call_slots($1, $2::bigint[], $3::bigint[], $4::int[], $5::text[])",
                self._owner.instance_id,
                [t.number_id for t in batch],
                [t.slot_id for t in batch],
                [t.limit for t in batch],
                [t.call_id for t in batch],
            )
        finally:
            self._owner.landed(batch)
        taken = None if admitted is None else set(admitted)
        for take in batch:
            for waiter in take.waiters:
                if not waiter.done():
                    waiter.set_result(None if taken is None else take.slot_id in taken)


class ClusterSlots:
    """The cluster-wide R7 counter (see the module doc). One per gateway."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        instance_id: str,
        sip_address: str,
        lease_s: float,
        heartbeat_s: float,
        admit_timeout_s: float,
        on_admission: AdmissionObserver | None = None,
    ) -> None:
        self._pool = pool
        self.instance_id = instance_id
        self.sip_address = sip_address
        self.lease_s = lease_s
        self.heartbeat_s = heartbeat_s
        self.admit_timeout_s = admit_timeout_s
        self._on_admission = on_admission
        self._mine = CallSlots()  # this gateway's calls, per number
        self._held: dict[int, tuple[int, str]] = {}  # slot id -> (number id, SIP Call-ID)
        self._in_flight: set[int] = set()  # slot ids whose admission statement has not returned
        self._released: list[int] = []
        self._releasing: asyncio.Task[None] | None = None
        # Slot ids grow for the life of the instance id, across restarts too
        # (microseconds since the epoch at start): a reconciliation deletes
        # only ids it had seen allocated, never one admitted while it ran.
        first_id = time.time_ns() // 1000
        self._ids = itertools.count(first_id)
        self._last_id = first_id - 1  # so the first reconciliation drops a previous life's rows
        self._admissions = _Admissions(self, pool, acquire_timeout_s=admit_timeout_s)
        self.mode: Mode = "degraded"
        self.reason = "not registered yet"
        self.live_instances = 1
        self.last_contact = 0.0  # monotonic time of the last heartbeat that succeeded
        self.degraded_admissions = 0
        self._heartbeat: asyncio.Task[None] | None = None

    # -- the CallAdmission interface (gateway.sip.ports) -----------------------------

    def take(
        self, number_id: int, limit: int, call_id: str
    ) -> Slot | Coroutine[Any, Any, Slot | None] | None:
        """Degraded: decided at once from this gateway's share. Otherwise a
        coroutine that costs a share of one batched statement (one round trip under load)."""
        if self.mode != "cluster" or self._lease_lapsed():
            return self._take_degraded(number_id, limit, call_id, self._new_id())
        return self._take_cluster(number_id, limit, call_id)

    def active(self, number_id: int) -> int:
        return self._mine.active(number_id)

    def total(self) -> int:
        return self._mine.total()

    def busiest(self, count: int) -> list[tuple[int, int]]:
        return self._mine.busiest(count)

    # -- admission --------------------------------------------------------------------

    async def _take_cluster(self, number_id: int, limit: int, call_id: str) -> Slot | None:
        slot_id = self._new_id()
        self._in_flight.add(slot_id)
        try:
            waiter = self._admissions.join(_Take(number_id, slot_id, limit, call_id))
        except Overloaded:
            self._in_flight.discard(slot_id)
            return self._take_degraded(number_id, limit, call_id, slot_id)
        try:
            async with asyncio.timeout(self.admit_timeout_s):
                admitted = await waiter
        except DB_AWAY as exc:
            self._degrade(f"cluster counter unreachable: {type(exc).__name__}")
            return self._take_degraded(number_id, limit, call_id, slot_id)
        if admitted is None:
            self._degrade("lease expired: this gateway may have been reclaimed")
            return self._take_degraded(number_id, limit, call_id, slot_id)
        if self._on_admission is not None:
            self._on_admission("cluster", bool(admitted))
        if not admitted:
            return None
        self._mine.count(number_id, 1 << 30)  # the cluster already applied the limit
        return self._hold(number_id, slot_id, call_id)

    def _new_id(self) -> int:
        self._last_id = next(self._ids)
        return self._last_id

    def _take_degraded(self, number_id: int, limit: int, call_id: str, slot_id: int) -> Slot | None:
        admitted = self._mine.count(number_id, degraded_share(limit, self.live_instances))
        self.degraded_admissions += admitted
        if self._on_admission is not None:
            self._on_admission("degraded", admitted)
        return self._hold(number_id, slot_id, call_id) if admitted else None

    def _hold(self, number_id: int, slot_id: int, call_id: str) -> Slot:
        self._held[slot_id] = (number_id, call_id)
        return Slot(self, number_id, slot_id)

    def landed(self, batch: list[_Take]) -> None:
        """An admission statement returned (or failed): its slots are no longer in flight."""
        for take in batch:
            self._in_flight.discard(take.slot_id)

    # -- release ----------------------------------------------------------------------

    def _give_back(self, slot: Slot) -> None:
        self._mine.uncount(slot.number_id)
        self._held.pop(slot.key, None)
        self._released.append(slot.key)
        if self._releasing is None or self._releasing.done():
            self._releasing = asyncio.get_running_loop().create_task(self._release_all())

    async def _release_all(self) -> None:
        """DELETE the released slots, a batch per round trip. On failure the
        heartbeat's reconciliation removes them (they are no longer held)."""
        while self._released:
            batch, self._released = self._released, []
            if self.mode != "cluster":
                continue
            try:
                async with asyncio.timeout(self.lease_s):
                    await self._pool.execute(
                        "DELETE FROM call_slots WHERE instance_id = $1 AND slot_id = ANY($2::bigint[])",
                        self.instance_id,
                        batch,
                    )
            except DB_AWAY as exc:
                self._degrade(f"cluster counter unreachable: {type(exc).__name__}")

    # -- lease, reclaim, reconcile ----------------------------------------------------

    async def start(self) -> None:
        """Register (one transaction) and start heartbeating. Starts degraded
        if the database does not answer; the heartbeat keeps trying."""
        await self._beat()
        self._heartbeat = asyncio.get_running_loop().create_task(self._heartbeat_loop())

    async def stop(self) -> None:
        """Leave the cluster: our rows go at once, not at lease expiry."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None
        if self._releasing is not None:
            await asyncio.gather(self._releasing, return_exceptions=True)
        try:
            async with asyncio.timeout(self.lease_s):
                async with self._pool.acquire() as conn, conn.transaction():
                    await conn.execute("DELETE FROM call_slots WHERE instance_id = $1", self.instance_id)
                    await conn.execute("DELETE FROM gateway_instances WHERE id = $1", self.instance_id)
        except DB_AWAY:
            pass  # the lease expires and another gateway reclaims

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self._beat()
            except Exception:  # a bug must not end the lease for good: log, try again next beat
                log.exception("call slots: heartbeat failed")

    async def _beat(self) -> None:
        """Renew the lease, reclaim expired gateways' slots, reconcile ours:
        one transaction, four statements."""
        try:
            async with asyncio.timeout(max(self.lease_s / 2, self.heartbeat_s)):
                async with self._pool.acquire() as conn, conn.transaction():
                    await conn.execute(
                        "INSERT INTO gateway_instances (id, sip_address, lease_until)"
                        " VALUES ($1, $2, now() + make_interval(secs => $3))"
                        " ON CONFLICT (id) DO UPDATE SET lease_until = excluded.lease_until,"
                        " sip_address = excluded.sip_address",
                        self.instance_id,
                        self.sip_address,
                        self.lease_s,
                    )
                    # The instance row is locked as it goes, so a gateway that
                    # renewed meanwhile is re-checked and keeps its slots.
                    await conn.execute(
                        "WITH gone AS (DELETE FROM gateway_instances WHERE lease_until < now() RETURNING id)"
                        " DELETE FROM call_slots WHERE instance_id IN (SELECT id FROM gone)"
                    )
                    await conn.execute(
                        "DELETE FROM call_slots WHERE instance_id = $1 AND slot_id <= $2"
                        " AND NOT slot_id = ANY($3::bigint[])",
                        self.instance_id,
                        self._last_id,
                        [*self._held, *self._in_flight],
                    )
                    held = list(self._held.items())
                    await conn.execute(
                        "INSERT INTO call_slots (instance_id, slot_id, number_id, sip_call_id)"
                        " SELECT $1, s, n, c"
                        " FROM unnest($2::bigint[], $3::bigint[], $4::text[]) AS t(s, n, c)"
                        " ON CONFLICT DO NOTHING",
                        self.instance_id,
                        [slot_id for slot_id, _ in held],
                        [number_id for _, (number_id, _) in held],
                        [call_id for _, (_, call_id) in held],
                    )
                    live = await conn.fetchval(
                        "SELECT count(*) FROM gateway_instances WHERE lease_until > now()"
                    )
        except DB_AWAY as exc:
            self._degrade(f"cluster counter unreachable: {type(exc).__name__}")
            return
        self.live_instances = max(int(live), 1)
        self.last_contact = time.monotonic()
        if self.mode != "cluster":
            log.warning("call slots: back on the cluster counter (%d gateways live)", self.live_instances)
        self.mode = "cluster"
        self.reason = ""

    def _lease_lapsed(self) -> bool:
        return time.monotonic() - self.last_contact > self.lease_s

    def _degrade(self, reason: str) -> None:
        if self.mode == "cluster":
            log.warning("call slots: degraded, admitting this gateway's share (%s)", reason)
        self.mode = "degraded"
        self.reason = reason

    def state(self) -> dict[str, object]:
        """For /readyz."""
        mode: Mode = "degraded" if self.mode != "cluster" or self._lease_lapsed() else "cluster"
        out: dict[str, object] = {
            "backend": "postgres",
            "instance": self.instance_id,
            "mode": mode,
            "live_instances": self.live_instances,
            "degraded_admissions": self.degraded_admissions,
        }
        if mode == "degraded":
            out["reason"] = self.reason or "lease not renewed in time"
        return out
