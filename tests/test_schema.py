"""Migrations and the invariants the database holds itself (issue 2, DESIGN §1)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from gateway.store.migrations import MigrationChanged, available, migrate
from tests import factories

EXPECTED_TABLES = {
    "accounts",
    "offices",
    "users",
    "user_offices",
    "numbers",
    "number_route_targets",
    "leads",
    "lead_phones",
    "lead_tags",
    "timeline_events",
    "notifications",
    "usage_ledger",
    "call_slots",
    "gateway_instances",
    "call_records",
    "call_stats_daily",
    "webhook_endpoints",
    "webhook_deliveries",
    "messages",
    "charges",
    "round_robin_cursors",
    "api_keys",
    "text_codes",
    "number_inventory",
    "user_events",
    "text_opt_outs",
    "missed_call_texts",
    "schema_migrations",
}


async def test_migrations_apply_on_empty_database_then_do_nothing(empty_dsn: str) -> None:
    conn = await asyncpg.connect(empty_dsn)
    try:
        first = await migrate(conn)
        assert first == [m.version for m in available()]
        tables = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        assert tables == EXPECTED_TABLES
        assert await migrate(conn) == []
        recorded = await conn.fetchval("SELECT count(*) FROM schema_migrations")
        assert recorded == len(first)
    finally:
        await conn.close()


async def test_a_failing_migration_leaves_nothing_behind(empty_dsn: str) -> None:
    conn = await asyncpg.connect(empty_dsn)
    try:
        await migrate(conn)
        with pytest.raises(asyncpg.PostgresError):
            async with conn.transaction():
                await conn.execute("CREATE TABLE half_done (x int); SELECT 1/0;")
        assert await conn.fetchval("SELECT to_regclass('half_done')") is None
    finally:
        await conn.close()


def test_gateway_migrate_command_is_idempotent(empty_dsn: str, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "GATEWAY_DATABASE_URL": empty_dsn}
    run = [sys.executable, "-m", "gateway", "migrate"]
    first = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("applied migrations: 1, 2, 3, 4, 5, 6, 7, 8, 9")
    second = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "schema up to date"


async def test_an_applied_migration_that_changed_refuses_to_start(empty_dsn: str, tmp_path: Path) -> None:
    """Issue 17, item 10: the checksum of each applied migration is recorded;
    a database built from other SQL (here: the record says so) makes
    `gateway migrate` and `serve` exit 2 with the file named, and a row from
    before checksums takes the file's on first sight."""
    conn = await asyncpg.connect(empty_dsn)
    try:
        await migrate(conn)
        first = available()[0]
        assert (
            await conn.fetchval("SELECT checksum FROM schema_migrations WHERE version = 1") == first.checksum
        )
        await conn.execute("UPDATE schema_migrations SET checksum = NULL WHERE version = 2")
        assert await migrate(conn) == []
        assert await conn.fetchval("SELECT checksum FROM schema_migrations WHERE version = 2") is not None
        await conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
        with pytest.raises(MigrationChanged, match="0001_"):
            await migrate(conn)
    finally:
        await conn.close()
    env = {"PATH": "/usr/bin:/bin", "GATEWAY_DATABASE_URL": empty_dsn}
    for command in ("migrate", "serve"):
        done = subprocess.run(
            [sys.executable, "-m", "gateway", command], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert "database.migrations: migration 0001_" in done.stderr


async def _rejects(
    conn: asyncpg.Connection,
    sql: str,
    *args: object,
    error: type[Exception] = asyncpg.IntegrityConstraintViolationError,
) -> None:
    with pytest.raises(error):
        await conn.execute(sql, *args)


@pytest.mark.parametrize("bad", ["5551234567", "+0555123456", "+1555", "+1555123456789012", "+1 555 123"])
async def test_numbers_must_be_e164(conn: asyncpg.Connection, bad: str) -> None:
    acct = await factories.account(conn)
    with pytest.raises(asyncpg.CheckViolationError):
        await factories.number(conn, acct.id, bad)
    with pytest.raises(asyncpg.CheckViolationError):
        await factories.lead(conn, acct.id, acct.agent_id, bad)


async def test_a_number_exists_once_across_all_accounts(conn: asyncpg.Connection) -> None:
    a, b = await factories.account(conn), await factories.account(conn)
    await factories.number(conn, a.id, "+15550001111")
    with pytest.raises(asyncpg.UniqueViolationError):
        await factories.number(conn, b.id, "+15550001111")


async def test_one_personal_number_per_user(conn: asyncpg.Connection) -> None:
    acct = await factories.account(conn)
    await factories.number(conn, acct.id, "+15550001000", "personal", owner_user_id=acct.owner_id)
    with pytest.raises(asyncpg.UniqueViolationError):
        await factories.number(conn, acct.id, "+15550001001", "personal", owner_user_id=acct.owner_id)


async def test_personal_number_requires_upgraded_package(conn: asyncpg.Connection) -> None:
    acct = await factories.account(conn)  # agent has `standard`
    with pytest.raises(asyncpg.CheckViolationError, match="upgraded"):
        await factories.number(conn, acct.id, "+15550002000", "personal", owner_user_id=acct.agent_id)


async def test_one_company_number_per_office(conn: asyncpg.Connection) -> None:
    acct = await factories.account(conn)
    await factories.number(conn, acct.id, "+15550003000", "company", office_id=acct.office_id)
    with pytest.raises(asyncpg.UniqueViolationError):
        await factories.number(conn, acct.id, "+15550003001", "company", office_id=acct.office_id)
    # Office numbers are not limited, and account-wide company numbers are unlimited (R13).
    await factories.number(conn, acct.id, "+15550003002", "office", office_id=acct.office_id)
    await factories.number(conn, acct.id, "+15550003003", "office", office_id=acct.office_id)
    await factories.number(conn, acct.id, "+15550003004", "company")
    await factories.number(conn, acct.id, "+15550003005", "company")


@pytest.mark.parametrize(
    ("kind", "owner", "office"),
    [
        ("personal", False, False),
        ("personal", True, True),
        ("office", False, False),
        ("office", True, True),
        ("company", True, False),
    ],
)
async def test_number_kind_shape(conn: asyncpg.Connection, kind: str, owner: bool, office: bool) -> None:
    acct = await factories.account(conn)
    with pytest.raises(asyncpg.CheckViolationError):
        await factories.number(
            conn,
            acct.id,
            "+15550004000",
            kind,
            owner_user_id=acct.owner_id if owner else None,
            office_id=acct.office_id if office else None,
        )


async def test_lead_has_exactly_one_source(conn: asyncpg.Connection) -> None:
    acct = await factories.account(conn)
    await _rejects(
        conn,
        "INSERT INTO leads (account_id, primary_agent_id, source) VALUES ($1, $2, NULL)",
        acct.id,
        acct.agent_id,
    )
    await _rejects(
        conn,
        "INSERT INTO leads (account_id, primary_agent_id, source) VALUES ($1, $2, '')",
        acct.id,
        acct.agent_id,
    )
    await _rejects(
        conn, "INSERT INTO leads (account_id, primary_agent_id) VALUES ($1, $2)", acct.id, acct.agent_id
    )


async def test_references_never_cross_accounts(conn: asyncpg.Connection) -> None:
    a, b = await factories.account(conn), await factories.account(conn)
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await factories.lead(conn, a.id, b.agent_id)  # b's agent as a's primary agent
    lead_id = await factories.lead(conn, a.id, a.agent_id)
    await _rejects(
        conn,
        "INSERT INTO lead_phones (account_id, lead_id, e164) VALUES ($1, $2, '+15550005000')",
        b.id,
        lead_id,
    )
    await _rejects(
        conn,
        "INSERT INTO user_offices (account_id, user_id, office_id) VALUES ($1, $2, $3)",
        a.id,
        a.agent_id,
        b.office_id,
    )
    number_id = await factories.number(conn, a.id, "+15550005001")
    await _rejects(
        conn,
        "INSERT INTO number_route_targets (account_id, number_id, position, user_id) VALUES ($1, $2, 0, $3)",
        a.id,
        number_id,
        b.agent_id,
    )


async def test_one_owner_per_account_and_unique_emails(conn: asyncpg.Connection) -> None:
    acct = await factories.account(conn)
    with pytest.raises(asyncpg.UniqueViolationError):
        await factories.user(conn, acct.id, role="owner")
    await _rejects(
        conn,
        "INSERT INTO users (account_id, email, role) VALUES ($1, 'A@x.test', 'agent'),"
        " ($1, 'a@X.test', 'agent')",
        acct.id,
    )


async def test_deletes_cascade_where_owned_and_refuse_where_billed(conn: asyncpg.Connection) -> None:
    acct = await factories.account(conn)
    lead_id = await factories.lead(conn, acct.id, acct.agent_id, "+15550006000")
    await conn.execute(
        "INSERT INTO lead_tags (account_id, lead_id, tag) VALUES ($1, $2, 'hot')", acct.id, lead_id
    )
    # A user who is still a lead's primary agent cannot vanish: reassign first.
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await conn.execute("DELETE FROM users WHERE id = $1", acct.agent_id)
    await conn.execute("DELETE FROM leads WHERE id = $1", lead_id)
    assert await conn.fetchval("SELECT count(*) FROM lead_phones WHERE lead_id = $1", lead_id) == 0
    assert await conn.fetchval("SELECT count(*) FROM lead_tags WHERE lead_id = $1", lead_id) == 0
    # A personal number's owner cannot be deleted while holding it.
    await factories.number(conn, acct.id, "+15550006001", "personal", owner_user_id=acct.owner_id)
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await conn.execute("DELETE FROM users WHERE id = $1", acct.owner_id)
    # Deleting the account removes everything it owns.
    await conn.execute("DELETE FROM accounts WHERE id = $1", acct.id)
    for table in ("users", "offices", "numbers", "leads"):
        assert await conn.fetchval(f"SELECT count(*) FROM {table} WHERE account_id = $1", acct.id) == 0


async def test_usage_and_charges_shape(conn: asyncpg.Connection) -> None:
    acct = await factories.account(conn)
    number_id = await factories.number(conn, acct.id, "+15550007000")
    await conn.execute(
        "INSERT INTO charges (account_id, number_id, e164, amount_cents) VALUES ($1, $2, $3, 2700)",
        acct.id,
        number_id,
        "+15550007000",
    )
    await _rejects(
        conn,
        "INSERT INTO charges (account_id, number_id, e164, amount_cents) VALUES ($1, $2, $3, 2700)",
        acct.id,
        number_id,
        "+15550007000",
    )  # one running charge per number
    await _rejects(
        conn,
        "INSERT INTO usage_ledger (account_id, user_id, period, kind, quantity, idempotency_key)"
        " VALUES ($1, $2, '2026-11-02', 'call_minutes', 1, 'k')",
        acct.id,
        acct.agent_id,
    )
