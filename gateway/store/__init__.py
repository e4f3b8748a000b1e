"""Postgres: migrations, the embedded cluster, the routing index's loader and listener."""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# A connection, whether taken from the pool or opened on its own.
Conn: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"

Pool: TypeAlias = asyncpg.Pool

# The database's refusals, named by what they mean to the caller (the HTTP
# side answers each with its own 4xx and never needs asyncpg for it).
Duplicate = asyncpg.UniqueViolationError  # a unique value is taken
Referenced = asyncpg.ForeignKeyViolationError  # a reference is missing, or a row is still referenced
Refused = asyncpg.CheckViolationError  # a CHECK constraint said no
BadValue = asyncpg.DataError  # a value Postgres cannot store (class 22)


class StoreUnavailable(Exception):
    """The database could not be reached or did not answer in time."""


class StoreRejected(Exception):
    """The database refused the data itself (a value it cannot store): a
    client's error, never a reason to queue the write for later."""


# The database could not take a write (as opposed to refusing a value). A
# connection that Postgres cut mid-statement (fast shutdown) can leave asyncpg's
# protocol in a state it reports as InternalClientError, which is no
# PostgresError: without it here, a text arriving at that moment was a 500.
DB_AWAY: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


async def update_columns(
    conn: Conn,
    table: Literal["numbers", "users", "leads"],
    row_id: int,
    account_id: int,
    changes: dict[str, Any],
) -> None:
    """``UPDATE table SET <changes> WHERE id AND account_id``: one statement.
    Column names must be a validated model's own field names (unknown keys are
    refused before this), never raw input; the values are bound parameters."""
    if not changes:
        return
    assignments = ", ".join(f"{column} = ${i}" for i, column in enumerate(changes, start=3))
    await conn.execute(
        f"UPDATE {table} SET {assignments} WHERE id = $1 AND account_id = $2",
        row_id,
        account_id,
        *changes.values(),
    )
