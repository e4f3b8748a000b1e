"""Inbound texts through real HTTP webhooks into real Postgres (issue 5):
signatures made by the providers' own tools, dedupe, routing, R9 segments,
503 while the database is down."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from multidict import MultiDict
from twilio.request_validator import RequestValidator

from gateway import config
from gateway.config import TelnyxSettings, TwilioSettings
from gateway.server import Gateway
from gateway.store.api_keys import create_key
from gateway.store.embedded import EmbeddedPostgres
from gateway.store.migrations import migrate
from tests import factories
from tests.conftest import settings_for

TOKEN = "0123456789abcdef0123456789abcdef"
PUBLIC = "https://gw.example.com"  # what Twilio sees, in front of a proxy
NUMBER = "+15550180000"
PRIVATE_KEY = Ed25519PrivateKey.generate()
PUBLIC_KEY = base64.b64encode(PRIVATE_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def text_settings(dsn: str):  # type: ignore[no-untyped-def]
    s = settings_for(dsn)
    return config.replace(
        s,
        http=config.replace(s.http, public_base_url=PUBLIC, max_body_bytes=20_000),
        twilio=TwilioSettings(auth_token=TOKEN),
        telnyx=TelnyxSettings(public_key=PUBLIC_KEY),
    )


@pytest.fixture
async def gw(db_dsn: str) -> AsyncIterator[Gateway]:
    gateway = Gateway(text_settings(db_dsn))
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


async def setup(conn: asyncpg.Connection, gateway: Gateway) -> tuple[factories.Account, int, int]:
    acct = await factories.account(conn)
    second = await factories.user(conn, acct.id)
    number_id = await factories.number(conn, acct.id, NUMBER)
    await conn.execute("UPDATE numbers SET unknown_route = 'ring_all' WHERE id = $1", number_id)
    await conn.executemany(
        "INSERT INTO number_route_targets (account_id, number_id, position, user_id) VALUES ($1, $2, $3, $4)",
        [(acct.id, number_id, 0, acct.agent_id), (acct.id, number_id, 1, second)],
    )
    lead = await factories.lead(conn, acct.id, acct.owner_id, "+15557000001")
    assert gateway.keeper is not None
    await gateway.keeper.wait_until(
        lambda idx: (
            (n := idx.number(NUMBER)) is not None
            and len(n.route_user_ids) == 2
            and bool(idx.leads_for(acct.id, "+15557000001"))
        )
    )
    return acct, second, lead


async def twilio_post(
    gateway: Gateway,
    params: list[tuple[str, str]],
    *,
    signature: str | None = None,
    signed_url: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str]:
    path = "/v1/webhooks/twilio/messages"
    if signature is None:
        signature = RequestValidator(TOKEN).compute_signature(signed_url or PUBLIC + path, MultiDict(params))
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"http://127.0.0.1:{gateway.http_port}{path}",
            data=urlencode(params),
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Twilio-Signature": signature,
                **(headers or {}),
            },
        ) as r,
    ):
        return r.status, await r.text()


def twilio_params(
    sid: str, sender: str = "+15557000001", body: str = "Is the house still for sale?", **extra: str
) -> list[tuple[str, str]]:
    sid = factories.twilio_sid(sid)
    return [
        ("MessageSid", sid),
        ("SmsSid", sid),
        ("From", sender),
        ("To", NUMBER),
        ("Body", body),
        ("NumMedia", "0"),
        *extra.items(),
    ]


async def test_twilio_text_from_a_lead_is_stored_routed_and_charged(
    gw: Gateway, conn: asyncpg.Connection
) -> None:
    acct, _, lead = await setup(conn, gw)
    status, body = await twilio_post(gw, twilio_params("SM0001", NumSegments="2"))
    assert status == 200 and body.endswith("<Response/>")
    msg = await conn.fetchrow(
        "SELECT * FROM messages WHERE provider_message_id = $1", factories.twilio_sid("SM0001")
    )
    assert (msg["user_id"], msg["status"], msg["segments"], msg["direction"]) == (
        acct.owner_id,
        "received",
        2,
        "inbound",
    )
    timeline = await conn.fetch("SELECT lead_id, channel, reason, message_id FROM timeline_events")
    assert [tuple(r) for r in timeline] == [(lead, "text", "existing_lead", msg["id"])]  # R1
    usage = await conn.fetch("SELECT user_id, kind, quantity FROM usage_ledger")
    assert [tuple(r) for r in usage] == [(acct.owner_id, "text_segments", 2)]  # R9: the user, not the number
    # Redelivery: acknowledged, nothing changes.
    assert (await twilio_post(gw, twilio_params("SM0001", NumSegments="2")))[0] == 200
    for table in ("messages", "timeline_events", "usage_ledger"):
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 1
    # Issue 13: the queue and its writers are visible, and idle again once the
    # writer has handed its connection back.
    for _ in range(50):
        _, metrics = await get_text(gw, "/metrics")
        if "\ngateway_text_writers 0.0" in metrics:
            break
        await asyncio.sleep(0.02)
    assert "\ngateway_text_writers 0.0" in metrics and "\ngateway_text_queue_depth 0.0" in metrics


async def test_concurrent_redeliveries_store_once(gw: Gateway, conn: asyncpg.Connection) -> None:
    await setup(conn, gw)
    results = await asyncio.gather(*(twilio_post(gw, twilio_params("SM-race")) for _ in range(8)))
    assert {status for status, _ in results} == {200}
    assert await conn.fetchval("SELECT count(*) FROM messages") == 1
    assert await conn.fetchval("SELECT count(*) FROM usage_ledger") == 1


async def test_unknown_sender_ring_all_delivers_to_all_and_charges_once(
    gw: Gateway, conn: asyncpg.Connection
) -> None:
    acct, second, _ = await setup(conn, gw)
    assert (await twilio_post(gw, twilio_params("SM0002", sender="+15557009999", body="€" * 81)))[0] == 200
    msg = await conn.fetchrow("SELECT user_id, segments FROM messages")
    assert msg["user_id"] == acct.agent_id and msg["segments"] == 2  # computed: 162 septets
    assert await conn.fetchval("SELECT count(*) FROM usage_ledger") == 1
    assert await conn.fetchval("SELECT count(*) FROM timeline_events") == 0  # no lead: no record
    # Nobody eligible: stored as undelivered, never lost (R6).
    await conn.execute(
        "UPDATE users SET package = 'none' WHERE id = ANY($1::bigint[])", [acct.agent_id, second]
    )
    assert gw.keeper is not None
    await gw.keeper.wait_until(lambda idx: (u := idx.user(second)) is not None and u.package == "none")
    assert (await twilio_post(gw, twilio_params("SM0003", sender="+15557009999")))[0] == 200
    assert await conn.fetchval(
        "SELECT status FROM messages WHERE provider_message_id = $1", factories.twilio_sid("SM0003")
    ) == ("undelivered_no_target")


async def test_twilio_signature_checks(gw: Gateway, conn: asyncpg.Connection) -> None:
    await setup(conn, gw)
    params = twilio_params("SM0004")
    # Signed over the URL the gateway itself sees (not the public one): refused.
    status, _ = await twilio_post(
        gw, params, signed_url=f"http://127.0.0.1:{gw.http_port}/v1/webhooks/twilio/messages"
    )
    assert status == 403
    assert (await twilio_post(gw, params, signature="bm90IGEgc2lnbmF0dXJl"))[0] == 403
    assert await conn.fetchval("SELECT count(*) FROM messages") == 0  # no trace...
    _, metrics = await get_text(gw, "/metrics")
    assert (
        'gateway_webhooks_rejected_total{provider="twilio",reason="bad_signature"} 2.0' in metrics
    )  # ...but a metric
    # Repeated parameter names are signed as Twilio signs them.
    repeated = [*params, ("Extra", "b"), ("Extra", "a")]
    assert (await twilio_post(gw, repeated))[0] == 200
    # SHA-256 accounts.
    settings = "key=webhooks_sharedkey_x,algorithm=HMAC_SHA256"
    signature = RequestValidator(TOKEN).compute_signature(
        PUBLIC + "/v1/webhooks/twilio/messages", MultiDict(twilio_params("SM0005")), "HMAC_SHA256"
    )
    status, _ = await twilio_post(
        gw,
        twilio_params("SM0005"),
        signature=signature,
        headers={"X-Twilio-Webhooks-Signature-Settings": settings},
    )
    assert status == 200


async def test_twilio_bad_input(gw: Gateway, conn: asyncpg.Connection) -> None:
    await setup(conn, gw)
    assert (await twilio_post(gw, [("From", "+15557000001"), ("To", NUMBER)]))[0] == 400  # no MessageSid
    assert (await twilio_post(gw, twilio_params("SM0006", sender="nobody")))[0] == 400
    status, body = await twilio_post(gw, [*twilio_params("SM0007")[:3], ("To", "+15550189999")])
    assert status == 404 and "+15550189999" in body
    status, _ = await twilio_post(gw, twilio_params("SM0008", body="x" * 30_000))
    assert status == 413
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"http://127.0.0.1:{gw.http_port}/v1/webhooks/twilio/messages", json={"MessageSid": "x"}) as r,
    ):
        assert r.status == 415


async def get_text(gateway: Gateway, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{gateway.http_port}{path}") as r:
        return r.status, await r.text()


async def telnyx_post(
    gateway: Gateway, event: dict | bytes, *, at: int | None = None, key: Ed25519PrivateKey = PRIVATE_KEY
) -> tuple[int, dict]:
    raw = event if isinstance(event, bytes) else json.dumps(event).encode()
    stamp = str(at if at is not None else int(time.time()))
    signature = base64.b64encode(key.sign(stamp.encode() + b"|" + raw)).decode()
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"http://127.0.0.1:{gateway.http_port}/v1/webhooks/telnyx/messages",
            data=raw,
            headers={
                "Content-Type": "application/json",
                "telnyx-signature-ed25519": signature,
                "telnyx-timestamp": stamp,
            },
        ) as r,
    ):
        return r.status, await r.json(content_type=None)


def telnyx_event(message_id: str, sender: str = "+15557000001", kind: str = "message.received") -> dict:
    return {
        "data": {
            "event_type": kind,
            "id": "ev-" + message_id,
            "payload": {
                "id": message_id,
                "from": {"phone_number": sender},
                "to": [{"phone_number": NUMBER}],
                "text": "hello 😀",
                "media": [{"url": "https://m.example/1.jpg", "content_type": "image/jpeg"}],
                "parts": 1,
            },
        }
    }


async def test_telnyx_inbound(gw: Gateway, conn: asyncpg.Connection) -> None:
    acct, _, _ = await setup(conn, gw)
    status, body = await telnyx_post(gw, telnyx_event("tx-1"))
    assert status == 200 and body["duplicate"] is False
    msg = await conn.fetchrow("SELECT provider, user_id, media, body FROM messages")
    assert (msg["provider"], msg["user_id"], msg["body"]) == ("telnyx", acct.owner_id, "hello 😀")
    assert json.loads(msg["media"]) == [{"url": "https://m.example/1.jpg", "content_type": "image/jpeg"}]
    status, body = await telnyx_post(gw, telnyx_event("tx-1"))
    assert status == 200 and body["duplicate"] is True
    assert (await telnyx_post(gw, telnyx_event("tx-2"), at=int(time.time()) - 301))[0] == 403  # replay window
    assert (await telnyx_post(gw, telnyx_event("tx-3"), key=Ed25519PrivateKey.generate()))[0] == 403
    # Delivery statuses go to outbound messages; an unknown id changes nothing.
    status_event = telnyx_event("tx-4", kind="message.sent")
    status_event["data"]["payload"]["to"][0]["status"] = "sent"
    assert (await telnyx_post(gw, status_event))[1] == {"updated": False}
    assert (await telnyx_post(gw, telnyx_event("tx-6", kind="message.other")))[1] == {
        "ignored": "message.other"
    }
    status, body = await telnyx_post(gw, b"{not json")
    assert status == 400 and body["errors"][0]["field"] == "data"
    event = telnyx_event("tx-5")
    event["data"]["payload"]["to"] = []
    assert (await telnyx_post(gw, event))[0] == 400
    assert await conn.fetchval("SELECT count(*) FROM messages") == 1


async def test_database_down_text_is_acknowledged_from_the_outbox_and_stored_once(
    private_cluster: EmbeddedPostgres,
) -> None:
    """Issue 7: with Postgres away the text is acknowledged once durable in the
    outbox, stored when the database returns, and a redelivery meanwhile
    changes nothing. With neither database nor outbox: 503, so Twilio redelivers."""
    setup_conn = await asyncpg.connect(private_cluster.dsn)
    await migrate(setup_conn)
    settings = text_settings(private_cluster.dsn)
    gateway = Gateway(settings)
    await gateway.start()
    try:
        await setup(setup_conn, gateway)
        await setup_conn.close()
        await asyncio.to_thread(private_cluster.stop_server)
        status, body = await twilio_post(gateway, twilio_params("SM-down"))
        assert status == 200 and body.endswith("<Response/>")
        assert (await twilio_post(gateway, twilio_params("SM-down")))[0] == 200  # a redelivery

        journal = Path(settings.outbox.dir) / "outbox.jsonl"
        journal.rename(journal.with_suffix(".saved"))
        journal.mkdir()  # unwritable even for root
        try:
            assert (await twilio_post(gateway, twilio_params("SM-nowhere")))[0] == 503
        finally:
            journal.rmdir()
            journal.with_suffix(".saved").rename(journal)

        await asyncio.to_thread(private_cluster.start_server)
        assert gateway.recorder is not None and await gateway.recorder.drain(20)
        check = await asyncpg.connect(private_cluster.dsn)
        try:
            assert (
                await check.fetchval(
                    "SELECT count(*) FROM messages WHERE provider_message_id = $1",
                    factories.twilio_sid("SM-down"),
                )
                == 1
            )
            assert await check.fetchval("SELECT count(*) FROM usage_ledger") == 1
        finally:
            await check.close()
    finally:
        await gateway.stop()


async def test_text_beyond_the_allowance_is_flagged_over_quota(gw: Gateway, conn: asyncpg.Connection) -> None:
    """R9: usage past the package's allowance is recorded, never refused, and
    the usage report flags it."""
    acct, _, _ = await setup(conn, gw)
    await conn.execute("UPDATE users SET included_segments = 2 WHERE id = $1", acct.owner_id)
    assert (await twilio_post(gw, twilio_params("SMq1", NumSegments="2")))[0] == 200
    assert (await twilio_post(gw, twilio_params("SMq2", NumSegments="1")))[0] == 200
    assert [r["quantity"] for r in await conn.fetch("SELECT quantity FROM usage_ledger ORDER BY id")] == [
        2,
        1,
    ]
    report = await usage_report(gw, conn, acct.id, acct.owner_id)
    assert [(e["quantity"], e["over_quota"]) for e in report["entries"]] == [(2, False), (1, True)]


async def usage_report(gw: Gateway, conn: asyncpg.Connection, account_id: int, user_id: int) -> Any:
    """The user's R9 usage report for this month, as the API gives it."""
    key = await create_key(conn, account_id, user_id)
    period = f"{datetime.now(UTC):%Y-%m}"
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as s,
        s.get(f"http://127.0.0.1:{gw.http_port}/v1/users/{user_id}/usage?period={period}") as r,
    ):
        return await r.json()
