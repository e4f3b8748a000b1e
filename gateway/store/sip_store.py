"""The SIP side's database access (:class:`gateway.sip.ports.SipStore`), one
pooled round trip per call."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import asyncpg

from gateway.domain.index import Index, Number
from gateway.domain.routing import Decision
from gateway.store import DB_AWAY, StoreRejected, StoreUnavailable, event_webhooks, overflow, texts
from gateway.store.credentials import SipUser, StoredKeys
from gateway.store.crm import decide
from gateway.store.index_queries import fetch_account_numbers
from gateway.store.text_batch import DATA_REFUSED, Overloaded, TextBatcher

ACQUIRE_TIMEOUT_S = 1.5
LISTENERS_TTL_S = 2.0  # a new endpoint gets call.started/answered within this
CALL_EVENTS = ("call.started", "call.answered")
log = logging.getLogger(__name__)
_UNAVAILABLE: tuple[type[BaseException], ...] = (Overloaded, *DB_AWAY)


# (provider, from, to, body) -> (the provider's message id, its status); raises when not sent.
SendText = Callable[[str, str, str, str], Awaitable[tuple[str, str]]]


class PgSipStore:
    def __init__(
        self, pool: asyncpg.Pool, index: Callable[[], Index], batcher: TextBatcher, send_text: SendText
    ) -> None:
        self._pool = pool
        self._index = index
        self._texts = batcher
        self._send_text = send_text
        self._listening: set[int] = set()
        self._listening_until = 0.0
        self._refreshing = asyncio.Lock()

    def call_event(
        self, event_type: str, account_id: int, data: Callable[[], dict[str, Any]]
    ) -> Coroutine[Any, Any, None] | None:
        """Queue ``call.started`` or ``call.answered`` for the account's
        endpoints, with the data ``data()`` builds; None (no work at all, not
        even building the data) when the account has none that take it.
        Which accounts listen is read at most every ``LISTENERS_TTL_S``. One
        statement when queued; an outage loses the event (no table holds the
        fact: ``call.ended`` follows from the call record either way)."""
        known = not self._refreshing.locked() and time.monotonic() < self._listening_until
        if known and account_id not in self._listening:
            return None
        return self._queue_call_event(event_type, account_id, data())

    async def _queue_call_event(self, event_type: str, account_id: int, data: dict[str, Any]) -> None:
        try:
            async with self._refreshing:  # one reader; the events behind it wait for its answer
                if time.monotonic() >= self._listening_until:
                    # Set first: with the database away, the next try is a TTL later, not
                    # one per call queued behind this lock.
                    self._listening_until = time.monotonic() + LISTENERS_TTL_S
                    async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
                        self._listening = await event_webhooks.accounts_listening(conn, CALL_EVENTS)
            if account_id in self._listening:
                async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
                    event_id = f"{event_type}_{uuid.uuid4()}"
                    await event_webhooks.queue_event(conn, account_id, event_id, event_type, data)
        except DB_AWAY as exc:
            log.warning("%s event not queued: %s", event_type, exc)

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

    async def over_limit(self, number: Number, caller: str | None, action: str) -> None:
        """One statement; an outage loses the event (the metric still counts it)."""
        try:
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
                await overflow.announce_over_limit(conn, number, caller, action)
        except DB_AWAY as exc:
            log.warning("over-limit event for %s not stored: %s", number.e164, exc)

    async def text_back(self, number: Number, caller: str, body: str) -> None:
        """Two round trips around the provider's request. Not sent while the
        database is away: a text nobody could see in the CRM is not sent."""
        try:
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
                message_id = await overflow.record_text_back(conn, number, caller, body)
        except DB_AWAY as exc:
            log.warning("text-back to %s not sent: %s", caller, exc)
            return
        try:
            provider_id, status = await self._send_text(number.provider, number.e164, caller, body)
        except Exception as exc:  # the provider's refusal or its absence: recorded, never raised
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
                await overflow.text_back_sent(conn, message_id, None, "failed", str(exc)[:200])
            return
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            await overflow.text_back_sent(conn, message_id, provider_id, status)

    async def missed_call_text(self, number: Number, caller: str) -> None:
        """One round trip for the claim, then :meth:`text_back`'s."""
        assert number.missed_call_text is not None
        try:
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
                if not await overflow.claim_missed_call_text(conn, number, caller):
                    return
        except DB_AWAY as exc:
            log.warning("missed-call text to %s not sent: %s", caller, exc)
            return
        await self.text_back(number, caller, number.missed_call_text)

    async def accept_text(self, text: texts.InboundText) -> texts.Accepted:
        """A share of one batched statement and commit, with the webhooks'
        texts (see :class:`gateway.store.text_batch.TextBatcher`)."""
        try:
            return await self._texts.accept(self._index(), text)
        except DATA_REFUSED as exc:
            raise StoreRejected(str(exc)) from exc  # a data error is not an outage
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(str(exc)) from exc
