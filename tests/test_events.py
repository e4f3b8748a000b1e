"""GET /v1/events: texts and notifications reach agents live, and a reconnect
with Last-Event-ID gets exactly what it missed (issue 5)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import asyncpg

from gateway.domain.routing import route
from gateway.server import Gateway
from gateway.store.api_keys import create_key
from gateway.store.crm import raise_unknown_caller_notifications
from tests.test_crm import CALLER
from tests.test_crm import event as crm_event
from tests.test_texts_inbound import NUMBER, gw, setup, twilio_params, twilio_post  # noqa: F401 - fixture


async def read_events(
    response: aiohttp.ClientResponse, count: int, limit_s: float = 10
) -> list[dict[str, Any]]:
    """The next ``count`` events (comments skipped)."""
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    async with asyncio.timeout(limit_s):
        while len(events) < count:
            line = (await response.content.readline()).decode().rstrip("\n")
            if line.startswith(":"):
                continue
            if not line:
                if current:
                    events.append(current)
                current = {}
                continue
            name, _, value = line.partition(": ")
            current[name] = json.loads(value) if name == "data" else value
    return events


async def test_live_events_and_resume_after_reconnect(gw: Gateway, conn: asyncpg.Connection) -> None:  # noqa: F811
    acct, second, _ = await setup(conn, gw)
    key = await create_key(conn, acct.id, acct.agent_id)
    url = f"http://127.0.0.1:{gw.http_port}/v1/events"
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.get(url) as stream:
            assert stream.status == 200 and stream.headers["Content-Type"].startswith("text/event-stream")
            assert (await stream.content.readline()).startswith(b": connected")
            # An unknown sender on a ring_all number: both agents get the text live.
            assert (await twilio_post(gw, twilio_params("SM-live", sender="+15557009999", body="first")))[
                0
            ] == 200
            first, raised = await read_events(stream, 2)
            assert first["event"] == "text" and first["data"]["body"] == "first"
            assert first["data"]["from"] == "+15557009999" and first["data"]["to"] == NUMBER
            # ... then the R8 notification the unknown texter raised (issue 15, item 2).
            assert raised["event"] == "notification" and raised["data"]["caller_e164"] == "+15557009999"
        # Disconnected: this one is missed, and must arrive on reconnect.
        assert (await twilio_post(gw, twilio_params("SM-missed", sender="+15557009999", body="second")))[
            0
        ] == 200
        async with session.get(url, headers={"Last-Event-ID": raised["id"]}) as stream:
            (missed,) = await read_events(stream, 1)  # the same texter: no second notification
            assert missed["data"]["body"] == "second" and int(missed["id"]) > int(first["id"])
            # Notifications (R8) come on the same stream.
            assert gw.keeper is not None
            number = gw.keeper.index.number(NUMBER)
            assert number is not None
            decision = route(gw.keeper.index, number, "+15557008888")
            await raise_unknown_caller_notifications(conn, crm_event(number, "call:sse-1"), decision)
            (note,) = await read_events(stream, 1)
            assert note["event"] == "notification" and note["data"]["caller_e164"] == CALLER
        async with session.get(url + "?last_event_id=abc") as bad:
            assert bad.status == 400
    async with aiohttp.ClientSession() as anonymous, anonymous.get(url) as refused:
        assert refused.status == 401
    # The second agent got the blast too, from the start of their stream.
    key2 = await create_key(conn, acct.id, second)
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {key2}"}) as session,
        session.get(url) as s,
    ):
        events = await read_events(s, 3)
        assert [e["event"] for e in events] == ["text", "notification", "text"]
        assert [e["data"].get("body") for e in events] == ["first", None, "second"]
