"""Writes and checks of the numbers API (issue 17, item 1: the SQL that lived
in ``http/numbers_api``); reads of whole numbers are in ``index_queries``.
Every query is scoped by account; each is one round trip unless it says
otherwise."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.domain.number_policy import Plan
from gateway.store import Conn


async def set_route_users(conn: Conn, account_id: int, number_id: int, user_ids: Sequence[int]) -> None:
    """Replace the number's route (R4 order) with ``user_ids``: a DELETE and one
    INSERT per user, in the caller's transaction. Raises Referenced when a user
    is not the account's."""
    await conn.execute("DELETE FROM number_route_targets WHERE number_id = $1", number_id)
    await conn.executemany(
        "INSERT INTO number_route_targets (account_id, number_id, position, user_id) VALUES ($1, $2, $3, $4)",
        [(account_id, number_id, position, user_id) for position, user_id in enumerate(user_ids)],
    )


async def add_text_code(conn: Conn, account_id: int, number_id: int, keyword: str, purpose: str) -> int:
    """The new code's id (R14). Raises Duplicate when the number has the keyword."""
    code_id: int = await conn.fetchval(
        "INSERT INTO text_codes (account_id, number_id, keyword, purpose) VALUES ($1, $2, $3, $4)"
        " RETURNING id",
        account_id,
        number_id,
        keyword,
        purpose,
    )
    return code_id


async def account_plan(conn: Conn, account_id: int) -> Plan:
    plan: Plan = await conn.fetchval("SELECT plan FROM accounts WHERE id = $1", account_id)
    return plan


async def office_exists(conn: Conn, account_id: int, office_id: int) -> bool:
    found = await conn.fetchval(
        "SELECT 1 FROM offices WHERE id = $1 AND account_id = $2", office_id, account_id
    )
    return found is not None


async def user_package(conn: Conn, account_id: int, user_id: int) -> str | None:
    """The user's package, None if the user is not the account's (another
    account's user is answered exactly like a missing one)."""
    package: str | None = await conn.fetchval(
        "SELECT package FROM users WHERE id = $1 AND account_id = $2", user_id, account_id
    )
    return package
