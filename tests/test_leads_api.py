"""Leads over real HTTP: CRUD with permissions, search, and bulk import (issue 4)."""

from __future__ import annotations

import json

import aiohttp
import asyncpg

from gateway import config
from gateway.config import HttpSettings
from gateway.server import Gateway
from gateway.store.api_keys import create_key
from tests import factories
from tests.conftest import settings_for
from tests.test_admin_api import team
from tests.test_crm import Api


async def post_raw(api: Api, path: str, data: bytes, content_type: str) -> tuple[int, dict]:
    headers = {**api.headers, "Content-Type": content_type}
    async with aiohttp.ClientSession() as s, s.post(api.base + path, data=data, headers=headers) as r:
        return r.status, await r.json(content_type=None)


async def test_lead_crud_and_permissions(gateway: Gateway, conn: asyncpg.Connection) -> None:
    t = await team(gateway, conn)
    agent, admin = t.apis["agent"], t.apis["admin"]
    status, lead = await agent.call(
        "POST",
        "/v1/leads",
        json={
            "name": "Pat",
            "source": "Zillow",
            "phones": ["(555) 017-0000", "+15550170000", "+442071234567"],
            "tags": ["hot", "hot"],
        },
    )
    assert status == 201, lead
    assert (lead["primary_agent_id"], lead["phones"], lead["tags"]) == (
        t.ids["agent"],
        ["+15550170000", "+442071234567"],
        ["hot"],
    )
    # An agent cannot create a lead for, or hand a lead to, someone else.
    other = {"source": "Web", "phones": ["+15550170001"], "primary_agent_id": t.ids["agent2"]}
    assert (await agent.call("POST", "/v1/leads", json=other))[0] == 403
    assert (await admin.call("POST", "/v1/leads", json=other))[0] == 201
    path = f"/v1/leads/{lead['id']}"
    assert (await agent.call("PATCH", path, json={"primary_agent_id": t.ids["agent2"]}))[0] == 403
    assert (await t.apis["agent2"].call("PATCH", path, json={"name": "mine now"}))[0] == 403
    status, patched = await agent.call("PATCH", path, json={"phones": ["+15550170009"], "tags": []})
    assert status == 200 and patched["phones"] == ["+15550170009"] and patched["tags"] == []
    status, body = await agent.call("PATCH", path, json={"source": None})
    assert status == 422 and body["errors"][0]["field"] == "source"
    # Search by phone, in any format.
    status, found = await agent.call("GET", "/v1/leads?phone=555-017-0009")
    assert status == 200 and [x["id"] for x in found["leads"]] == [lead["id"]]
    # Routing sees the change at once.
    assert gateway.keeper is not None
    await gateway.keeper.wait_until(lambda idx: bool(idx.leads_for(t.acct.id, "+15550170009")))
    assert (await agent.call("DELETE", path))[0] == 403
    assert (await admin.call("DELETE", path))[0] == 204
    assert (await admin.call("GET", path))[0] == 404


async def test_lead_validation_and_scoping(gateway: Gateway, conn: asyncpg.Connection) -> None:
    t = await team(gateway, conn)
    stranger = await factories.account(conn)
    outsider = Api(gateway, await create_key(conn, stranger.id, stranger.owner_id))
    owner = t.apis["owner"]
    for payload, field in [
        ({"source": "W", "phones": []}, "phones"),
        ({"source": "W", "phones": ["not a phone"]}, "phones.0"),
        ({"source": "", "phones": ["+15550170002"]}, "source"),
        ({"phones": ["+15550170002"]}, "source"),
        (
            {"source": "W", "phones": ["+15550170002"], "primary_agent_id": stranger.agent_id},
            "primary_agent_id",
        ),
        ({"source": "W", "phones": ["+15550170002"], "created_at": "yesterday"}, "created_at"),
        ({"source": "W", "phones": ["+15550170002"], "tags": ["x" * 201]}, "tags.0"),
    ]:
        status, body = await owner.call("POST", "/v1/leads", json=payload)
        assert status == 422 and body["errors"][0]["field"] == field, (payload, body)
    _, lead = await owner.call("POST", "/v1/leads", json={"source": "W", "phones": ["+15550170003"]})
    for method in ("GET", "DELETE"):
        assert (await outsider.call(method, f"/v1/leads/{lead['id']}"))[0] == 404
    assert (await outsider.call("PATCH", f"/v1/leads/{lead['id']}", json={"name": "x"}))[0] == 404
    assert (await outsider.call("GET", "/v1/leads?phone=+15550170003"))[1]["leads"] == []


