"""Attacks and careless clients the gateway withstands (issue 12), each
against a running gateway. An operator can read this file as the list:

- failures are throttled, never an address's good traffic (also behind a
  proxy), and CORS preflights are never charged;
- a non-ASCII signature header is a 403, not a 500;
- a NUL in a text never turns into a 200 for a text that was not stored,
  and a value Postgres refuses is a 400, never a queued and lost text;
- the outbox, which holds callers' numbers and texts, is private;
- an event stream ends with its credential, and streams per key are capped;
- idempotency keys belong to their user and to one request;
- agents and admins stay inside their rights (an admin's own package, a
  colleague's lead, another account's users);
- a Twilio webhook re-cut at a field boundary is refused."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from multidict import MultiDict
from twilio.request_validator import RequestValidator

from gateway import config
from gateway.config import LimitsSettings
from gateway.http.limits import client_source
from gateway.server import Gateway
from gateway.store.api_keys import create_key
from gateway.store.crm import raise_unknown_caller_notifications
from tests import factories
from tests.test_admin_api import team
from tests.test_crm import event, http_setup, routed
from tests.test_texts_inbound import (
    PUBLIC,
    TOKEN,
    gw,
    setup,
    telnyx_event,
    telnyx_post,
    text_settings,
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
    assert [tuple(r) for r in bodies] == [(factories.twilio_sid("SMnul1"), "seeyou"), ("tx-nul1", "ab")]
    nul_sid = [("MessageSid", "SM\x00" + "0" * 31), *twilio_params("SMnul2")[1:]]
    assert (await twilio_post(gw, nul_sid))[0] == 400  # an identifier is not a text
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


async def tight(db_dsn: str, trusted_proxies: str = "") -> Gateway:
    s = text_settings(db_dsn)
    s = config.replace(
        s,
        http=config.replace(s.http, trusted_proxies=trusted_proxies),
        limits=LimitsSettings(failures_per_s=0.5, failure_burst=3),
    )
    gateway = Gateway(s)
    await gateway.start()
    return gateway


@pytest.fixture
async def throttled(db_dsn: str) -> AsyncIterator[Gateway]:
    gateway = await tight(db_dsn)
    try:
        yield gateway
    finally:
        await gateway.stop()


async def get(gateway: Gateway, path: str, key: str, **headers: str) -> int:
    async with (
        aiohttp.ClientSession() as s,
        s.get(
            f"http://127.0.0.1:{gateway.http_port}{path}",
            headers={"Authorization": f"Bearer {key}", **headers},
        ) as r,
    ):
        return r.status


async def test_an_attacker_at_the_same_address_never_locks_out_a_valid_key_or_webhook(
    throttled: Gateway, conn: asyncpg.Connection
) -> None:
    """Item 1: an attacker failing from the same address (a NAT, a load
    balancer) kept 40 of 40 legitimate requests refused with 429."""
    acct, _, _ = await setup(conn, throttled)
    key = await create_key(conn, acct.id, acct.owner_id)
    bad = "gk_000000000000_" + "x" * 43
    attacker, legit = [], []
    for _ in range(40):
        attacker.append(await get(throttled, "/v1/numbers", bad))
        legit.append(await get(throttled, "/v1/numbers", key))
    assert attacker[:3] == [401] * 3 and set(attacker[3:]) == {429}  # the failures are throttled
    assert legit == [200] * 40  # the good traffic is not
    assert (await twilio_post(throttled, twilio_params("SMthrottle1")))[0] == 200  # nor the provider's
    assert (await twilio_post(throttled, twilio_params("SMthrottle2"), signature="forged"))[0] == 429
    assert await get(throttled, "/v1/numbers", "") == 429  # nothing to check: refused before any work


async def test_cors_preflights_are_never_charged(throttled: Gateway) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(20):
            async with s.options(
                f"http://127.0.0.1:{throttled.http_port}/v1/numbers",
                headers={"Origin": "https://crm.example", "Access-Control-Request-Method": "GET"},
            ) as r:
                assert r.status not in (401, 429)
    assert await get(throttled, "/v1/numbers", "gk_000000000000_" + "y" * 43) == 401  # no failure counted


async def test_behind_a_trusted_proxy_failures_are_charged_to_the_forwarded_client(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    gateway = await tight(db_dsn, trusted_proxies="127.0.0.1/32")
    try:
        bad = "gk_000000000000_" + "z" * 43
        for _ in range(5):
            await get(gateway, "/v1/numbers", bad, **{"X-Forwarded-For": "198.51.100.7"})
        assert await get(gateway, "/v1/numbers", bad, **{"X-Forwarded-For": "198.51.100.7"}) == 429
        other = "gk_111111111111_" + "z" * 43
        assert await get(gateway, "/v1/numbers", other, **{"X-Forwarded-For": "203.0.113.5"}) == 401
    finally:
        await gateway.stop()


async def test_forwarded_headers_from_anyone_else_are_ignored(throttled: Gateway) -> None:
    """Without trusted proxies, a client cannot pick the address it is charged to."""
    bad = "gk_000000000000_" + "w" * 43
    for i in range(5):  # a new forged address every time: all charged to 127.0.0.1
        await get(throttled, "/v1/numbers", bad, **{"X-Forwarded-For": f"192.0.2.{i}"})
    other = "gk_222222222222_" + "w" * 43
    assert await get(throttled, "/v1/numbers", other, **{"X-Forwarded-For": "192.0.2.99"}) == 429


def test_client_source_believes_only_trusted_proxies() -> None:
    proxies = [ipaddress.ip_network("10.0.0.0/8")]
    assert client_source("10.0.0.2", "198.51.100.7, 10.0.0.9", None, proxies) == "198.51.100.7"
    assert client_source("203.0.113.1", "198.51.100.7", None, proxies) == "203.0.113.1"  # not a proxy
    assert client_source("10.0.0.2", "spoof, 198.51.100.7", None, proxies) == "10.0.0.2"  # malformed chain
    assert client_source("10.0.0.2", "1.1.1.1, 198.51.100.7", None, proxies) == "198.51.100.7"  # right-most
    assert client_source("10.0.0.2", None, 'for="[2001:db8::1]:4711";proto=https', proxies) == "2001:db8::1"
    assert client_source("10.0.0.2", None, "for=192.0.2.60:80, for=10.0.0.7", proxies) == "192.0.2.60"
    assert client_source("10.0.0.2", None, None, proxies) == "10.0.0.2"
    assert client_source("10.0.0.2", "198.51.100.7", None, []) == "10.0.0.2"
    assert TOKEN  # the webhooks above are signed with the test token


async def test_an_event_stream_ends_when_its_key_is_revoked_or_its_user_demoted(
    gw: Gateway, conn: asyncpg.Connection
) -> None:
    """Item 5: a stream checked its key once, at connect, and went on
    delivering texts and notifications after the key was revoked."""
    acct, _, _ = await setup(conn, gw)
    url = f"http://127.0.0.1:{gw.http_port}/v1/events"
    loop = asyncio.get_running_loop()

    async def lasts(key: str, change: str, *args: object) -> float:
        async with (
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session,
            session.get(url) as stream,
        ):
            assert (await stream.content.readline()).startswith(b": connected")
            await conn.execute(change, *args)
            started = loop.time()
            while await asyncio.wait_for(stream.content.readline(), 5):
                pass  # heartbeats, until the server ends the stream
            return loop.time() - started

    key = await create_key(conn, acct.id, acct.owner_id)
    prefix = key.split("_")[1]
    assert await lasts(key, "UPDATE api_keys SET revoked_at = now() WHERE prefix = $1", prefix) < 3
    manager = await create_key(conn, acct.id, acct.owner_id)
    await conn.execute("UPDATE users SET role = 'owner' WHERE id = $1", acct.owner_id)
    assert await lasts(manager, "UPDATE users SET role = 'admin' WHERE id = $1", acct.owner_id) < 3


async def test_event_streams_per_key_are_capped(gw: Gateway, conn: asyncpg.Connection) -> None:
    acct, _, _ = await setup(conn, gw)
    key = await create_key(conn, acct.id, acct.agent_id)
    url = f"http://127.0.0.1:{gw.http_port}/v1/events"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        streams = [await session.get(url) for _ in range(5)]
        try:
            assert [s.status for s in streams] == [200] * 5
            async with session.get(url) as sixth:
                assert sixth.status == 429 and sixth.headers["Retry-After"]
        finally:
            for stream in streams:
                stream.close()
        await asyncio.sleep(1.5)  # the streams notice within a second
        async with session.get(url) as again:  # closed streams give their place back
            assert again.status == 200


async def test_an_admin_cannot_raise_their_own_package_or_allowances(
    gateway: Gateway, conn: asyncpg.Connection
) -> None:
    """Item 7: the owner pays for packages; an admin raising their own is charging the owner."""
    t = await team(gateway, conn)
    admin, owner = t.apis["admin"], t.apis["owner"]
    for change in ({"package": "upgraded"}, {"included_minutes": 100000}):
        status, body = await admin.call("PATCH", f"/v1/users/{t.ids['admin']}", json=change)
        assert status == 403 and "only the owner" in body["detail"], (change, body)
    assert (await admin.call("PATCH", f"/v1/users/{t.ids['admin']}", json={"name": "Alex"}))[0] == 200
    assert (await owner.call("PATCH", f"/v1/users/{t.ids['admin']}", json={"package": "upgraded"}))[0] == 200
    assert (await owner.call("PATCH", f"/v1/users/{t.ids['owner']}", json={"package": "standard"}))[0] == 200


async def test_an_agent_cannot_settle_a_notification_into_a_colleagues_lead(
    gateway: Gateway, conn: asyncpg.Connection
) -> None:
    """Item 7: POST /v1/leads refused it; the notification action did not."""
    acct, _, _owner, agent, _agent2 = await http_setup(gateway, conn)
    number, decision = await routed(gateway, "+15550109999", "+15557001234")
    await raise_unknown_caller_notifications(conn, event(number, "call:gap-1"), decision)
    _, body = await agent.call("GET", f"/v1/users/{acct.agent_id}/notifications?state=open")
    (note,) = body["notifications"]
    colleague = await factories.user(conn, acct.id)
    status, body = await agent.call(
        "POST",
        f"/v1/notifications/{note['id']}/actions",
        json={"action": "new_lead", "primary_agent_id": colleague},
    )
    assert status == 403
    assert await conn.fetchval("SELECT count(*) FROM leads WHERE primary_agent_id = $1", colleague) == 0
    status, _ = await agent.call(
        "POST", f"/v1/notifications/{note['id']}/actions", json={"action": "new_lead"}
    )
    assert status == 201  # for themselves, as POST /v1/leads allows


async def test_a_purchase_answers_another_accounts_user_like_a_missing_one(
    gateway: Gateway, conn: asyncpg.Connection
) -> None:
    """Item 7: the answer told whether a user id existed in another account."""
    t = await team(gateway, conn)
    await conn.execute("UPDATE accounts SET plan = 'enterprise' WHERE id = $1", t.acct.id)
    stranger = (await factories.account(conn)).owner_id  # an upgraded user of another account
    answers = []
    for user_id in (stranger, 987654321):
        order = {"kind": "personal", "owner_user_id": user_id}
        answers.append(await t.apis["owner"].call("POST", "/v1/numbers/purchase", json=order))
    assert answers[0] == answers[1] and answers[0][0] == 422
    assert answers[0][1]["errors"][0]["field"] == "owner_user_id"


async def test_a_twilio_webhook_recut_at_a_field_boundary_is_refused(
    gw: Gateway, conn: asyncpg.Connection
) -> None:
    """Item 8: Twilio signs names and values run together, so a captured
    webhook re-cut at a boundary still verifies, and was stored as a new text."""
    await setup(conn, gw)
    original = twilio_params("SMcaptured")
    url = PUBLIC + "/v1/webhooks/twilio/messages"
    signature = RequestValidator(TOKEN).compute_signature(url, MultiDict(original))
    assert (await twilio_post(gw, original, signature=signature))[0] == 200
    fields = dict(original)
    sid = fields["MessageSid"]
    others = [(k, v) for k, v in original if k not in ("MessageSid", "NumMedia", "SmsSid")]
    recuts = [
        # MessageSid swallows the next field: a 'new' message id.
        [("MessageSid", sid + "NumMedia0"), ("SmsSid", sid), *others],
        # A merged name carries the next field's value.
        [("MessageSid", sid), ("NumMedia0SmsSid", sid), *others],
    ]
    for params in recuts:
        assert RequestValidator(TOKEN).validate(url, MultiDict(params), signature)  # the attack is real
        status, body = await twilio_post(gw, params, signature=signature)
        assert status == 400, (params, body)
    assert await conn.fetchval("SELECT count(*) FROM messages") == 1


async def test_deep_json_huge_integers_and_long_ids_are_400_not_500(
    gw: Gateway, conn: asyncpg.Connection
) -> None:
    """Item 4, in part: input Python itself refuses to parse."""
    acct, _, _ = await setup(conn, gw)
    key = await create_key(conn, acct.id, acct.owner_id)
    base = f"http://127.0.0.1:{gw.http_port}"
    deep = b"[" * 5000 + b"]" * 5000  # past the parser's recursion limit, under the body limit
    huge = b'{"name": "x", "office_id": ' + b"9" * 5000 + b"}"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as s:
        for raw in (deep, huge):
            async with s.post(
                base + "/v1/offices", data=raw, headers={"Content-Type": "application/json"}
            ) as r:
                body = await r.json(content_type=None)
                assert r.status == 400 and body["errors"][0]["field"] == "body", body
        async with s.get(base + "/v1/leads/" + "9" * 5000) as r:
            assert r.status == 400 and (await r.json(content_type=None))["errors"][0]["field"] == "lead_id"
    status, body = await telnyx_post(gw, deep)  # signed, then refused as data
    assert status == 400 and body["errors"][0]["field"] == "data"


async def test_hostile_field_values_are_4xx_naming_the_field(gw: Gateway, conn: asyncpg.Connection) -> None:
    """Item 4, the rest: values Python holds but Postgres refuses (NUL, dates
    whose UTC conversion overflows, integers past bigint), digit-like Unicode
    where an integer goes, and a CSV field past the csv module's limit."""
    acct, _, _ = await setup(conn, gw)
    number_id = await conn.fetchval("SELECT id FROM numbers WHERE account_id = $1", acct.id)
    key = await create_key(conn, acct.id, acct.owner_id)
    base = f"http://127.0.0.1:{gw.http_port}"
    lead = {"source": "Zillow", "phones": ["+15557000777"]}
    sent: list[tuple[str, str, dict[str, object], str]] = [
        ("POST", "/v1/offices", {"name": "North\x00"}, "name"),
        ("POST", "/v1/leads", {**lead, "name": "A\x00"}, "name"),
        ("POST", "/v1/leads", {**lead, "tags": ["hot\x00"]}, "tags"),
        ("POST", f"/v1/users/{acct.owner_id}/api-keys", {"label": "ci\x00"}, "label"),
        ("PATCH", f"/v1/numbers/{number_id}", {"description": "main\x00"}, "description"),
        ("PATCH", f"/v1/users/{acct.owner_id}", {"name": "Ann\x00"}, "name"),
        ("POST", "/v1/leads", {**lead, "created_at": "0001-01-01T00:00+14:00"}, "created_at"),
        ("POST", "/v1/leads", {**lead, "created_at": "9999-12-31T23:59:59-14:00"}, "created_at"),
    ]
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as s:
        for method, path, payload, field in sent:
            async with s.request(method, base + path, json=payload) as r:
                body = await r.json(content_type=None)
                assert r.status in (400, 422), (path, payload, r.status, body)
                assert field in {e["field"] for e in body["errors"]}, (path, payload, body)
        header = "source,primary_agent_id,phones,name,created_at\r\n"
        agent = acct.agent_id
        csv_cases = [
            (f"Zillow,{'9' * 5000},+15557000778,,\r\n", "primary_agent_id"),
            (f"Zillow,{agent}²,+15557000778,,\r\n", "primary_agent_id"),
            (f"Zillow,{agent + 2**64},+15557000778,,\r\n", "primary_agent_id"),
            (f"Zil\x00low,{agent},+15557000778,,\r\n", "source"),
            (f"Zillow,{agent},+15557000778,A\x00,\r\n", "name"),
            (f"Zillow,{agent},+15557000778,,0001-01-01T00:00+14:00\r\n", "created_at"),
            (f'Zillow,{agent},+15557000778,"{"x" * 200_000}",\r\n', "body"),
        ]
        for row, field in csv_cases:
            async with s.post(
                base + "/v1/leads:import", data=(header + row).encode(), headers={"Content-Type": "text/csv"}
            ) as r:
                body = await r.json(content_type=None)
                assert r.status in (400, 422), (row[:80], r.status, body)
                assert field in {e["field"] for e in body["errors"]}, (row[:80], body)
        ndjson = b'{"source": "Z", "primary_agent_id": ' + b"9" * 5000 + b', "phones": ["+15557000778"]}\n'
        async with s.post(
            base + "/v1/leads:import", data=ndjson, headers={"Content-Type": "application/x-ndjson"}
        ) as r:
            body = await r.json(content_type=None)
            assert r.status == 422 and body["errors"][0]["field"] == "row", body
    for name, value in (("NumMedia", "²"), ("NumMedia", "9" * 5000), ("NumSegments", "9" * 30)):
        status, text = await twilio_post(gw, twilio_params(f"odd-{name}-{len(value)}", **{name: value}))
        assert status == 400 and name in text, (name, value[:10], status, text)
    assert await conn.fetchval("SELECT count(*) FROM leads") == 1  # only setup's
    assert await conn.fetchval("SELECT count(*) FROM messages") == 0


