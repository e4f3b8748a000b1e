"""API keys: ``gk_<prefix>_<secret>``, shown once, stored as a SHA-256 digest.

The public prefix finds the row; the digest of the presented key is compared
with ``hmac.compare_digest`` (constant time). The raw key is never stored or
logged. A 32-byte random secret makes a slow password hash unnecessary.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from gateway.domain.index import Role
from gateway.store import Conn

_KEY = re.compile(r"^gk_([A-Za-z0-9]{12})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: every query they cause is scoped to ``account_id``."""

    account_id: int
    user_id: int
    role: Role
    key_id: int = 0  # the API key it came with

    @property
    def manages(self) -> bool:
        """Owners and admins act on other users' resources (R12)."""
        return self.role in ("owner", "admin")


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


async def create_key(conn: Conn, account_id: int, user_id: int, label: str = "") -> str:
    """Make a key for the user and return it: the only time it is ever seen. One insert."""
    prefix = secrets.token_hex(6)
    key = f"gk_{prefix}_{secrets.token_urlsafe(32)}"
    await conn.execute(
        "INSERT INTO api_keys (account_id, user_id, prefix, digest, label) VALUES ($1, $2, $3, $4, $5)",
        account_id,
        user_id,
        prefix,
        digest(key),
        label,
    )
    return key


async def authenticate(conn: Conn, key: str) -> Principal | None:
    """The principal a presented key stands for, or None. One indexed read; a
    write to ``last_used_at`` at most once a minute per key."""
    match = _KEY.match(key)
    if match is None:
        return None
    row = await conn.fetchrow(
        "SELECT k.id, k.digest, k.account_id, k.user_id, u.role,"
        " k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute' AS stale"
        " FROM api_keys k JOIN users u ON u.id = k.user_id"
        " WHERE k.prefix = $1 AND k.revoked_at IS NULL",
        match[1],
    )
    if row is None or not hmac.compare_digest(bytes(row["digest"]), digest(key)):
        return None
    if row["stale"]:
        await conn.execute("UPDATE api_keys SET last_used_at = now() WHERE id = $1", row["id"])
    return Principal(row["account_id"], row["user_id"], row["role"], row["id"])


async def still_valid(conn: Conn, who: Principal) -> bool:
    """Whether ``who``'s key is unrevoked and its user still there with the
    same role (a long-lived stream checks this). One indexed read."""
    valid: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM api_keys k JOIN users u ON u.id = k.user_id"
        " WHERE k.id = $1 AND k.revoked_at IS NULL AND u.id = $2 AND u.role = $3 AND u.account_id = $4)",
        who.key_id,
        who.user_id,
        who.role,
        who.account_id,
    )
    return valid


async def create_account(conn: Conn, name: str, plan: str, owner_email: str) -> tuple[int, int, str]:
    """Bootstrap: an account, its owner (package ``upgraded``) and the owner's
    first key. Returns (account id, owner id, key). One transaction."""
    async with conn.transaction():
        account_id: int = await conn.fetchval(
            "INSERT INTO accounts (name, plan) VALUES ($1, $2) RETURNING id", name, plan
        )
        owner_id: int = await conn.fetchval(
            "INSERT INTO users (account_id, email, name, role, package)"
            " VALUES ($1, $2, '', 'owner', 'upgraded') RETURNING id",
            account_id,
            owner_email,
        )
        key = await create_key(conn, account_id, owner_id, label="bootstrap")
    return account_id, owner_id, key
