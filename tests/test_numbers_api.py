"""Number endpoints over real HTTP: settings (R12), senders (R10), text codes (R14)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import aiohttp
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


async def test_r13_purchase_and_release(gateway: Gateway, conn: asyncpg.Connection) -> None:
    acct, _, apis = await world(gateway, conn)
    await conn.execute("UPDATE accounts SET plan = 'enterprise' WHERE id = $1", acct.id)
    second_office = await conn.fetchval(
        "INSERT INTO offices (account_id, name) VALUES ($1, 'Uptown') RETURNING id", acct.id
    )
    from gateway.store.purchases import add_to_inventory

    assert await add_to_inventory(conn, ["+15550130000", "+15550130001", "+15550130002"], "telnyx") == 3
    order = {"kind": "company", "office_id": second_office, "description": "Uptown line"}
    status, body = await apis["admin"].call("POST", "/v1/numbers/purchase", json=order)
    assert status == 403 and body["detail"] == "only the account owner buys numbers"
    status, body = await apis["owner"].call("POST", "/v1/numbers/purchase", json=order)
    assert status == 201, body
    assert (body["kind"], body["office_id"], body["provider"]) == ("company", second_office, "telnyx")
    assert body["charge"]["amount_cents"] == 2700
    bought = body["id"]
    charge = await conn.fetchrow("SELECT amount_cents, ended_at FROM charges WHERE number_id = $1", bought)
    assert charge["amount_cents"] == 2700 and charge["ended_at"] is None
    # One company number per office/group.
    status, body = await apis["owner"].call("POST", "/v1/numbers/purchase", json=order)
    assert status == 409 and "already has a company number" in body["detail"]
    # Unlimited account-wide company numbers.
    assert (await apis["owner"].call("POST", "/v1/numbers/purchase", json={"kind": "company"}))[0] == 201
    status, body = await apis["owner"].call("POST", "/v1/numbers/purchase", json={"kind": "office"})
    assert status == 422 and body["errors"][0]["field"] == "office_id"
    status, body = await apis["owner"].call(
        "POST", "/v1/numbers/purchase", json={"kind": "company", "office_id": 999999}
    )
    assert status == 422 and body["errors"][0]["field"] == "office_id"
    # Release: the charge ends and the number goes back to inventory.
    assert (await apis["admin"].call("DELETE", f"/v1/numbers/{bought}"))[0] == 403
    async with (
        aiohttp_session(apis["owner"]) as session,
        session.delete(f"{apis['owner'].base}/v1/numbers/{bought}") as response,
    ):
        assert response.status == 204
    assert await conn.fetchval("SELECT ended_at IS NOT NULL FROM charges WHERE e164 = '+15550130000'")
    assert await conn.fetchval("SELECT count(*) FROM number_inventory WHERE e164 = '+15550130000'") == 1
    assert (await apis["owner"].call("GET", f"/v1/numbers/{bought}"))[0] == 404
    # Inventory exhausted -> a clear 409.
    assert (await apis["owner"].call("POST", "/v1/numbers/purchase", json={"kind": "company"}))[0] == 201
    assert (await apis["owner"].call("POST", "/v1/numbers/purchase", json={"kind": "company"}))[0] == 201
    status, body = await apis["owner"].call("POST", "/v1/numbers/purchase", json={"kind": "company"})
    assert status == 409 and "inventory" in body["detail"]


async def test_r13_standard_plan_cannot_buy(gateway: Gateway, conn: asyncpg.Connection) -> None:
    acct, _, apis = await world(gateway, conn)
    await conn.execute("UPDATE accounts SET plan = 'standard' WHERE id = $1", acct.id)
    status, body = await apis["owner"].call("POST", "/v1/numbers/purchase", json={"kind": "company"})
    assert status == 403 and "Enterprise" in body["detail"]


def aiohttp_session(api: Api) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(headers=api.headers)


def test_inventory_add_cli(db_dsn: str, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "GATEWAY_DATABASE_URL": db_dsn}
    run = [
        sys.executable,
        "-m",
        "gateway",
        "inventory",
        "add",
        "+1 555 014 0000",
        "5550140001",
        "--provider",
        "sip",
    ]
    result = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "added 2 of 2 numbers to the inventory (sip)"
    bad = subprocess.run(
        [*run[:5], "not-a-number"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 1 and "not phone numbers: not-a-number" in bad.stderr


async def test_another_accounts_numbers_are_404_for_every_operation(
    gateway: Gateway, conn: asyncpg.Connection
) -> None:
    _, numbers, _ = await world(gateway, conn)
    stranger = await factories.account(conn)
    outsider = Api(gateway, await create_key(conn, stranger.id, stranger.owner_id))
    for kind, number_id in numbers.items():
        for method, path, payload in [
            ("GET", f"/v1/numbers/{number_id}", None),
            ("PATCH", f"/v1/numbers/{number_id}", {"tag": "x"}),
            ("GET", f"/v1/numbers/{number_id}/senders", None),
            ("POST", f"/v1/numbers/{number_id}/text-codes", {"keyword": "MINE"}),
            ("DELETE", f"/v1/numbers/{number_id}", None),
        ]:
            status, _ = await outsider.call(method, path, **({"json": payload} if payload else {}))
            assert status == 404, (kind, method, path, status)
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM numbers WHERE id = ANY($1::bigint[])", list(numbers.values())
        )
        == 3
    )


async def test_office_numbers_are_managed_within_their_office(
    gateway: Gateway, conn: asyncpg.Connection
) -> None:
    """Issue 15, item 5: "managed by the Office Owner/Admin": the account owner,
    or an admin who belongs to that office; the route rings only its users."""
    acct, numbers, apis = await world(gateway, conn)  # the agent is in the office; the admin is not
    path = f"/v1/numbers/{numbers['office']}"
    status, body = await apis["admin"].call("PATCH", path, json={"tag": "x"})
    assert status == 403 and "admin of that office" in body["detail"]
    assert (await apis["admin"].call("PATCH", f"/v1/numbers/{numbers['company']}", json={"tag": "x"}))[
        0
    ] == 200
    office_admin = await factories.user(conn, acct.id, role="admin")
    await conn.execute(
        "INSERT INTO user_offices (account_id, user_id, office_id) VALUES ($1, $2, $3)",
        acct.id,
        office_admin,
        acct.office_id,
    )
    inside = Api(gateway, await create_key(conn, acct.id, office_admin))
    change = {"unknown_route": "ring_all", "route_user_ids": [acct.agent_id, office_admin]}
    status, body = await inside.call("PATCH", path, json=change)
    assert status == 200 and body["route_user_ids"] == [acct.agent_id, office_admin], body
    status, body = await apis["owner"].call("PATCH", path, json={"route_user_ids": [acct.owner_id]})
    assert status == 422 and body["errors"][0]["field"] == "route_user_ids"  # the owner is not in the office
    assert "only users of its office" in body["errors"][0]["message"]


async def test_a_purchase_routes_unknown_callers_and_the_list_flags_what_cannot(
    gateway: Gateway, conn: asyncpg.Connection
) -> None:
    """Issue 15, item 7: defaults at purchase, and unknown_caller_problem."""
    from gateway.store.purchases import add_to_inventory

    acct, _, apis = await world(gateway, conn)
    await conn.execute("UPDATE accounts SET plan = 'enterprise' WHERE id = $1", acct.id)
    await add_to_inventory(conn, ["+15550131000", "+15550131001", "+15550131002"], "twilio")
    status, company = await apis["owner"].call("POST", "/v1/numbers/purchase", json={"kind": "company"})
    assert status == 201, company
    assert (company["unknown_route"], company["route_user_ids"], company["source"], company["tag"]) == (
        "user",
        [acct.owner_id],
        "Company Number",
        company["e164"],
    )
    # The owner has a package but no phone yet: flagged, not silently dead.
    assert "call_destination" in company["unknown_caller_problem"]
    order = {"kind": "office", "office_id": acct.office_id, "source": "Yard sign", "tag": "uptown"}
    status, office = await apis["owner"].call("POST", "/v1/numbers/purchase", json=order)
    assert status == 201, office
    assert (office["unknown_route"], office["route_user_ids"], office["source"], office["tag"]) == (
        "ring_all",
        [acct.agent_id],  # the office's users
        "Yard sign",
        "uptown",
    )
    stray = {"kind": "company", "route_user_ids": [acct.agent_id, acct.owner_id]}
    status, body = await apis["owner"].call("POST", "/v1/numbers/purchase", json=stray)
    assert status == 422 and body["errors"][0]["field"] == "route_user_ids"  # 'user' rings one
    await conn.execute("UPDATE users SET call_destination = 'sip:a@127.0.0.1' WHERE id = $1", acct.owner_id)
    status, listing = await apis["owner"].call("GET", "/v1/numbers")
    problems = {n["e164"]: n["unknown_caller_problem"] for n in listing["numbers"]}
    assert problems[company["e164"]] is None
    assert problems[office["e164"]] is not None  # the agent has no phone


async def test_titles_group_assignment_over_quota_mode_and_addons(
    gateway: Gateway, conn: asyncpg.Connection
) -> None:
    """Issue 15, item 6, over HTTP."""
    acct, numbers, apis = await world(gateway, conn)
    company = f"/v1/numbers/{numbers['company']}"
    # The title is returned wherever the number is shown.
    assert (await apis["owner"].call("PATCH", company, json={"description": "Yard signs"}))[1][
        "description"
    ] == ("Yard signs")
    _, listing = await apis["agent"].call("GET", "/v1/numbers")
    assert {n["id"]: n["description"] for n in listing["numbers"]}[numbers["company"]] == "Yard signs"
    # A company number joins a group after purchase, one per group, and leaves it.
    status, body = await apis["owner"].call("PATCH", company, json={"office_id": acct.office_id})
    assert status == 200 and body["office_id"] == acct.office_id
    other = await factories.number(conn, acct.id, "+15550120009")
    status, body = await apis["owner"].call(
        "PATCH", f"/v1/numbers/{other}", json={"office_id": acct.office_id}
    )
    assert status == 409 and "already has a company number" in body["detail"]
    status, body = await apis["owner"].call("PATCH", f"/v1/numbers/{other}", json={"office_id": 999999})
    assert status == 422 and body["errors"][0]["field"] == "office_id"
    status, body = await apis["owner"].call(
        "PATCH", f"/v1/numbers/{numbers['office']}", json={"office_id": None}
    )
    assert status == 422 and body["errors"][0]["field"] == "office_id"
    assert (await apis["owner"].call("PATCH", company, json={"office_id": None}))[1]["office_id"] is None
    # The over-quota mode: the owner's to set.
    status, account = await apis["admin"].call("GET", "/v1/account")
    assert status == 200 and account["over_quota"] == "record"
    assert (await apis["admin"].call("PATCH", "/v1/account", json={"over_quota": "block"}))[0] == 403
    status, account = await apis["owner"].call("PATCH", "/v1/account", json={"over_quota": "block"})
    assert status == 200 and account["over_quota"] == "block"
    status, body = await apis["owner"].call("PATCH", "/v1/account", json={"over_quota": "ignore"})
    assert status == 422 and body["errors"][0]["field"] == "over_quota"
    # Add-ons on top of the package, in the usage report.
    change = {"included_segments": 1, "addon_segments": 2, "addon_minutes": 30}
    assert (await apis["admin"].call("PATCH", f"/v1/users/{acct.agent_id}", json=change))[0] == 200
    assert (await apis["agent"].call("PATCH", f"/v1/users/{acct.agent_id}", json={"addon_segments": 99}))[
        0
    ] == 403
    status, usage = await apis["agent"].call("GET", f"/v1/users/{acct.agent_id}/usage?period=2026-11")
    assert status == 200, usage
    assert usage["addon"] == {"call_minutes": 30, "text_segments": 2}
    assert usage["allowance"] == {"call_minutes": None, "text_segments": 3}  # no minutes package: unlimited
    assert usage["over_quota_mode"] == "block"
