"""Group commit of inbound texts (issue 13), on a running gateway and real
Postgres: exactly once under concurrent redelivery, one refused text never
fails its batch-mates, and overload is a quick 503, never a lost text."""

from __future__ import annotations

import asyncio
import json
import random
import time
from datetime import UTC, datetime

import aiohttp
import asyncpg
from multidict import MultiDict
from twilio.request_validator import RequestValidator

from gateway import config
from gateway.config import TextsSettings
from gateway.http.load_shed import LoopLag
from gateway.server import Gateway
from gateway.store.status_batch import StatusBatcher
from gateway.store.text_batch import DATA_REFUSED, Overloaded, TextBatcher
from gateway.store.texts import Accepted, InboundText
from tests import factories
from tests.test_texts_inbound import (
    NUMBER,
    PUBLIC,
    TOKEN,
    gw,
    setup,
    telnyx_event,
    telnyx_post,
    text_settings,
    twilio_params,
    twilio_post,
    usage_report,
)

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


async def test_a_second_writer_starts_only_on_a_deep_queue(gw: Gateway, conn: asyncpg.Connection) -> None:
    """On a shallow queue a second writer would only split the batch and
    compete for the CPU (26 % fewer texts/s at 32 connections on the 2-core
    benchmark machine); past a quarter of max_batch waiting, it starts."""
    await setup(conn, gw)
    assert gw.keeper is not None and gw.pool is not None
    batcher = TextBatcher(gw.pool, max_batch=16, max_pending=64, writers=2)  # a second writer past 4
    index = gw.keeper.index

    def flood(prefix: str, count: int) -> list[asyncio.Task[Accepted]]:
        return [
            asyncio.ensure_future(batcher.accept(index, _text(f"{prefix}-{n}", f"+1555730{n:04d}")))
            for n in range(count)
        ]

    shallow = flood("shallow", 4)
    await asyncio.sleep(0)  # every accept has joined; no batch has been written yet
    assert batcher.writing == 1
    assert len(await asyncio.gather(*shallow)) == 4
    deep = flood("deep", 12)
    await asyncio.sleep(0)
    assert batcher.writing == 2
    assert len(await asyncio.gather(*deep)) == 12
    assert await conn.fetchval("SELECT count(*) FROM messages") == 16


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


async def test_a_refused_text_is_its_own_400_and_its_batch_mates_are_stored(
    gw: Gateway, conn: asyncpg.Connection
) -> None:
    """Over HTTP: twenty texts arrive together with one whose body Postgres
    refuses (a lone surrogate, which JSON allows and UTF-8 does not)."""
    await setup(conn, gw)
    bad = telnyx_event("tx-refused")
    bad["data"]["payload"]["text"] = "hello \ud800"
    events: list[dict | bytes] = [telnyx_event(f"tx-mate-{n}") for n in range(20)]
    events.insert(9, json.dumps(bad).encode())
    answers = await asyncio.gather(*(telnyx_post(gw, event) for event in events))
    assert answers[9][0] == 400 and "cannot be stored" in answers[9][1]["detail"]
    assert [status for i, (status, _) in enumerate(answers) if i != 9] == [200] * 20
    assert await conn.fetchval("SELECT count(*) FROM messages") == 20
    assert gw.recorder is not None and gw.recorder.backlog() == 0  # refused, not queued


async def test_overload_over_http_is_a_quick_503_and_every_200_is_stored(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    s = text_settings(db_dsn)
    gateway = Gateway(config.replace(s, texts=TextsSettings(batch_max=4, max_pending=4, writers=1)))
    await gateway.start()
    try:
        await setup(conn, gateway)
        path = "/v1/webhooks/twilio/messages"
        validator = RequestValidator(TOKEN)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=400)) as session:

            async def post(n: int) -> tuple[str, int, str | None, float]:
                params = twilio_params(f"flood-{n}", sender=f"+1555730{n:04d}")
                started = time.perf_counter()
                async with session.post(
                    f"http://127.0.0.1:{gateway.http_port}{path}",
                    data=params,
                    headers={
                        "X-Twilio-Signature": validator.compute_signature(PUBLIC + path, MultiDict(params))
                    },
                ) as r:
                    await r.read()
                    return params[0][1], r.status, r.headers.get("Retry-After"), time.perf_counter() - started

            answers = await asyncio.gather(*(post(n) for n in range(300)))
    finally:
        await gateway.stop()
    refused = [a for a in answers if a[1] == 503]
    accepted = {sid for sid, status, _, _ in answers if status == 200}
    assert refused and accepted and len(refused) + len(accepted) == 300
    assert {retry for _, _, retry, _ in refused} == {"1"}
    assert max(seconds for *_, seconds in refused) < 2.0  # inside Telnyx's budget, not after it
    stored = {
        row["provider_message_id"] for row in await conn.fetch("SELECT provider_message_id FROM messages")
    }
    assert accepted == stored


