"""The SIP side's database access (:class:`gateway.sip.ports.SipStore`), one
pooled round trip per call."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg

from gateway.domain.index import Index, Number
from gateway.domain.routing import Decision
from gateway.sip.digest import StoredKeys
from gateway.sip.ports import SipUser, StoreRejected, StoreUnavailable
from gateway.store import DB_AWAY, texts
from gateway.store.crm import decide
from gateway.store.index_queries import fetch_account_numbers
from gateway.store.text_batch import DATA_REFUSED, Overloaded, TextBatcher

ACQUIRE_TIMEOUT_S = 1.5
_UNAVAILABLE: tuple[type[BaseException], ...] = (Overloaded, *DB_AWAY)


class PgSipStore:
    def __init__(self, pool: asyncpg.Pool, index: Callable[[], Index], batcher: TextBatcher) -> None:
        self._pool = pool
        self._index = index
        self._texts = batcher

    async def rotate(self, number: Number, caller: str | None) -> Decision:
        """One round trip: claim the number's round-robin turn (R4)."""
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            return await decide(conn, self._index(), number, caller)

    async def sip_user(self, username: str) -> SipUser | None:
        """One indexed lookup on lower(sip_username)."""
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            row = await conn.fetchrow(
                "SELECT id, account_id, sip_ha1, sip_ha1_sha256 FROM users"
                " WHERE lower(sip_username) = lower($1)",
                username,
            )
        if row is None:
            return None
        return SipUser(row["id"], row["account_id"], StoredKeys(row["sip_ha1"], row["sip_ha1_sha256"]))

    async def account_numbers(self, account_id: int) -> list[Number]:
        """One round trip: the account's numbers with their route targets."""
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            return await fetch_account_numbers(conn, account_id)

    async def accept_text(self, text: texts.InboundText) -> texts.Accepted:
        """A share of one batched statement and commit, with the webhooks'
        texts (see :class:`gateway.store.text_batch.TextBatcher`)."""
        try:
            return await self._texts.accept(self._index(), text)
        except DATA_REFUSED as exc:
            raise StoreRejected(str(exc)) from exc  # a data error is not an outage
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(str(exc)) from exc