async def test_a_sip_username_taken_elsewhere_is_409_without_naming_the_account(
    gw: Gateway, conn: asyncpg.Connection
) -> None:
    """Item 4: digest looks a device up by username alone in one realm, so a
    username stays unique across the gateway; a clash is 409, the same words
    whichever account holds it."""
    mine = await factories.account(conn)
    theirs = await factories.account(conn)
    key = await create_key(conn, mine.id, mine.owner_id)
    url = f"http://127.0.0.1:{gw.http_port}/v1/users/{{}}"
    credentials = {"sip_username": "front-desk", "sip_password": "correct horse battery"}
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as s:
        other_key = await create_key(conn, theirs.id, theirs.owner_id)
        async with s.patch(
            url.format(theirs.agent_id), json=credentials, headers={"Authorization": f"Bearer {other_key}"}
        ) as r:
            assert r.status == 200, await r.text()
        answers = []
        for username in ("FRONT-DESK", "front-desk"):
            clash = {**credentials, "sip_username": username}
            async with s.patch(url.format(mine.agent_id), json=clash) as r:
                body = await r.json(content_type=None)
                assert r.status == 409 and body["errors"][0]["field"] == "sip_username", body
                answers.append(body)
        assert str(theirs.id) not in json.dumps(answers) and answers[0] == answers[1]


async def test_the_api_answers_as_its_document_says(gw: Gateway, conn: asyncpg.Connection) -> None:
    """Item 4's conformance findings: a literal path beside an ``{id}`` answers
    405 to other methods, and a 204 promises no body."""
    acct = await factories.account(conn)
    key = await create_key(conn, acct.id, acct.owner_id)
    base = f"http://127.0.0.1:{gw.http_port}"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as s:
        for method in ("GET", "PATCH", "DELETE"):
            async with s.request(method, base + "/v1/numbers/purchase") as r:
                assert r.status == 405 and r.headers["Allow"] == "POST", (method, r.status)
        async with s.get(base + "/v1/numbers/abc") as r:
            body = await r.json(content_type=None)
            assert r.status == 400 and body["errors"][0]["field"] == "number_id"
        async with s.get(base + "/openapi.json") as r:
            document = await r.json()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if "204" in operation["responses"]:
                assert "content" not in operation["responses"]["204"], (method, path)
            if "{" in path:
                assert {"400", "404"} <= set(operation["responses"]), (method, path)
