"""Event webhooks to the CRM (issue 16, item 1): endpoints managed over real
HTTP, events queued in the transaction of the fact they report, delivered
to a local receiver and verified there with the ``standardwebhooks``
package, as a CRM would; retries, a dead endpoint, and SSRF refusals."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from gateway.domain.routing import Decision
from gateway.event_webhooks import TargetRefused, check_target
from gateway.server import Gateway
from gateway.store.api_keys import create_key
from gateway.store.calls import CallRecord, write_calls
from gateway.store.index_queries import fetch_number
from gateway.store.overflow import announce_over_limit
from tests import factories
from tests.test_crm import Api


class Receiver:
    """A CRM's webhook endpoint on loopback: answers ``status`` (or hangs)."""

    def __init__(self, answer: Callable[[int], int | None] = lambda _: 200) -> None:
        self.answer = answer
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.arrived = asyncio.Condition()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> Receiver:
        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            status = self.answer(len(self.received))
            async with self.arrived:
                self.received.append((dict(request.headers), body))
                self.arrived.notify_all()
            if status is None:
                await asyncio.sleep(3600)  # a dead endpoint: accepts, never answers
            return web.Response(status=status or 200)

        app = web.Application()
        app.router.add_post("/hook", handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)  # a hung handler must not hold teardown
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def wait_for(self, count: int, limit_s: float = 10.0) -> None:
        async with asyncio.timeout(limit_s), self.arrived:
            await self.arrived.wait_for(lambda: len(self.received) >= count)

    def verified(self, secret: str) -> list[dict[str, Any]]:
        """Each body, verified as a CRM would (raises on a bad signature)."""
        hook = Webhook(secret)
        return [hook.verify(body.decode(), headers) for headers, body in self.received]


def _call(number: Any, call_id: str, disposition: str, unknown_to: tuple[int, ...] = ()) -> CallRecord:
    at = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
    answered = at + timedelta(seconds=3) if disposition == "answered" else None
    decision = Decision("unknown_caller", "single", unknown_to, (), 20) if unknown_to else None
    return CallRecord(
        call_id,
        "inbound",
        number,
        "+15550140100",
        number.e164,
        at,
        at + timedelta(seconds=40),
        disposition,
        decision,
        answered_by=unknown_to[0] if answered and unknown_to else None,
        answered_at=answered if unknown_to else None,
    )


