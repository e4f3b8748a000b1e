"""Offices, users and API keys for the admin API (issue 17, item 1: the SQL
that lived in ``http/admin_api``). Every query is scoped by account. Each
function is one round trip unless it says otherwise; the caller holds the
connection (and, where it needs one, the transaction)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway.domain.index import Role
from gateway.store import Conn

_USER_COLUMNS = (
    "u.id, u.email, u.name, u.role, u.package, u.sender_number_id, u.call_destination,"
    " u.included_minutes, u.included_segments, u.addon_minutes, u.addon_segments, u.sip_username,"
    " u.created_at,"
    " COALESCE((SELECT array_agg(o.office_id ORDER BY o.office_id) FROM user_offices o"
    " WHERE o.user_id = u.id), '{}') AS office_ids"
)


# -- offices -------------------------------------------------------------------


async def list_offices(conn: Conn, account_id: int) -> list[Any]:
    """The account's offices with their members' ids, by id."""
    return await conn.fetch(
        "SELECT f.id, f.name, f.created_at, COALESCE((SELECT array_agg(m.user_id ORDER BY m.user_id)"
        " FROM user_offices m WHERE m.office_id = f.id), '{}') AS member_ids"
        " FROM offices f WHERE f.account_id = $1 ORDER BY f.id",
        account_id,
    )


async def create_office(conn: Conn, account_id: int, name: str) -> Any:
    """The new office's row. Raises Duplicate when the name is taken."""
    return await conn.fetchrow(
        "INSERT INTO offices (account_id, name) VALUES ($1, $2) RETURNING id, name, created_at",
        account_id,
        name,
    )


async def rename_office(conn: Conn, account_id: int, office_id: int, name: str) -> Any:
    """The renamed office's row, None if it is not the account's. Raises Duplicate."""
    return await conn.fetchrow(
        "UPDATE offices SET name = $3 WHERE id = $1 AND account_id = $2 RETURNING id, name, created_at",
        office_id,
        account_id,
        name,
    )


async def delete_office(conn: Conn, account_id: int, office_id: int) -> bool:
    """False if there was no such office. Raises Referenced while a number uses it."""
    status = await conn.execute(
        "DELETE FROM offices WHERE id = $1 AND account_id = $2", office_id, account_id
    )
    return status != "DELETE 0"


async def add_members(conn: Conn, account_id: int, office_ids: Iterable[int], user_id: int) -> None:
    """Put the user in each office (already a member: nothing). One round trip
    per office. Raises Referenced when an office or the user is not the account's."""
    await conn.executemany(
        "INSERT INTO user_offices (account_id, user_id, office_id) VALUES ($1, $2, $3)"
        " ON CONFLICT DO NOTHING",
        [(account_id, user_id, office_id) for office_id in office_ids],
    )


async def remove_member(conn: Conn, account_id: int, office_id: int, user_id: int) -> bool:
    """False if the user was not a member."""
    status = await conn.execute(
        "DELETE FROM user_offices WHERE office_id = $1 AND user_id = $2 AND account_id = $3",
        office_id,
        user_id,
        account_id,
    )
    return status != "DELETE 0"


# -- users ---------------------------------------------------------------------


async def user_row(conn: Conn, account_id: int, user_id: int) -> Any:
    """One user as the API shows it (with office ids), None if not the account's."""
    return await conn.fetchrow(
        f"SELECT {_USER_COLUMNS} FROM users u WHERE u.id = $1 AND u.account_id = $2", user_id, account_id
    )


async def list_users(conn: Conn, account_id: int) -> list[Any]:
    """Every user of the account as the API shows them, by id."""
    return await conn.fetch(
        f"SELECT {_USER_COLUMNS} FROM users u WHERE u.account_id = $1 ORDER BY u.id", account_id
    )


async def create_user(conn: Conn, account_id: int, columns: dict[str, Any]) -> int:
    """The new user's id. ``columns`` are a validated model's own field names.
    Raises Duplicate when the email is taken."""
    names = ", ".join(columns)
    values = ", ".join(f"${i}" for i in range(2, len(columns) + 2))
    user_id: int = await conn.fetchval(
        f"INSERT INTO users (account_id, {names}) VALUES ($1, {values}) RETURNING id",
        account_id,
        *columns.values(),
    )
    return user_id


async def has_personal_number(conn: Conn, user_id: int) -> bool:
    """Whether the user owns a personal number (which needs the upgraded package)."""
    return bool(
        await conn.fetchval("SELECT 1 FROM numbers WHERE owner_user_id = $1 AND kind = 'personal'", user_id)
    )


async def delete_user(conn: Conn, account_id: int, user_id: int) -> None:
    """Raises Referenced while the user owns leads, a personal number or usage."""
    await conn.execute("DELETE FROM users WHERE id = $1 AND account_id = $2", user_id, account_id)


async def user_role(conn: Conn, account_id: int, user_id: int) -> Role | None:
    """The user's role, None if not the account's."""
    role: Role | None = await conn.fetchval(
        "SELECT role FROM users WHERE id = $1 AND account_id = $2", user_id, account_id
    )
    return role


# -- API keys ------------------------------------------------------------------


async def key_id(conn: Conn, prefix: str) -> int | None:
    """The id of the key with this (unique) prefix."""
    found: int | None = await conn.fetchval("SELECT id FROM api_keys WHERE prefix = $1", prefix)
    return found


async def list_keys(conn: Conn, account_id: int, user_id: int) -> list[Any]:
    """A user's keys (prefix, label, times), never the keys or their hashes."""
    return await conn.fetch(
        "SELECT id, prefix, label, created_at, last_used_at, revoked_at FROM api_keys"
        " WHERE user_id = $1 AND account_id = $2 ORDER BY id",
        user_id,
        account_id,
    )


async def key_owner(conn: Conn, account_id: int, key_id: int) -> int | None:
    """The user a key belongs to, None if it is not the account's."""
    owner: int | None = await conn.fetchval(
        "SELECT user_id FROM api_keys WHERE id = $1 AND account_id = $2", key_id, account_id
    )
    return owner


async def revoke_key(conn: Conn, key_id: int) -> None:
    """Revoke (once: a revoked key keeps its first revocation time)."""
    await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", key_id)


# -- the account ---------------------------------------------------------------

_ACCOUNT_COLUMNS = "id, name, plan, over_quota, created_at"


async def account(conn: Conn, account_id: int) -> Any:
    """The account's plan and over-quota mode (R9)."""
    return await conn.fetchrow(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id = $1", account_id)


async def set_over_quota(conn: Conn, account_id: int, mode: str | None) -> Any:
    """Change the over-quota mode (None: keep it); the account's row after."""
    return await conn.fetchrow(
        "UPDATE accounts SET over_quota = COALESCE($2, over_quota) WHERE id = $1"
        f" RETURNING {_ACCOUNT_COLUMNS}",
        account_id,
        mode,
    )