async def test_status_callbacks_in_one_batch_fold_forward(gw: Gateway, conn: asyncpg.Connection) -> None:
    """Item 4: sent, delivered and a late sent for the same message, arriving
    together, leave it delivered, with the error code the last one carried."""
    acct, _, _ = await setup(conn, gw)
    number_id = await conn.fetchval("SELECT id FROM numbers WHERE e164 = $1", NUMBER)
    sids = [factories.twilio_sid(f"out-{n}") for n in range(40)]
    await conn.executemany(
        "INSERT INTO messages (account_id, number_id, direction, provider, provider_message_id, from_e164,"
        " to_e164, body, segments, sent_by, status) VALUES ($1, $2, 'outbound', 'twilio', $3, $4,"
        " '+15557000001', 'hi', 1, $5, 'sending')",
        [(acct.id, number_id, sid, NUMBER, acct.agent_id) for sid in sids],
    )
    assert gw.pool is not None
    batcher = StatusBatcher(gw.pool)
    updates = [(sid, status) for sid in sids for status in ("sent", "delivered", "sent")]
    random.Random(4).shuffle(updates)
    changed = await asyncio.gather(
        *(
            batcher.update("twilio", sid, status, "30003" if status == "delivered" else None)
            for sid, status in updates
        ),
        batcher.update("twilio", "SMnobody", "delivered", None),
    )
    assert changed[-1] is False  # no such outbound message
    rows = await conn.fetch("SELECT status, error_code FROM messages WHERE direction = 'outbound'")
    assert {(r["status"], r["error_code"]) for r in rows} == {("delivered", "30003")}


async def test_the_loop_lag_sees_a_blocked_loop() -> None:
    lag = LoopLag(shed_at_s=0.1, interval_s=0.01)
    lag.start()
    try:
        await asyncio.sleep(0.05)
        assert not lag.overloaded
        time.sleep(0.25)  # the loop is busy: every timer fires late
        await asyncio.sleep(0.005)
        assert lag.lag_s > 0.1 and lag.overloaded
        await asyncio.sleep(0.05)
        assert not lag.overloaded  # and it recovers as soon as the loop does
    finally:
        await lag.stop()


async def test_while_the_loop_is_behind_webhooks_get_503_before_they_are_read(
    gw: Gateway, conn: asyncpg.Connection
) -> None:
    await setup(conn, gw)
    assert gw.loop_lag is not None
    threshold, gw.loop_lag.shed_at_s = gw.loop_lag.shed_at_s, -1.0  # as if far behind
    try:
        status, body = await twilio_post(gw, twilio_params("shed-1"))
        telnyx_status, _ = await telnyx_post(gw, telnyx_event("tx-shed-1"))
    finally:
        gw.loop_lag.shed_at_s = threshold
    assert status == 503 and "redeliver" in body and telnyx_status == 503
    assert await conn.fetchval("SELECT count(*) FROM messages") == 0
    assert (await twilio_post(gw, twilio_params("shed-1")))[0] == 200  # the redelivery is taken


async def test_added_on_segments_extend_the_allowance_when_texts_are_charged(
    gw: Gateway, conn: asyncpg.Connection
) -> None:
    """Issue 15, item 6 (R9): 1 included + 2 added on = 3 segments before a
    text is over quota; the batched write charges each, the usage report flags
    the fourth."""
    acct, _, _ = await setup(conn, gw)  # the lead +15557000001 belongs to the owner (R1)
    await conn.execute(
        "UPDATE users SET included_segments = 1, addon_segments = 2 WHERE id = $1", acct.owner_id
    )
    for n in range(4):
        assert (await twilio_post(gw, twilio_params(f"quota-{n}", body="hi")))[0] == 200
    report = await usage_report(gw, conn, acct.id, acct.owner_id)
    assert [e["over_quota"] for e in report["entries"]] == [False, False, False, True]
    assert report["totals"]["text_segments"] == 4 and report["allowance"]["text_segments"] == 3
