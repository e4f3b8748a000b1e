"""Buying and releasing numbers (R13): inventory, the number row, its charge.

The inventory sits behind :class:`Inventory` so that a carrier's real
number-ordering API can replace the local table without touching the rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gateway.domain.number_policy import NUMBER_MONTHLY_CENTS, UnknownCallerSetup
from gateway.store import Conn


class Inventory(Protocol):
    async def claim(self, conn: Conn) -> tuple[str, str] | None:
        """Take one available number: (E.164, provider), or None when empty."""

    async def give_back(self, conn: Conn, e164: str, provider: str) -> None:
        """Return a released number to the pool."""


class LocalInventory:
    """The default inventory: the ``number_inventory`` table. Claims skip rows
    other buyers have locked, so concurrent purchases never get the same number."""

    async def claim(self, conn: Conn) -> tuple[str, str] | None:
        row = await conn.fetchrow(
            "DELETE FROM number_inventory WHERE e164 = (SELECT e164 FROM number_inventory"
            " ORDER BY added_at, e164 FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING e164, provider"
        )
        return None if row is None else (row["e164"], row["provider"])

    async def give_back(self, conn: Conn, e164: str, provider: str) -> None:
        await conn.execute(
            "INSERT INTO number_inventory (e164, provider) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            e164,
            provider,
        )


async def add_to_inventory(conn: Conn, numbers: list[str], provider: str) -> int:
    """``gateway inventory add``: returns how many were new. One round trip."""
    rows = await conn.fetch(
        "INSERT INTO number_inventory (e164, provider) SELECT n, $2 FROM unnest($1::text[]) n"
        " WHERE NOT EXISTS (SELECT 1 FROM numbers WHERE e164 = n)"
        " ON CONFLICT DO NOTHING RETURNING e164",
        numbers,
        provider,
    )
    return len(rows)


class InventoryEmpty(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Purchase:
    number_id: int
    e164: str
    charge_id: int


async def buy(
    conn: Conn,
    inventory: Inventory,
    *,
    account_id: int,
    kind: str,
    office_id: int | None,
    owner_user_id: int | None,
    description: str,
    setup: UnknownCallerSetup,
    tag: str | None,
) -> Purchase:
    """Claim a number, create it with its unknown-caller route, source and tag
    (the tag defaults to the number itself), start its 2700-cent monthly
    charge: one transaction, so a failure leaves the number in inventory.
    Four round trips."""
    async with conn.transaction():
        claimed = await inventory.claim(conn)
        if claimed is None:
            raise InventoryEmpty("no numbers left in inventory")
        e164, provider = claimed
        number_id: int = await conn.fetchval(
            "INSERT INTO numbers (account_id, e164, kind, office_id, owner_user_id, description, provider,"
            " unknown_route, source, tag)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
            account_id,
            e164,
            kind,
            office_id,
            owner_user_id,
            description,
            provider,
            setup.unknown_route,
            setup.source,
            tag or e164,
        )
        await conn.execute(
            "INSERT INTO number_route_targets (account_id, number_id, position, user_id)"
            " SELECT $1, $2, t.position - 1, t.user_id"
            " FROM unnest($3::bigint[]) WITH ORDINALITY AS t(user_id, position)",
            account_id,
            number_id,
            list(setup.route_user_ids),
        )
        charge_id: int = await conn.fetchval(
            "INSERT INTO charges (account_id, number_id, e164, amount_cents)"
            " VALUES ($1, $2, $3, $4) RETURNING id",
            account_id,
            number_id,
            e164,
            NUMBER_MONTHLY_CENTS,
        )
    return Purchase(number_id, e164, charge_id)


async def release(conn: Conn, inventory: Inventory, account_id: int, number_id: int) -> bool:
    """End the charge, delete the number (history keeps its E.164 and a NULL
    number id), return it to inventory. False if no such number. One transaction."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT e164, provider FROM numbers WHERE id = $1 AND account_id = $2 FOR UPDATE",
            number_id,
            account_id,
        )
        if row is None:
            return False
        await conn.execute(
            "UPDATE charges SET ended_at = now() WHERE number_id = $1 AND ended_at IS NULL", number_id
        )
        await conn.execute("DELETE FROM numbers WHERE id = $1", number_id)
        await inventory.give_back(conn, row["e164"], row["provider"])
    return True
