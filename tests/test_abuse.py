"""Attacks and careless clients the gateway withstands (issue 12), each
against a running gateway. An operator can read this file as the list.

So far: a non-ASCII signature header is a 403 (it was a 500, untouched by
the failure throttle); a NUL in a text never turns into a 200 for a text
that was not stored; a value Postgres refuses is a 400, never a queued and
then lost text; the outbox, which holds callers' numbers and texts, is
private to the gateway's user."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import asyncpg

from gateway.server import Gateway
from tests.test_texts_inbound import (
    gw,
    setup,
    telnyx_event,
    telnyx_post,
    twilio_params,
    twilio_post,
)

__all__ = ["gw"]


async def raw_http(port: int, head: bytes, body: bytes) -> int:
    """Send bytes as they are (a header no HTTP client would let through)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    await writer.drain()
    status = int((await asyncio.wait_for(reader.readline(), 5)).split()[1])
    writer.close()
    return status


async def test_a_non_ascii_twilio_signature_is_403_not_500(gw: Gateway, conn: asyncpg.Connection) -> None:
    await setup(conn, gw)
    assert gw.http_port is not None
    head = (
        b"POST /v1/webhooks/twilio/messages HTTP/1.1\r\nHost: gw.example.com\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nX-Twilio-Signature: \xc3\xa9t\xc3\xa9==\r\n"
    )
    assert await raw_http(gw.http_port, head, b"MessageSid=SM1&From=%2B15557000001") == 403
    assert await conn.fetchval("SELECT count(*) FROM messages") == 0


async def test_a_nul_in_a_text_body_is_dropped_and_the_text_stored(
    gw: Gateway,
    conn: asyncpg.Connection,
) -> None:
    """Twilio answered 200 and Telnyx `message_id: 0` for texts never stored."""
    await setup(conn, gw)
    status, _ = await twilio_post(gw, twilio_params("SMnul1", body="see\x00you"))
    assert status == 200
    status, reply = await telnyx_post(gw, {**telnyx_event("tx-nul1"), "data": {
        **telnyx_event("tx-nul1")["data"],
        "payload": {**telnyx_event("tx-nul1")["data"]["payload"], "text": "a\x00b"},
    }})  # fmt: skip
    assert status == 200 and reply["message_id"] > 0
    bodies = await conn.fetch("SELECT provider_message_id, body FROM messages ORDER BY id")
    assert [tuple(r) for r in bodies] == [("SMnul1", "seeyou"), ("tx-nul1", "ab")]
    assert (await twilio_post(gw, twilio_params("SM\x00x")))[0] == 400  # an identifier is not a text
    assert gw.recorder is not None and gw.recorder.backlog() == 0


async def test_a_value_postgres_refuses_is_400_and_never_reaches_the_outbox(
    gw: Gateway,
    conn: asyncpg.Connection,
) -> None:
    """A data error is not an outage: a value the database refuses (here a
    lone surrogate, which JSON allows and UTF-8 does not) was taken for
    'database down', queued in the outbox, acknowledged and then lost."""
    await setup(conn, gw)
    event = telnyx_event("tx-bad1")
    event["data"]["payload"]["text"] = "hello \ud800"  # json.dumps writes it as \\ud800
    raw = json.dumps(event).encode()
    status, body = await telnyx_post(gw, raw)
    assert status == 400 and "cannot be stored" in body["detail"]
    assert await conn.fetchval("SELECT count(*) FROM messages") == 0
    assert gw.recorder is not None and gw.recorder.backlog() == 0
    assert (await telnyx_post(gw, telnyx_event("tx-good1")))[0] == 200  # and it serves on


async def test_the_outbox_is_private_to_the_gateway(gw: Gateway) -> None:
    """It holds callers' numbers and text bodies: 0700 directory, 0600 files."""
    outbox = Path(gw.settings.outbox.dir)
    assert stat.S_IMODE(outbox.stat().st_mode) == 0o700
    for name in ("outbox.jsonl", "outbox.offset"):
        assert stat.S_IMODE((outbox / name).stat().st_mode) == 0o600, name