async def test_import_csv_and_ndjson_all_or_nothing(gateway: Gateway, conn: asyncpg.Connection) -> None:
    t = await team(gateway, conn)
    admin = t.apis["admin"]
    agent = t.ids["agent"]
    lines = ["name,primary_agent_id,source,phones,tags,created_at"]
    lines += [
        f"Lead {i},{agent},Import,+1555018{i:04d};(555) 019-{i:04d},a;b,2026-01-01T00:00:00Z"
        for i in range(500)
    ]
    status, body = await post_raw(admin, "/v1/leads:import", "\n".join(lines).encode(), "text/csv")
    assert status == 201 and body["imported"] == 500, body
    assert await conn.fetchval("SELECT count(*) FROM lead_phones WHERE account_id = $1", t.acct.id) == 1000
    assert await conn.fetchval("SELECT count(*) FROM lead_tags WHERE account_id = $1", t.acct.id) == 1000
    assert gateway.keeper is not None
    await gateway.keeper.wait_until(
        lambda idx: len(idx.leads_for(t.acct.id, "+15550190499")) == 1, limit_s=10
    )

    ndjson = "\n".join(
        json.dumps({"primary_agent_id": agent, "source": "Nd", "phones": [f"+1555020{i:04d}"]})
        for i in range(10)
    )
    status, body = await post_raw(admin, "/v1/leads:import", ndjson.encode(), "application/x-ndjson")
    assert status == 201 and body["imported"] == 10

    before = await conn.fetchval("SELECT count(*) FROM leads")
    bad = "\n".join(
        [
            "primary_agent_id,source,phones",
            f"{agent},Ok,+15550210000",
            f"{agent},,+15550210001",  # no source
            "999999,Ok,+15550210002",  # not a user of the account
            f"{agent},Ok,call me",  # not a phone
            f"{agent},Ok,",  # no phone
        ]
    )
    status, body = await post_raw(admin, "/v1/leads:import", bad.encode(), "text/csv")
    assert status == 422 and body["error_count"] == 4
    assert [(e["row"], e["field"]) for e in body["errors"]] == [
        (2, "source"),
        (3, "primary_agent_id"),
        (4, "phones"),
        (5, "phones"),
    ]
    assert await conn.fetchval("SELECT count(*) FROM leads") == before  # nothing written

    for data, content_type, status_expected, field in [
        (b"name,source\nx,y", "text/csv", 400, "header"),
        (b"\xff\xfe\x00", "text/csv", 400, "body"),
        (b"{}", "application/json", 415, "Content-Type"),
        (b"primary_agent_id,source,phones\n", "text/csv", 400, "body"),
    ]:
        status, body = await post_raw(admin, "/v1/leads:import", data, content_type)
        assert status == status_expected and body["errors"][0]["field"] == field, body
    status, body = await post_raw(t.apis["agent"], "/v1/leads:import", b"x", "text/csv")
    assert status == 403


async def test_import_size_limit(db_dsn: str, conn: asyncpg.Connection) -> None:
    settings = settings_for(db_dsn)
    settings = config.replace(settings, http=config.replace(settings.http, max_import_bytes=1000))
    assert isinstance(settings.http, HttpSettings)
    gw = Gateway(settings)
    await gw.start()
    try:
        t = await team(gw, conn)
        status, body = await post_raw(t.apis["admin"], "/v1/leads:import", b"x" * 5000, "text/csv")
        assert status == 413 and "1000 bytes" in body["detail"]
    finally:
        await gw.stop()
