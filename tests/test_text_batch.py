"""Group commit of inbound texts (issue 13), on a running gateway and real
Postgres: exactly once under concurrent redelivery, one refused text never
fails its batch-mates, and overload is a quick 503, never a lost text."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime

import asyncpg

from gateway.server import Gateway
from gateway.store.text_batch import DATA_REFUSED, Overloaded, TextBatcher
from gateway.store.texts import Accepted, InboundText
from tests.test_texts_inbound import NUMBER, gw, setup, twilio_params, twilio_post

__all__ = ["gw"]


async def test_500_interleaved_deliveries_of_100_texts_store_each_once(
    gw: Gateway, conn: asyncpg.Connection
) -> None:
    await setup(conn, gw)
    # Half from the lead (one recipient, a timeline row), half from strangers (R4 ring_all: two).
    senders = ["+15557000001" if n % 2 else f"+1555710{n:04d}" for n in range(100)]
    deliveries = [(n, senders[n]) for n in range(100) for _ in range(5)]
    random.Random(13).shuffle(deliveries)
    answers = await asyncio.gather(
        *(twilio_post(gw, twilio_params(f"burst-{n}", sender=sender)) for n, sender in deliveries)
    )
    assert {status for status, _ in answers} == {200}
    counts = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM messages) AS messages,"
        " (SELECT count(DISTINCT provider_message_id) FROM messages) AS distinct_ids,"
        " (SELECT count(*) FROM usage_ledger WHERE kind = 'text_segments') AS usage,"
        " (SELECT count(DISTINCT message_id) FROM usage_ledger) AS charged,"
        " (SELECT count(*) FROM timeline_events WHERE channel = 'text') AS timeline,"
        " (SELECT count(*) FROM user_events WHERE kind = 'text') AS live"
    )
    assert dict(counts) == {
        "messages": 100,
        "distinct_ids": 100,
        "usage": 100,
        "charged": 100,
        "timeline": 50,
        "live": 50 * 1 + 50 * 2,
    }


def _text(message_id: str, sender: str = "+15557000001") -> InboundText:
    return InboundText(
        provider="telnyx",
        provider_message_id=message_id,
        from_e164=sender,
        to_e164=NUMBER,
        body="still for sale?",
        received_at=datetime.now(UTC),
    )


async def test_a_text_postgres_refuses_fails_alone(gw: Gateway, conn: asyncpg.Connection) -> None:
    await setup(conn, gw)
    assert gw.keeper is not None and gw.pool is not None
    batcher = TextBatcher(gw.pool)
    index = gw.keeper.index
    texts = [_text(f"good-{n}") for n in range(20)]
    texts.insert(7, _text("x" * 300))  # past the column's CHECK (1..200 characters)
    results = await asyncio.gather(*(batcher.accept(index, t) for t in texts), return_exceptions=True)
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(refused) == 1 and isinstance(refused[0], DATA_REFUSED) and results[7] is refused[0]
    assert all(isinstance(r, Accepted) and not r.duplicate for i, r in enumerate(results) if i != 7)
    assert await conn.fetchval("SELECT count(*) FROM messages") == 20


async def test_overload_is_refused_at_once_and_what_was_accepted_is_stored(
    gw: Gateway, conn: asyncpg.Connection
) -> None:
    await setup(conn, gw)
    assert gw.keeper is not None and gw.pool is not None
    batcher = TextBatcher(gw.pool, max_batch=8, max_pending=16)
    index = gw.keeper.index
    results = await asyncio.gather(
        *(batcher.accept(index, _text(f"flood-{n}", f"+1555720{n:04d}")) for n in range(400)),
        return_exceptions=True,
    )
    accepted = [r for r in results if isinstance(r, Accepted)]
    overloaded = [r for r in results if isinstance(r, Overloaded)]
    assert len(accepted) + len(overloaded) == 400 and overloaded and accepted
    stored = await conn.fetchval("SELECT count(*) FROM messages")
    assert stored == len(accepted)
    assert sorted(r.message_id for r in accepted) == sorted(
        await conn.fetchval("SELECT array_agg(id) FROM messages")
    )


async def test_redeliveries_in_one_batch_are_duplicates_of_one_message(
    gw: Gateway, conn: asyncpg.Connection
) -> None:
    await setup(conn, gw)
    assert gw.keeper is not None and gw.pool is not None
    batcher = TextBatcher(gw.pool)
    index = gw.keeper.index
    first = await batcher.accept(index, _text("again-0"))
    results = await asyncio.gather(*(batcher.accept(index, _text(f"again-{n % 2}")) for n in range(10)))
    assert {r.message_id for r in results if r.message_id == first.message_id}
    assert sum(not r.duplicate for r in results) == 1  # again-1, once
    assert len({r.message_id for r in results}) == 2
    assert await conn.fetchval("SELECT count(*) FROM usage_ledger") == 2
