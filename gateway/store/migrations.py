"""Versioned plain-SQL migrations: ``migrations/NNNN_name.sql``, applied in order,
each in its own transaction, recorded in ``schema_migrations``.

Concurrent gateways starting together serialise on an advisory lock, so each
migration runs exactly once however many processes start.

Each applied migration's SHA-256 is recorded; a gateway whose packaged copy of
an applied migration differs refuses to start (:class:`MigrationChanged`):
the database was built by other SQL than this code expects, and editing an
applied migration never re-runs it. Rows applied before checksums existed
take the current file's on first sight.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources

from gateway.store import Conn

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x6761_7465_7761_79  # "gateway"


class MigrationChanged(RuntimeError):
    """An applied migration's file is not the one that was applied."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available() -> list[Migration]:
    """The packaged migrations in version order. Reads a few small files."""
    found = []
    for entry in resources.files("gateway.store").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions: {versions}")
    return found


async def migrate(conn: Conn) -> list[int]:
    """Apply pending migrations; returns the versions applied (empty when none).
    Raises MigrationChanged when an applied migration's file was edited. Costs
    a few round trips when up to date, plus each pending script."""
    applied_now: list[int] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        await conn.execute("ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS checksum text")
        done = {
            r["version"]: r["checksum"]
            for r in await conn.fetch("SELECT version, checksum FROM schema_migrations")
        }
        for migration in available():
            if migration.version in done:
                await _check(conn, migration, done[migration.version])
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            log.info("applied migration %04d_%s", migration.version, migration.name)
            applied_now.append(migration.version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied_now


async def _check(conn: Conn, migration: Migration, recorded: str | None) -> None:
    if recorded is None:  # applied before checksums were recorded: trust it once
        await conn.execute(
            "UPDATE schema_migrations SET checksum = $2 WHERE version = $1",
            migration.version,
            migration.checksum,
        )
    elif recorded != migration.checksum:
        raise MigrationChanged(
            f"migration {migration.version:04d}_{migration.name}.sql differs from the one applied to this"
            " database; restore it, and put the change in a new migration"
        )
