"""Rows for tests, inserted with plain SQL (the admin API arrives later)."""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass

import asyncpg

_seq = itertools.count(1)


@dataclass(frozen=True)
class Account:
    id: int
    owner_id: int
    agent_id: int
    office_id: int


async def account(conn: asyncpg.Connection, plan: str = "enterprise") -> Account:
    n = next(_seq)
    account_id = await conn.fetchval(
        "INSERT INTO accounts (name, plan) VALUES ($1, $2) RETURNING id", f"Account {n}", plan
    )
    owner = await user(conn, account_id, role="owner", package="upgraded")
    agent = await user(conn, account_id, role="agent", package="standard")
    office = await conn.fetchval(
        "INSERT INTO offices (account_id, name) VALUES ($1, $2) RETURNING id", account_id, f"Office {n}"
    )
    return Account(account_id, owner, agent, office)


async def user(
    conn: asyncpg.Connection, account_id: int, role: str = "agent", package: str = "standard"
) -> int:
    n = next(_seq)
    user_id: int = await conn.fetchval(
        "INSERT INTO users (account_id, email, role, package) VALUES ($1, $2, $3, $4) RETURNING id",
        account_id,
        f"user{n}@example.test",
        role,
        package,
    )
    return user_id


async def number(
    conn: asyncpg.Connection,
    account_id: int,
    e164: str,
    kind: str = "company",
    owner_user_id: int | None = None,
    office_id: int | None = None,
) -> int:
    number_id: int = await conn.fetchval(
        "INSERT INTO numbers (account_id, e164, kind, owner_user_id, office_id)"
        " VALUES ($1, $2, $3, $4, $5) RETURNING id",
        account_id,
        e164,
        kind,
        owner_user_id,
        office_id,
    )
    return number_id


async def lead(
    conn: asyncpg.Connection, account_id: int, agent_id: int, *phones: str, source: str = "Zillow"
) -> int:
    lead_id: int = await conn.fetchval(
        "INSERT INTO leads (account_id, primary_agent_id, source) VALUES ($1, $2, $3) RETURNING id",
        account_id,
        agent_id,
        source,
    )
    for phone in phones:
        await conn.execute(
            "INSERT INTO lead_phones (account_id, lead_id, e164) VALUES ($1, $2, $3)",
            account_id,
            lead_id,
            phone,
        )
    return lead_id


def twilio_sid(label: str) -> str:
    """A Twilio message SID (SM + 32 hex digits, what the gateway accepts) for
    a readable label; the same label always gives the same SID."""
    if re.fullmatch(r"(SM|MM)[0-9a-f]{32}", label):
        return label
    return "SM" + hashlib.md5(label.encode()).hexdigest()
