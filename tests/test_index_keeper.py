"""The live index follows Postgres through NOTIFY, reloads, and survives a
server restart (issue 2, DESIGN §2). No polling: tests await applied changes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from gateway.domain.index import Index, LeadRef
from gateway.metrics import Metrics
from gateway.store.embedded import EmbeddedPostgres
from gateway.store.index_keeper import IndexKeeper
from gateway.store.migrations import migrate
from tests import factories


@pytest.fixture
async def keeper(db_dsn: str) -> AsyncIterator[IndexKeeper]:
    keeper = IndexKeeper(db_dsn, Metrics(), max_backoff_s=0.2)
    await keeper.start()
    try:
        yield keeper
    finally:
        await keeper.stop()


async def lead_from_new_connection(dsn: str, account_id: int, agent_id: int, phone: str) -> None:
    writer = await asyncpg.connect(dsn)
    try:
        await factories.lead(writer, account_id, agent_id, phone)
    finally:
        await writer.close()


def agents(index: Index, account: int, phone: str) -> set[int]:
    return {ref.agent_id for ref in index.leads_for(account, phone)}


async def test_initial_load_contains_existing_rows(conn: asyncpg.Connection, db_dsn: str) -> None:
    acct = await factories.account(conn)
    lead_id = await factories.lead(conn, acct.id, acct.agent_id, "+15551110000", "+15551110001")
    await factories.number(conn, acct.id, "+15559990000")
    keeper = IndexKeeper(db_dsn, Metrics())
    await keeper.start()
    try:
        index = keeper.index
        (ref,) = index.leads_for(acct.id, "+15551110001")
        assert (ref.lead_id, ref.agent_id) == (lead_id, acct.agent_id)
        number = index.number("+15559990000")
        assert number is not None and number.account_id == acct.id and number.max_concurrent_calls == 50
        user = index.user(acct.agent_id)
        assert user is not None and user.package == "standard"
        assert keeper.ready and keeper.generation == 1
    finally:
        await keeper.stop()


async def test_lead_phone_insert_reassign_delete_from_another_connection(
    conn: asyncpg.Connection, keeper: IndexKeeper
) -> None:
    acct = await factories.account(conn)
    other_agent = await factories.user(conn, acct.id)
    phone = "+15551112222"
    lead_id = await factories.lead(conn, acct.id, acct.agent_id, phone)
    await keeper.wait_until(lambda idx: agents(idx, acct.id, phone) == {acct.agent_id})

    await conn.execute("UPDATE leads SET primary_agent_id = $1 WHERE id = $2", other_agent, lead_id)
    await keeper.wait_until(lambda idx: agents(idx, acct.id, phone) == {other_agent})

    await conn.execute("UPDATE lead_phones SET e164 = '+15551113333' WHERE lead_id = $1", lead_id)
    await keeper.wait_until(
        lambda idx: (
            not idx.leads_for(acct.id, phone) and agents(idx, acct.id, "+15551113333") == {other_agent}
        )
    )

    await conn.execute("DELETE FROM lead_phones WHERE lead_id = $1", lead_id)
    await keeper.wait_until(lambda idx: idx.size().lead_phones == 0)
    assert keeper.generation == 1  # all of it by notification, no reload


async def test_duplicates_and_lead_delete(conn: asyncpg.Connection, keeper: IndexKeeper) -> None:
    acct = await factories.account(conn)
    phone = "+15551114444"
    first = await factories.lead(conn, acct.id, acct.agent_id, phone)
    second = await factories.lead(conn, acct.id, acct.owner_id, phone)
    await keeper.wait_until(lambda idx: {r.lead_id for r in idx.leads_for(acct.id, phone)} == {first, second})
    await conn.execute("DELETE FROM leads WHERE id = $1", first)  # cascades to its phones
    await keeper.wait_until(lambda idx: [r.lead_id for r in idx.leads_for(acct.id, phone)] == [second])


async def test_number_and_user_changes(conn: asyncpg.Connection, keeper: IndexKeeper) -> None:
    acct = await factories.account(conn)
    number_id = await factories.number(conn, acct.id, "+15559991000")
    await keeper.wait_until(lambda idx: idx.number("+15559991000") is not None)
    await conn.execute(
        "INSERT INTO number_route_targets (account_id, number_id, position, user_id) VALUES ($1, $2, 0, $3)",
        acct.id,
        number_id,
        acct.agent_id,
    )
    await conn.execute(
        "UPDATE numbers SET max_concurrent_calls = 7, e164 = '+15559991001',"
        " unknown_route = 'ring_all' WHERE id = $1",
        number_id,
    )

    def renumbered(idx: Index) -> bool:
        n = idx.number("+15559991001")
        return (
            idx.number("+15559991000") is None
            and n is not None
            and n.max_concurrent_calls == 7
            and n.route_user_ids == (acct.agent_id,)
            and n.unknown_route == "ring_all"
        )

    await keeper.wait_until(renumbered)
    await conn.execute(
        "INSERT INTO user_offices (account_id, user_id, office_id) VALUES ($1, $2, $3)",
        acct.id,
        acct.agent_id,
        acct.office_id,
    )
    await conn.execute("UPDATE users SET package = 'none' WHERE id = $1", acct.agent_id)

    def user_updated(idx: Index) -> bool:
        u = idx.user(acct.agent_id)
        return u is not None and u.package == "none" and u.office_ids == {acct.office_id}

    await keeper.wait_until(user_updated)
    await conn.execute("DELETE FROM numbers WHERE id = $1", number_id)
    await keeper.wait_until(lambda idx: idx.number_by_id(number_id) is None)


async def test_changes_in_one_transaction_arrive_together(
    conn: asyncpg.Connection, keeper: IndexKeeper
) -> None:
    acct = await factories.account(conn)
    async with conn.transaction():
        for i in range(200):
            await factories.lead(conn, acct.id, acct.agent_id, f"+1555222{i:04d}")
        assert keeper.index.leads_for(acct.id, "+15552220000") == ()  # not before commit
    await keeper.wait_until(lambda idx: idx.size().lead_phones == 200)


async def test_periodic_reload_heals_a_missed_change(conn: asyncpg.Connection, db_dsn: str) -> None:
    acct = await factories.account(conn)
    keeper = IndexKeeper(db_dsn, Metrics(), reload_interval_s=0.5)
    await keeper.start()
    try:
        # Simulate a missed notification: change the row with the trigger disabled.
        await conn.execute("ALTER TABLE lead_phones DISABLE TRIGGER lead_phones_index_notify")
        await factories.lead(conn, acct.id, acct.agent_id, "+15553330000")
        await conn.execute("ALTER TABLE lead_phones ENABLE TRIGGER lead_phones_index_notify")
        await keeper.wait_until(lambda idx: bool(idx.leads_for(acct.id, "+15553330000")), limit_s=10)
        assert keeper.generation >= 2
    finally:
        await keeper.stop()


async def test_recovers_after_postgres_restart_and_catches_up(private_cluster: EmbeddedPostgres) -> None:
    dsn = private_cluster.dsn
    setup = await asyncpg.connect(dsn)
    await migrate(setup)
    acct = await factories.account(setup)
    await setup.close()
    keeper = IndexKeeper(dsn, Metrics(), max_backoff_s=1.0)
    await keeper.start()
    try:
        assert keeper.ready
        await asyncio.to_thread(private_cluster.stop_server)
        for _ in range(100):  # the listener notices its connection is gone
            if not keeper.ready:
                break
            await asyncio.sleep(0.02)
        assert not keeper.ready
        await asyncio.to_thread(private_cluster.start_server)
        # Changes made while the listener is still away must arrive through the reload.
        await lead_from_new_connection(dsn, acct.id, acct.agent_id, "+15554440000")
        await keeper.wait_until(lambda idx: bool(idx.leads_for(acct.id, "+15554440000")), limit_s=15)
        assert keeper.generation >= 2
        for _ in range(100):
            if keeper.ready:
                break
            await asyncio.sleep(0.05)
        assert keeper.ready
        # ... and notifications flow again on the new connection.
        await lead_from_new_connection(dsn, acct.id, acct.owner_id, "+15554440001")
        await keeper.wait_until(lambda idx: bool(idx.leads_for(acct.id, "+15554440001")), limit_s=5)
    finally:
        await keeper.stop()


def test_lead_ref_is_compact() -> None:
    assert LeadRef(1, 2, 3.0) == (1, 2, 3.0)
