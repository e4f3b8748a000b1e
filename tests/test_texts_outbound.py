"""Outbound texts over real HTTP to local stand-ins for the providers' APIs,
which speak their documented formats (issue 5): R10 sender choice, retries,
idempotency keys, failures, status callbacks."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from multidict import MultiDict
from twilio.request_validator import RequestValidator

from gateway import config
from gateway.config import OutboundSettings, TelnyxSettings, TwilioSettings
from gateway.server import Gateway
from gateway.store.api_keys import create_key
from tests import factories
from tests.conftest import settings_for
from tests.test_crm import Api

SID, TOKEN, TELNYX_KEY = "AC0123456789", "twilio-token-0123456789", "KEY0123"
PUBLIC = "https://gw.example.com"
COMPANY, PERSONAL, LEAD_PHONE = "+15550190000", "+15550190001", "+15557000001"


class FakeProviders:
    """Twilio's Messages API and Telnyx's /v2/messages, as documented."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail_first: list[int] = []  # statuses to answer before succeeding
        self.gate: asyncio.Event | None = None  # when set, Twilio answers only once it opens
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self.twilio)
        app.router.add_post("/v2/messages", self.telnyx)
        self.runner = web.AppRunner(app)

    async def start(self) -> str:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    def _maybe_fail(self) -> web.Response | None:
        if self.fail_first:
            status = self.fail_first.pop(0)
            return web.json_response({"message": "busy"}, status=status, headers={"Retry-After": "0"})
        return None

    async def twilio(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self.calls.append({"provider": "twilio", "auth": request.headers.get("Authorization"), **form})
        sid = f"SM{len(self.calls):032d}"
        if (failed := self._maybe_fail()) is not None:
            return failed
        if self.gate is not None:
            await self.gate.wait()
        if form.get("To") == "+15550000400":
            return web.json_response({"code": 21211, "message": "The 'To' number is not valid."}, status=400)
        if form.get("To") == "+15550000414":  # an id longer than any Twilio sends
            return web.json_response({"sid": "SM" + "9" * 300, "status": "queued"}, status=201)
        return web.json_response({"sid": sid, "status": "queued"}, status=201)

    async def telnyx(self, request: web.Request) -> web.Response:
        payload = await request.json()
        self.calls.append({"provider": "telnyx", "auth": request.headers.get("Authorization"), **payload})
        if (failed := self._maybe_fail()) is not None:
            return failed
        return web.json_response({"data": {"id": f"tx-out-{len(self.calls)}", "to": [{"status": "queued"}]}})


@pytest.fixture
async def fake() -> AsyncIterator[FakeProviders]:
    providers = FakeProviders()
    providers.base = await providers.start()  # type: ignore[attr-defined]
    try:
        yield providers
    finally:
        await providers.runner.cleanup()


@pytest.fixture
async def gw(db_dsn: str, fake: FakeProviders) -> AsyncIterator[Gateway]:
    s = settings_for(db_dsn)
    s = config.replace(
        s,
        http=config.replace(s.http, public_base_url=PUBLIC),
        twilio=TwilioSettings(auth_token=TOKEN, account_sid=SID, api_base_url=fake.base),  # type: ignore[attr-defined]
        telnyx=TelnyxSettings(api_key=TELNYX_KEY, api_base_url=fake.base),  # type: ignore[attr-defined]
        outbound=OutboundSettings(timeout_s=5, max_attempts=3, max_retry_after_s=1),
    )
    gateway = Gateway(s)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


async def world(gw: Gateway, conn: asyncpg.Connection) -> tuple[factories.Account, dict[str, Api], int]:
    acct = await factories.account(conn)
    await factories.number(conn, acct.id, COMPANY)
    personal = await factories.number(conn, acct.id, PERSONAL, "personal", owner_user_id=acct.owner_id)
    await conn.execute("UPDATE numbers SET provider = 'telnyx' WHERE id = $1", personal)
    lead = await factories.lead(conn, acct.id, acct.agent_id, LEAD_PHONE)
    nobody = await factories.user(conn, acct.id, package="none")
    apis = {
        "agent": Api(gw, await create_key(conn, acct.id, acct.agent_id)),
        "owner": Api(gw, await create_key(conn, acct.id, acct.owner_id)),
        "nobody": Api(gw, await create_key(conn, acct.id, nobody)),
    }
    assert gw.keeper is not None
    await gw.keeper.wait_until(lambda idx: bool(idx.leads_for(acct.id, LEAD_PHONE)))
    return acct, apis, lead


async def send(
    api: Api, payload: dict[str, Any], key: str | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {**api.headers, **({"Idempotency-Key": key} if key else {})}
    async with (
        aiohttp.ClientSession(headers=headers) as s,
        s.post(api.base + "/v1/messages", json=payload) as r,
    ):
        return r.status, await r.json(content_type=None), dict(r.headers)


async def test_r10_sends_from_the_right_number_and_records_it(
    gw: Gateway, conn: asyncpg.Connection, fake: FakeProviders
) -> None:
    acct, apis, lead = await world(gw, conn)
    status, body, _ = await send(apis["agent"], {"to": "(555) 700-0001", "body": "Hi Pat!"})
    assert status == 201, body
    call = fake.calls[-1]
    assert (call["provider"], call["From"], call["To"], call["Body"]) == (
        "twilio",
        COMPANY,
        LEAD_PHONE,
        "Hi Pat!",
    )
    assert call["auth"] == "Basic " + base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()
    assert call["StatusCallback"] == PUBLIC + "/v1/webhooks/twilio/status"
    assert body["status"] == "queued" and body["provider_message_id"].startswith("SM")
    timeline = await conn.fetchrow("SELECT lead_id, direction, channel, agent_id FROM timeline_events")
    assert tuple(timeline) == (lead, "outbound", "text", acct.agent_id)
    usage = await conn.fetchrow("SELECT user_id, quantity FROM usage_ledger")
    assert tuple(usage) == (acct.agent_id, 1)  # R9: the sender, by segments
    # The owner (upgraded, personal number on Telnyx): auto texts default to the personal number.
    status, body, _ = await send(apis["owner"], {"to": LEAD_PHONE, "body": "x", "kind": "auto"})
    assert status == 201 and fake.calls[-1]["provider"] == "telnyx" and fake.calls[-1]["from"] == PERSONAL
    assert fake.calls[-1]["auth"] == f"Bearer {TELNYX_KEY}"


async def test_r10_refusals(gw: Gateway, conn: asyncpg.Connection, fake: FakeProviders) -> None:
    acct, apis, _ = await world(gw, conn)
    cases = [
        (apis["agent"], {"to": LEAD_PHONE, "body": "x", "from": PERSONAL}, 403, "only by its owner"),
        (
            apis["agent"],
            {"to": LEAD_PHONE, "body": "x", "from": "+15559999999"},
            403,
            "not a number of this account",
        ),
        (apis["nobody"], {"to": LEAD_PHONE, "body": "x"}, 403, "no call/text package"),
        (apis["agent"], {"to": LEAD_PHONE, "body": "x", "kind": "auto", "from": COMPANY}, 422, "from"),
        (apis["agent"], {"to": "nope", "body": "x"}, 422, "to"),
        (apis["agent"], {"to": LEAD_PHONE, "body": ""}, 422, "body"),
    ]
    for api, payload, expected, words in cases:
        status, body, _ = await send(api, payload)
        assert status == expected and words in str(body), (payload, body)
    assert fake.calls == []
    await conn.execute("UPDATE accounts SET over_quota = 'block' WHERE id = $1", acct.id)
    await conn.execute("UPDATE users SET included_segments = 0 WHERE id = $1", acct.agent_id)
    status, body, _ = await send(apis["agent"], {"to": LEAD_PHONE, "body": "x"})
    assert status == 403 and "allowance" in body["detail"]


async def test_idempotency_key_never_sends_twice(
    gw: Gateway, conn: asyncpg.Connection, fake: FakeProviders
) -> None:
    _, apis, _ = await world(gw, conn)
    first = await send(apis["agent"], {"to": LEAD_PHONE, "body": "once"}, key="req-1")
    again = await send(apis["agent"], {"to": LEAD_PHONE, "body": "once"}, key="req-1")
    assert first[0] == 201 and again[0] == 200 and again[2].get("Idempotent-Replayed") == "true"
    assert first[1]["id"] == again[1]["id"] and len(fake.calls) == 1
    assert await conn.fetchval("SELECT count(*) FROM usage_ledger") == 1


async def test_idempotency_keys_belong_to_their_user_and_to_one_request(
    gw: Gateway, conn: asyncpg.Connection, fake: FakeProviders
) -> None:
    """Issue 12, item 6: a colleague reusing a key got another user's message
    back and their own text was silently not sent."""
    _, apis, _ = await world(gw, conn)
    mine = await send(apis["agent"], {"to": LEAD_PHONE, "body": "from the agent"}, key="req-1")
    theirs = await send(apis["owner"], {"to": LEAD_PHONE, "body": "from the owner"}, key="req-1")
    assert mine[0] == 201 and theirs[0] == 201 and mine[1]["id"] != theirs[1]["id"]
    assert [c.get("Body") or c.get("text") for c in fake.calls] == ["from the agent", "from the owner"]
    status, problem, _ = await send(apis["agent"], {"to": LEAD_PHONE, "body": "something else"}, key="req-1")
    assert status == 422 and "Idempotency-Key" in problem["detail"] + str(problem.get("field", ""))
    assert len(fake.calls) == 2  # refused, not sent, not replayed as if it were the first


async def test_retries_then_failures(gw: Gateway, conn: asyncpg.Connection, fake: FakeProviders) -> None:
    _, apis, _ = await world(gw, conn)
    fake.fail_first = [429, 503]
    status, body, _ = await send(apis["agent"], {"to": LEAD_PHONE, "body": "persist"})
    assert status == 201 and len(fake.calls) == 3  # 429, 503, then accepted
    fake.fail_first = [500, 500, 500]
    status, body, _ = await send(apis["agent"], {"to": LEAD_PHONE, "body": "give up"})
    assert status == 502 and body["message"]["status"] == "failed"
    status, body, _ = await send(apis["agent"], {"to": "+15550000400", "body": "bad number"})
    assert status == 422 and body["message"]["status"] == "failed" and "not valid" in body["detail"]
    assert await conn.fetchval("SELECT count(*) FROM usage_ledger") == 1  # failures cost nothing


async def test_status_callbacks_move_forward_only(
    gw: Gateway, conn: asyncpg.Connection, fake: FakeProviders
) -> None:
    _, apis, _ = await world(gw, conn)
    _, sent, _ = await send(apis["agent"], {"to": LEAD_PHONE, "body": "track me"})
    sid = sent["provider_message_id"]

    async def callback(message_status: str) -> int:
        params = [("MessageSid", sid), ("MessageStatus", message_status), ("AccountSid", SID)]
        url = PUBLIC + "/v1/webhooks/twilio/status"
        signature = RequestValidator(TOKEN).compute_signature(url, MultiDict(params))
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"http://127.0.0.1:{gw.http_port}/v1/webhooks/twilio/status",
                data=params,
                headers={"X-Twilio-Signature": signature},
            ) as r,
        ):
            return r.status

    assert await callback("delivered") == 200
    assert await callback("sent") == 200  # late and out of order: ignored
    assert (
        await conn.fetchval("SELECT status FROM messages WHERE provider_message_id = $1", sid) == "delivered"
    )