async def test_the_crm_gets_signed_events_for_calls_texts_and_unknown_callers(
    hooks_gw: Gateway, conn: asyncpg.Connection
) -> None:
    acct = await factories.account(conn)
    number = await fetch_number(conn, await factories.number(conn, acct.id, "+15550140000"))
    assert number is not None
    owner = Api(hooks_gw, await create_key(conn, acct.id, acct.owner_id))
    agent = Api(hooks_gw, await create_key(conn, acct.id, acct.agent_id))
    stranger = await factories.account(conn)
    async with Receiver() as crm, Receiver() as other_tenant:
        status, endpoint = await owner.call("POST", "/v1/webhook-endpoints", json={"url": crm.url})
        assert status == 201, endpoint
        secret = endpoint["secret"]
        assert secret.startswith("whsec_")
        status, listed = await owner.call("GET", "/v1/webhook-endpoints")
        assert [e["url"] for e in listed["endpoints"]] == [crm.url] and "secret" not in listed["endpoints"][0]
        assert (await agent.call("POST", "/v1/webhook-endpoints", json={"url": crm.url}))[0] == 403
        path = f"/v1/webhook-endpoints/{endpoint['id']}"
        assert (await owner.call("PATCH", path, json={}))[1]["enabled"] is True
        assert (await owner.call("PATCH", path, json={"enabled": False}))[1]["enabled"] is False
        assert (await owner.call("PATCH", path, json={"enabled": True}))[1]["enabled"] is True
        assert (await owner.call("PATCH", path, json={"url": "http://[::1"}))[0] == 422
        theirs = Api(hooks_gw, await create_key(conn, stranger.id, stranger.owner_id))
        status, _ = await theirs.call(
            "POST", "/v1/webhook-endpoints", json={"url": other_tenant.url, "event_types": ["text.received"]}
        )
        assert status == 201

        # A missed unknown caller: call.ended and notification.created, in the record's transaction.
        async with conn.transaction():
            await write_calls(conn, [_call(number, "w1@carrier", "no_answer", unknown_to=(acct.agent_id,))])
        await crm.wait_for(2)
        # The lead made from it, a text in, and its status moving on.
        notification = await conn.fetchval("SELECT id FROM notifications WHERE number_id = $1", number.id)
        status, _ = await agent.call(
            "POST", f"/v1/notifications/{notification}/actions", json={"action": "new_lead"}
        )
        assert status in (200, 201)
        message = await conn.fetchval(
            "INSERT INTO messages (account_id, number_id, direction, provider, provider_message_id,"
            " from_e164, to_e164, body, status) VALUES ($1, $2, 'inbound', 'twilio', 'SMw1', '+15550140100',"
            " $3, 'Is the house still for sale?', 'received') RETURNING id",
            acct.id,
            number.id,
            number.e164,
        )
        await conn.execute("UPDATE messages SET status = 'delivered' WHERE id = $1", message)
        await crm.wait_for(5)
        events = crm.verified(secret)
        by_type = {e["type"]: e for e in events}
        assert sorted(by_type) == [
            "call.ended",
            "lead.created_from_notification",
            "notification.created",
            "text.received",
            "text.status",
        ]
        call = by_type["call.ended"]["data"]
        assert (call["sip_call_id"], call["disposition"], call["number_id"]) == (
            "w1@carrier",
            "no_answer",
            number.id,
        )
        assert "steps" in call  # the routing explanation (R18)
        assert by_type["text.received"]["data"]["body"] == "Is the house still for sale?"
        assert by_type["text.status"]["data"]["status"] == "delivered"
        lead = by_type["lead.created_from_notification"]["data"]
        assert lead["lead_id"] == await conn.fetchval(
            "SELECT lead_id FROM notifications WHERE id = $1", notification
        )
        ids = [headers["webhook-id"] for headers, _ in crm.received]
        assert len(set(ids)) == len(ids)  # a stable, distinct id per event
        # A signature under another secret does not verify: the CRM would refuse it.
        with pytest.raises(WebhookVerificationError):
            crm.verified("whsec_" + "A" * 44)
        # Nothing of this account reached the other tenant.
        await asyncio.sleep(0.3)
        assert other_tenant.received == []

        # R7: a caller refused at the limit is one event, however many admins were told.
        await factories.user(conn, acct.id, role="admin")
        await announce_over_limit(conn, number, "+15550140199", "busy")
        await crm.wait_for(6)
        limit = crm.verified(secret)[5]
        assert limit["type"] == "call.limit_reached" and limit["data"]["caller"] == "+15550140199"
        await asyncio.sleep(0.3)
        assert len(crm.received) == 6

        # Deliveries are visible: status, attempts.
        status, seen = await owner.call("GET", f"/v1/webhook-endpoints/{endpoint['id']}/deliveries")
        assert status == 200 and len(seen["deliveries"]) == 6
        assert {d["status"] for d in seen["deliveries"]} == {"delivered"}
        assert (await theirs.call("GET", f"/v1/webhook-endpoints/{endpoint['id']}/deliveries"))[0] == 404


