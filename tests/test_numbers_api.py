"""Number endpoints over real HTTP: settings (R12), senders (R10), text codes (R14)."""

from __future__ import annotations

import asyncpg
import pytest

from gateway.server import Gateway
from gateway.store.api_keys import create_key
from tests import factories
from tests.test_crm import Api


async def world(
    gateway: Gateway, conn: asyncpg.Connection
) -> tuple[factories.Account, dict[str, int], dict[str, Api]]:
    acct = await factories.account(conn)
    admin = await factories.user(conn, acct.id, role="admin")
    await conn.execute(
        "INSERT INTO user_offices (account_id, user_id, office_id) VALUES ($1, $2, $3)",
        acct.id,
        acct.agent_id,
        acct.office_id,
    )
    numbers = {
        "company": await factories.number(conn, acct.id, "+15550120000"),
        "office": await factories.number(conn, acct.id, "+15550120001", "office", office_id=acct.office_id),
        "personal": await factories.number(
            conn, acct.id, "+15550120002", "personal", owner_user_id=acct.owner_id
        ),
    }
    apis = {
        role: Api(gateway, await create_key(conn, acct.id, uid))
        for role, uid in (("owner", acct.owner_id), ("admin", admin), ("agent", acct.agent_id))
    }
    return acct, numbers, apis


async def test_list_and_get_are_account_scoped(gateway: Gateway, conn: asyncpg.Connection) -> None:
    _, numbers, apis = await world(gateway, conn)
    stranger = await factories.account(conn)
    outsider = Api(gateway, await create_key(conn, stranger.id, stranger.owner_id))
    status, body = await apis["agent"].call("GET", "/v1/numbers")
    assert status == 200 and [n["id"] for n in body["numbers"]] == sorted(numbers.values())
    assert body["numbers"][0]["max_concurrent_calls"] == 50
    assert (await outsider.call("GET", "/v1/numbers"))[1]["numbers"] == []
    assert (await outsider.call("GET", f"/v1/numbers/{numbers['company']}"))[0] == 404


async def test_r12_settings_by_owner_or_admin_only(gateway: Gateway, conn: asyncpg.Connection) -> None:
    acct, numbers, apis = await world(gateway, conn)
    path = f"/v1/numbers/{numbers['company']}"
    change = {
        "unknown_route": "ring_all",
        "route_user_ids": [acct.agent_id, acct.owner_id],
        "source": "Billboard",
        "tag": "bb",
        "max_concurrent_calls": 10,
        "description": "Main",
    }
    status, body = await apis["agent"].call("PATCH", path, json=change)
    assert status == 403 and "owner or admin" in body["detail"]
    for role in ("owner", "admin"):
        status, body = await apis[role].call("PATCH", path, json=change)
        assert status == 200, body
    assert (body["unknown_route"], body["route_user_ids"], body["max_concurrent_calls"]) == (
        "ring_all",
        [acct.agent_id, acct.owner_id],
        10,
    )
    # The routing index follows the change through NOTIFY.
    assert gateway.keeper is not None
    await gateway.keeper.wait_until(
        lambda idx: (
            (n := idx.number("+15550120000")) is not None
            and n.max_concurrent_calls == 10
            and n.source == "Billboard"
        )
    )
    stranger = await factories.account(conn)
    bad = [
        ({"max_concurrent_calls": 0}, "max_concurrent_calls"),
        ({"max_concurrent_calls": "50"}, "max_concurrent_calls"),
        ({"unknown_route": "blast"}, "unknown_route"),
        ({"route_user_ids": [stranger.agent_id]}, "route_user_ids"),
        ({"route_user_ids": [acct.agent_id, acct.agent_id]}, "route_user_ids"),
        ({"unknown_route": "user", "route_user_ids": [acct.agent_id, acct.owner_id]}, "route_user_ids"),
        ({"description": "x" * 201}, "description"),
        ({"colour": "red"}, "colour"),
    ]
    for change, field in bad:
        status, body = await apis["owner"].call("PATCH", path, json=change)
        assert status == 422 and body["errors"][0]["field"] == field, (change, body)
    assert (await apis["owner"].call("PATCH", "/v1/numbers/999999", json={"tag": "x"}))[0] == 404


async def test_r10_senders_answers_with_the_sending_function(
    gateway: Gateway, conn: asyncpg.Connection
) -> None:
    acct, numbers, apis = await world(gateway, conn)
    status, body = await apis["owner"].call("GET", f"/v1/numbers/{numbers['company']}/senders?kind=auto")
    assert status == 200 and body["sender"]["id"] == numbers["personal"] and "personal" in body["why"]
    status, body = await apis["agent"].call("GET", f"/v1/numbers/{numbers['company']}/senders?kind=auto")
    assert body["sender"]["id"] == numbers["company"]  # standard package: no personal number
    status, body = await apis["agent"].call("GET", f"/v1/numbers/{numbers['personal']}/senders?kind=manual")
    assert body["sender"] is None and "only by its owner" in body["why"] and not body["this_number_allowed"]
    status, body = await apis["agent"].call("GET", f"/v1/numbers/{numbers['office']}/senders?kind=manual")
    assert body["sender"]["id"] == numbers["office"]  # the agent's own office
    # Owners may ask for any user of the account; agents only for themselves.
    url = f"/v1/numbers/{numbers['company']}/senders?kind=auto&user={acct.agent_id}"
    assert (await apis["owner"].call("GET", url))[1]["user_id"] == acct.agent_id
    assert (
        await apis["agent"].call("GET", f"/v1/numbers/{numbers['company']}/senders?user={acct.owner_id}")
    )[0] == 404
    status, body = await apis["agent"].call("GET", f"/v1/numbers/{numbers['company']}/senders?kind=sometimes")
    assert status == 400 and body["errors"][0]["field"] == "kind"


async def test_r14_text_codes_only_on_personal_numbers(gateway: Gateway, conn: asyncpg.Connection) -> None:
    _, numbers, apis = await world(gateway, conn)
    for shared in ("company", "office"):
        status, body = await apis["owner"].call(
            "POST", f"/v1/numbers/{numbers[shared]}/text-codes", json={"keyword": "HOMES"}
        )
        assert status == 409 and "cannot be used for text codes or postcards" in body["detail"]
    path = f"/v1/numbers/{numbers['personal']}/text-codes"
    status, body = await apis["owner"].call("POST", path, json={"keyword": "HOMES", "purpose": "postcard"})
    assert status == 201 and body["keyword"] == "HOMES"
    assert (await apis["owner"].call("POST", path, json={"keyword": "homes"}))[0] == 409  # case-insensitive
    assert (await apis["agent"].call("POST", path, json={"keyword": "OTHER"}))[0] == 403
    status, body = await apis["owner"].call("POST", path, json={"keyword": "no spaces"})
    assert status == 422 and body["errors"][0]["field"] == "keyword"
    # The database holds R14 too, whatever the API does.
    company = numbers["company"]
    with pytest.raises(asyncpg.CheckViolationError, match="text codes or postcards"):
        await conn.execute(
            "INSERT INTO text_codes (account_id, number_id, keyword)"
            " SELECT account_id, id, 'RAW' FROM numbers WHERE id = $1",
            company,
        )
