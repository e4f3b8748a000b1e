"""The demo account that ``make run`` seeds, so a newcomer has something to route.

Idempotent: an existing "Demo Realty" account is left as it is.
"""

from __future__ import annotations

from gateway.domain.index import Index
from gateway.store import Conn
from gateway.store.api_keys import create_key

DEMO_ACCOUNT = "Demo Realty"
COMPANY_NUMBER = "+15550100000"
OFFICE_NUMBER = "+15550100001"
LEAD_PHONE = "+15550200001"


def routable(index: Index) -> bool:
    """The demo's numbers and lead are in the routing index."""
    number = index.number(COMPANY_NUMBER)
    return (
        number is not None
        and index.number(OFFICE_NUMBER) is not None
        and bool(index.leads_for(number.account_id, LEAD_PHONE))
    )


async def seed(conn: Conn) -> list[str]:
    """Create the demo account once; return lines describing it. A few inserts."""
    async with conn.transaction():
        account_id = await conn.fetchval("SELECT id FROM accounts WHERE name = $1", DEMO_ACCOUNT)
        if account_id is None:
            account_id = await _create(conn)
        owner_id = await conn.fetchval(
            "SELECT id FROM users WHERE account_id = $1 AND role = 'owner'", account_id
        )
        # A fresh key each start (keys are shown once); the previous demo key stops working.
        await conn.execute(
            "UPDATE api_keys SET revoked_at = now()"
            " WHERE user_id = $1 AND label = 'demo' AND revoked_at IS NULL",
            owner_id,
        )
        key = await create_key(conn, account_id, owner_id, label="demo")
    return [
        f"demo account {DEMO_ACCOUNT!r} (id {account_id}):",
        f"  company number {COMPANY_NUMBER}: unknown callers ring the owner",
        f"  office number  {OFFICE_NUMBER}: unknown callers ring the office agents",
        f"  lead 'Pat Buyer' {LEAD_PHONE}: routes to agent Alex (R1)",
        f"  owner (user {owner_id}) API key, new each start: {key}",
    ]


async def _create(conn: Conn) -> int:
    account_id: int = await conn.fetchval(
        "INSERT INTO accounts (name, plan) VALUES ($1, 'enterprise') RETURNING id", DEMO_ACCOUNT
    )
    office_id = await conn.fetchval(
        "INSERT INTO offices (account_id, name) VALUES ($1, 'Downtown') RETURNING id", account_id
    )
    users = {}
    for email, name, role, package in (
        ("owner@demo.example", "Olivia Owner", "owner", "upgraded"),
        ("alex@demo.example", "Alex Agent", "agent", "standard"),
        ("sam@demo.example", "Sam Agent", "agent", "standard"),
    ):
        users[role if role == "owner" else name.split()[0].lower()] = await conn.fetchval(
            "INSERT INTO users (account_id, email, name, role, package, call_destination)"
            " VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            account_id,
            email,
            name,
            role,
            package,
            f"sip:{name.split()[0].lower()}@127.0.0.1:5070",
        )
    for user in ("alex", "sam"):
        await conn.execute(
            "INSERT INTO user_offices (account_id, user_id, office_id) VALUES ($1, $2, $3)",
            account_id,
            users[user],
            office_id,
        )
    company = await conn.fetchval(
        "INSERT INTO numbers (account_id, e164, kind, description, source, tag)"
        " VALUES ($1, $2, 'company', 'Main line', 'Company Number', 'inbound-call') RETURNING id",
        account_id,
        COMPANY_NUMBER,
    )
    office = await conn.fetchval(
        "INSERT INTO numbers (account_id, e164, kind, office_id, description, unknown_route,"
        " source, tag) VALUES ($1, $2, 'office', $3, 'Downtown office', 'ring_all',"
        " 'Office Number', 'downtown') RETURNING id",
        account_id,
        OFFICE_NUMBER,
        office_id,
    )
    await conn.executemany(
        "INSERT INTO number_route_targets (account_id, number_id, position, user_id) VALUES ($1, $2, $3, $4)",
        [
            (account_id, company, 0, users["owner"]),
            (account_id, office, 0, users["alex"]),
            (account_id, office, 1, users["sam"]),
        ],
    )
    lead = await conn.fetchval(
        "INSERT INTO leads (account_id, name, primary_agent_id, source)"
        " VALUES ($1, 'Pat Buyer', $2, 'Zillow') RETURNING id",
        account_id,
        users["alex"],
    )
    await conn.execute(
        "INSERT INTO lead_phones (account_id, lead_id, e164) VALUES ($1, $2, $3)",
        account_id,
        lead,
        LEAD_PHONE,
    )
    return account_id
