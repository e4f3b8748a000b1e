"""The postgres slot backend itself (issue 14), two of them in one process on
one real database, as two gateways would be: exactness under a burst, the
lease, reclaim and reconciliation. The clock is Postgres's, so these run in
about a second."""

from __future__ import annotations

import asyncio
import inspect
import random
from collections.abc import AsyncIterator

import asyncpg
import pytest

from gateway.domain.call_slots import Slot, degraded_share
from gateway.store.cluster_slots import ClusterSlots

LIMIT = 50


@pytest.fixture
async def pools(db_dsn: str) -> AsyncIterator[tuple[asyncpg.Pool, asyncpg.Pool]]:
    a = await asyncpg.create_pool(db_dsn, min_size=1, max_size=4)
    b = await asyncpg.create_pool(db_dsn, min_size=1, max_size=4)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def started(pool: asyncpg.Pool, name: str, lease_s: float = 5.0) -> ClusterSlots:
    slots = ClusterSlots(
        pool, instance_id=name, sip_address=f"{name}:5060", lease_s=lease_s, heartbeat_s=lease_s / 4,
        admit_timeout_s=2.0,
    )  # fmt: skip
    await slots.start()
    return slots


async def take(slots: ClusterSlots, number_id: int, call: int) -> Slot | None:
    taken = slots.take(number_id, LIMIT, f"call-{call}")
    if inspect.isawaitable(taken):
        return await taken
    return taken


async def held(conn: asyncpg.Connection, number_id: int) -> int:
    count: int = await conn.fetchval("SELECT count(*) FROM call_slots WHERE number_id = $1", number_id)
    return count


async def test_a_burst_of_500_across_two_gateways_admits_exactly_the_limit(
    pools: tuple[asyncpg.Pool, asyncpg.Pool], conn: asyncpg.Connection
) -> None:
    """R7 is exact across gateways: 500 INVITEs to one number, interleaved
    between two gateways, all at once -> exactly 50 slots; each release frees
    exactly one."""
    a, b = await started(pools[0], "a"), await started(pools[1], "b")
    try:
        gateways = [a, b] * 250
        random.Random(7).shuffle(gateways)
        results = await asyncio.gather(*(take(gw, 7, n) for n, gw in enumerate(gateways)))
        admitted = [slot for slot in results if slot is not None]
        assert len(admitted) == LIMIT
        assert a.total() + b.total() == LIMIT
        assert await held(conn, 7) == LIMIT
        assert a.state()["mode"] == b.state()["mode"] == "cluster"
        # Another number is not affected by this one's limit.
        assert await take(a, 8, 999) is not None
        for slot in admitted[:10]:
            slot.release()
            assert not slot.release()  # idempotent: the count drops once
        await asyncio.sleep(0.05)  # releases are one batched DELETE, not waited for
        assert await held(conn, 7) == LIMIT - 10
        again = await asyncio.gather(*(take(gw, 7, 1000 + n) for n, gw in enumerate(gateways[:20])))
        assert sum(slot is not None for slot in again) == 10
    finally:
        await a.stop()
        await b.stop()
    assert await conn.fetchval("SELECT count(*) FROM call_slots") == 0  # stop() leaves at once


async def test_a_lapsed_lease_stops_cluster_admission_and_reconciles_on_renewal(
    pools: tuple[asyncpg.Pool, asyncpg.Pool], conn: asyncpg.Connection
) -> None:
    """Another gateway reclaims a gateway whose lease expired; the reclaimed
    one admits only its share meanwhile, and its next heartbeat puts the calls
    it really holds back into the table."""
    a, b = await started(pools[0], "a"), await started(pools[1], "b")
    await a._beat()  # a has seen b: its share is 50 / 2
    try:
        slots = [await take(a, 9, n) for n in range(30)]
        assert all(slots) and await held(conn, 9) == 30
        # a stalls (its heartbeat stops); its lease runs out; b reclaims it.
        assert a._heartbeat is not None
        a._heartbeat.cancel()
        await conn.execute("UPDATE gateway_instances SET lease_until = now() - interval '1 s' WHERE id = 'a'")
        await b._beat()
        assert await held(conn, 9) == 0
        # b may now admit up to the limit: a's calls are gone from the count.
        assert await take(b, 9, 100) is not None
        # a learns at its next admission that its lease is gone: degraded.
        assert await take(a, 9, 101) is None  # its share is 25 and it holds 30
        assert a.state()["mode"] == "degraded"
        # a's heartbeat comes back: its 30 real calls are counted again.
        await a._beat()
        assert a.state()["mode"] == "cluster"
        assert await held(conn, 9) == 31
        for slot in slots:
            assert slot is not None
            slot.release()
        await asyncio.sleep(0.05)
        assert await held(conn, 9) == 1
    finally:
        await a.stop()
        await b.stop()


async def test_a_restart_that_reuses_the_instance_id_drops_the_old_rows(
    pools: tuple[asyncpg.Pool, asyncpg.Pool], conn: asyncpg.Connection
) -> None:
    """A gateway configured with a fixed cluster.instance_id that crashed and
    came back: the rows of its previous life go at its first heartbeat."""
    first = await started(pools[0], "fixed")
    assert all([await take(first, 11, n) for n in range(5)])
    assert first._heartbeat is not None
    first._heartbeat.cancel()  # "crashed": nothing released
    second = await started(pools[1], "fixed")
    try:
        assert await held(conn, 11) == 0
        assert await take(second, 11, 1) is not None
    finally:
        await second.stop()


def test_the_degraded_share_never_admits_more_than_the_limit_plus_gateways_minus_one() -> None:
    for limit in range(1, 120):
        for live in range(1, 8):
            share = degraded_share(limit, live)
            assert share * live >= limit  # all of them together can still reach the limit
            assert share * live <= limit + live - 1