async def test_a_sip_call_is_started_answered_and_ended_for_the_crm(
    hooks_sip_gw: Gateway, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """call.started and call.answered come from the SIP core as the call goes
    (no table holds them), call.ended from its record: one call, one id in
    all three. An account with no endpoint costs the SIP side nothing."""
    from tests.sipp_tools import CARRIER_IP, PHONE_IP, start_sipp
    from tests.test_sip_calls import NUMBER, agent_number, sip_target

    acct, phone_port, number_id = await agent_number(hooks_sip_gw, conn)
    owner = Api(hooks_sip_gw, await create_key(conn, acct.id, acct.owner_id))
    async with Receiver() as crm:
        status, endpoint = await owner.call(
            "POST",
            "/v1/webhook-endpoints",
            json={"url": crm.url, "event_types": ["call.started", "call.answered", "call.ended"]},
        )
        assert status == 201
        agent = await start_sipp("agent", "uas_agent.xml", tmp_path, ip=PHONE_IP, port=phone_port)
        caller = await start_sipp(
            "caller",
            "uac_dialog.xml",
            tmp_path,
            ip=CARRIER_IP,
            remote=sip_target(hooks_sip_gw),
            service=NUMBER,
        )
        assert await caller.wait(20) == 0, caller.errors()
        assert await agent.wait(20) == 0, agent.errors()
        await crm.wait_for(3)
        events = crm.verified(endpoint["secret"])
    by_type = {e["type"]: e["data"] for e in events}  # at least once, in no promised order
    started, answered, ended = by_type["call.started"], by_type["call.answered"], by_type["call.ended"]
    assert started["sip_call_id"] == answered["sip_call_id"] == ended["sip_call_id"]
    assert (started["number_id"], started["direction"], started["callee"]) == (number_id, "inbound", NUMBER)
    assert "answered_at" not in started
    assert answered["answered_by"] == acct.agent_id == ended["answered_by"]
    assert len({headers["webhook-id"] for headers, _ in crm.received}) == 3


async def test_a_failed_delivery_is_retried_and_can_be_redelivered(
    hooks_gw: Gateway, conn: asyncpg.Connection
) -> None:
    acct = await factories.account(conn)
    number = await fetch_number(conn, await factories.number(conn, acct.id, "+15550141000"))
    owner = Api(hooks_gw, await create_key(conn, acct.id, acct.owner_id))
    async with Receiver(answer=lambda n: 503 if n == 0 else 200) as crm:
        endpoint = (await owner.call("POST", "/v1/webhook-endpoints", json={"url": crm.url}))[1]
        async with conn.transaction():
            await write_calls(conn, [_call(number, "r1@carrier", "answered")])
        await crm.wait_for(2, limit_s=15)  # 503, then the retry about 5 s later
        first, second = crm.received
        assert first[0]["webhook-id"] == second[0]["webhook-id"]  # the same event, for the CRM to dedupe
        deliveries = (await owner.call("GET", f"/v1/webhook-endpoints/{endpoint['id']}/deliveries"))[1]
        [delivery] = deliveries["deliveries"]
        assert (delivery["status"], delivery["attempts"], delivery["last_status"]) == ("delivered", 2, 200)
        status, _ = await owner.call("POST", f"/v1/webhook-deliveries/{delivery['id']}/redeliver")
        assert status == 202
        await crm.wait_for(3)
        assert len(crm.verified(endpoint["secret"])) == 3


async def test_a_dead_endpoint_does_not_hold_up_another(hooks_gw: Gateway, conn: asyncpg.Connection) -> None:
    acct = await factories.account(conn)
    number = await fetch_number(conn, await factories.number(conn, acct.id, "+15550142000"))
    owner = Api(hooks_gw, await create_key(conn, acct.id, acct.owner_id))
    async with Receiver(answer=lambda _: None) as dead, Receiver() as alive:
        await owner.call("POST", "/v1/webhook-endpoints", json={"url": dead.url})
        await owner.call("POST", "/v1/webhook-endpoints", json={"url": alive.url})
        async with conn.transaction():
            await write_calls(conn, [_call(number, f"d{i}@carrier", "answered") for i in range(20)])
        started = asyncio.get_running_loop().time()
        await alive.wait_for(20, limit_s=5)
        assert asyncio.get_running_loop().time() - started < 2.0  # the dead one's 2 s timeout never mattered
        await dead.wait_for(4)
        await asyncio.sleep(0.5)
        assert len(dead.received) == 4  # webhooks.per_endpoint: the rest wait in the queue, not in flight


async def test_endpoints_only_at_public_addresses(gateway: Gateway, conn: asyncpg.Connection) -> None:
    """SSRF: the default gateway refuses loopback, private and link-local
    targets, and URLs that are not plain http(s)."""
    for url in (
        "http://127.0.0.1:8080/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://localhost/hook",
        "ftp://example.com/hook",
        "https://user:pw@example.com/hook",
    ):
        with pytest.raises(TargetRefused):
            await check_target(url, allow_private=False)
    acct = await factories.account(conn)
    owner = Api(gateway, await create_key(conn, acct.id, acct.owner_id))
    status, body = await owner.call("POST", "/v1/webhook-endpoints", json={"url": "http://127.0.0.1:9/hook"})
    assert status == 422 and body["errors"][0]["field"] == "url", body
    status, body = await owner.call(
        "POST",
        "/v1/webhook-endpoints",
        json={"url": "https://crm.example/hook", "event_types": ["call.rang"]},
    )
    assert status == 422 and body["errors"][0]["field"].startswith("event_types"), body