async def test_concurrent_sends_share_one_outcome_batch_and_each_is_recorded_once(
    gw: Gateway, conn: asyncpg.Connection, fake: FakeProviders
) -> None:
    """Issue 13, item 5: sends that finish together are recorded in one
    statement, each as alone: status and provider id, R2 timeline on every
    duplicate lead of the same agent, R9 usage for the sender; a failed send
    in the same batch is marked failed and costs nothing; a provider id that
    Postgres refuses fails only its own send, with a 502, not a 500."""
    acct, apis, lead = await world(gw, conn)
    twin = await factories.lead(conn, acct.id, acct.agent_id, LEAD_PHONE)  # R2: same agent, both get it
    assert gw.keeper is not None
    await gw.keeper.wait_until(lambda idx: len(idx.leads_for(acct.id, LEAD_PHONE)) == 2)
    fake.gate = asyncio.Event()
    sends = [send(apis["agent"], {"to": LEAD_PHONE, "body": f"open house {i}"}) for i in range(24)]
    sends.append(send(apis["agent"], {"to": "+15550000400", "body": "bad number"}))
    sends.append(send(apis["agent"], {"to": "+15550000414", "body": "odd answer"}))
    sending = asyncio.gather(*sends)
    while len(fake.calls) < len(sends):
        await asyncio.sleep(0.01)
    fake.gate.set()
    answers = await sending
    assert [a[0] for a in answers] == [201] * 24 + [422, 502], [a[1] for a in answers[-2:]]
    sent = {a[1]["id"] for a in answers[:24]}
    rows = await conn.fetch(
        "SELECT id, status, provider_message_id FROM messages WHERE id = ANY($1::bigint[])", list(sent)
    )
    assert {(r["status"], r["provider_message_id"].startswith("SM")) for r in rows} == {("queued", True)}
    assert len({r["provider_message_id"] for r in rows}) == 24
    timeline = await conn.fetch(
        "SELECT lead_id, count(*) AS n FROM timeline_events WHERE message_id = ANY($1::bigint[]) GROUP BY 1",
        list(sent),
    )
    assert {(r["lead_id"], r["n"]) for r in timeline} == {(lead, 24), (twin, 24)}
    usage = await conn.fetch("SELECT user_id, quantity, message_id FROM usage_ledger")
    assert sorted(r["message_id"] for r in usage) == sorted(sent)
    assert {(r["user_id"], r["quantity"]) for r in usage} == {(acct.agent_id, 1)}
    assert answers[24][1]["message"]["status"] == "failed" and "not valid" in answers[24][1]["detail"]
    assert "could not be recorded" in answers[25][1]["detail"]
    batches = gw.metrics.registry.get_sample_value("gateway_send_outcome_batch_size_count")
    recorded = gw.metrics.registry.get_sample_value("gateway_send_outcome_batch_size_sum")
    assert recorded == 26 and batches is not None and batches < 26
