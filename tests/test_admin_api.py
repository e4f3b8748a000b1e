"""Offices, users and keys over real HTTP: every permission edge, cross-account
404s, field validation, and keys hashed at rest (issue 4)."""

from __future__ import annotations

import hashlib
import logging

import asyncpg
import pytest

from gateway.server import Gateway
from gateway.store.api_keys import create_key
from tests import factories
from tests.test_crm import Api


class Team:
    def __init__(self, acct: factories.Account, ids: dict[str, int], apis: dict[str, Api]) -> None:
        self.acct, self.ids, self.apis = acct, ids, apis


async def team(gateway: Gateway, conn: asyncpg.Connection) -> Team:
    acct = await factories.account(conn)
    ids = {
        "owner": acct.owner_id,
        "admin": await factories.user(conn, acct.id, role="admin"),
        "agent": acct.agent_id,
        "agent2": await factories.user(conn, acct.id),
    }
    apis = {role: Api(gateway, await create_key(conn, acct.id, uid)) for role, uid in ids.items()}
    await conn.execute(
        "INSERT INTO user_offices (account_id, user_id, office_id) VALUES ($1, $2, $3)",
        acct.id,
        ids["agent"],
        acct.office_id,
    )
    return Team(acct, ids, apis)


# (actor, method, path template, body, expected status). {office}, {agent}, {admin}, {owner} filled per team.
EDGES = [
    ("agent", "POST", "/v1/offices", {"name": "N1"}, 403),
    ("admin", "POST", "/v1/offices", {"name": "N2"}, 201),
    ("owner", "POST", "/v1/offices", {"name": "N3"}, 201),
    ("agent", "PATCH", "/v1/offices/{office}", {"name": "R"}, 403),
    ("admin", "PATCH", "/v1/offices/{office}", {"name": "R"}, 200),
    ("agent", "PUT", "/v1/offices/{office}/members/{agent}", None, 403),
    ("admin", "PUT", "/v1/offices/{office}/members/{agent}", None, 204),
    ("agent", "DELETE", "/v1/offices/{office}/members/{agent}", None, 403),
    ("owner", "DELETE", "/v1/offices/{office}/members/{agent}", None, 204),
    ("agent", "POST", "/v1/users", {"email": "a@x.test"}, 403),
    ("admin", "POST", "/v1/users", {"email": "b@x.test", "role": "admin"}, 403),
    ("admin", "POST", "/v1/users", {"email": "c@x.test"}, 201),
    ("owner", "POST", "/v1/users", {"email": "d@x.test", "role": "admin"}, 201),
    ("agent", "PATCH", "/v1/users/{agent}", {"name": "Me"}, 200),
    ("agent", "PATCH", "/v1/users/{agent}", {"package": "upgraded"}, 403),
    ("agent", "PATCH", "/v1/users/{agent2}", {"name": "You"}, 403),
    ("admin", "PATCH", "/v1/users/{agent}", {"package": "upgraded", "included_minutes": 500}, 200),
    ("admin", "PATCH", "/v1/users/{owner}", {"name": "Boss"}, 403),
    ("admin", "PATCH", "/v1/users/{agent}", {"role": "admin"}, 403),
    ("owner", "PATCH", "/v1/users/{agent}", {"role": "admin"}, 200),
    ("owner", "PATCH", "/v1/users/{owner}", {"role": "agent"}, 403),
    ("agent", "POST", "/v1/users/{agent}/api-keys", {"label": "mine"}, 201),
    ("agent", "POST", "/v1/users/{agent2}/api-keys", {}, 403),
    ("admin", "POST", "/v1/users/{agent2}/api-keys", {}, 201),
    ("admin", "POST", "/v1/users/{owner}/api-keys", {}, 403),
    ("agent", "DELETE", "/v1/users/{agent2}", None, 403),
    ("admin", "DELETE", "/v1/users/{owner}", None, 403),
    ("admin", "DELETE", "/v1/users/{agent2}", None, 204),
    ("owner", "DELETE", "/v1/users/{owner}", None, 403),
    ("agent", "DELETE", "/v1/offices/{office}", None, 403),
    ("owner", "DELETE", "/v1/offices/{office}", None, 204),
]


@pytest.mark.parametrize(
    ("actor", "method", "template", "payload", "expected"),
    EDGES,
    ids=[f"{e[0]}-{e[1]}-{e[2]}-{e[4]}" for e in EDGES],
)
async def test_permission_edges(
    gateway: Gateway,
    conn: asyncpg.Connection,
    actor: str,
    method: str,
    template: str,
    payload: dict[str, object] | None,
    expected: int,
) -> None:
    t = await team(gateway, conn)
    path = template.format(office=t.acct.office_id, **t.ids)
    status, body = await t.apis[actor].call(
        method, path, **({"json": payload} if payload is not None else {})
    )
    assert status == expected, body


async def test_another_accounts_resources_are_404(gateway: Gateway, conn: asyncpg.Connection) -> None:
    mine, theirs = await team(gateway, conn), await team(gateway, conn)
    owner = mine.apis["owner"]
    for method, path, payload in [
        ("GET", f"/v1/users/{theirs.ids['agent']}", None),
        ("PATCH", f"/v1/users/{theirs.ids['agent']}", {"name": "x"}),
        ("DELETE", f"/v1/users/{theirs.ids['agent']}", None),
        ("PATCH", f"/v1/offices/{theirs.acct.office_id}", {"name": "x"}),
        ("DELETE", f"/v1/offices/{theirs.acct.office_id}", None),
        ("PUT", f"/v1/offices/{theirs.acct.office_id}/members/{mine.ids['agent']}", None),
        ("PUT", f"/v1/offices/{mine.acct.office_id}/members/{theirs.ids['agent']}", None),
        ("POST", f"/v1/users/{theirs.ids['agent']}/api-keys", {}),
        ("GET", f"/v1/users/{theirs.ids['agent']}/api-keys", None),
    ]:
        status, _ = await owner.call(method, path, **({"json": payload} if payload is not None else {}))
        assert status == 404, (method, path)
    _, listed = await owner.call("GET", "/v1/users")
    assert {u["id"] for u in listed["users"]} == set(mine.ids.values())


async def test_user_fields_are_validated(gateway: Gateway, conn: asyncpg.Connection) -> None:
    t = await team(gateway, conn)
    other = await factories.account(conn)
    foreign_number = await factories.number(conn, other.id, "+15550150000")
    office_number = await factories.number(
        conn, t.acct.id, "+15550150001", "office", office_id=t.acct.office_id
    )
    other_office = await conn.fetchval(
        "INSERT INTO offices (account_id, name) VALUES ($1, 'Elsewhere') RETURNING id", t.acct.id
    )
    elsewhere = await factories.number(conn, t.acct.id, "+15550150002", "office", office_id=other_office)
    owner, agent = t.apis["owner"], t.ids["agent"]
    cases = [
        ({"call_destination": "not a destination"}, "call_destination"),
        ({"sender_number_id": foreign_number}, "sender_number_id"),
        ({"sender_number_id": elsewhere}, "sender_number_id"),  # not a member of that office
        ({"package": "gold"}, "package"),
        ({"included_minutes": -1}, "included_minutes"),
        ({"sip_password": "short"}, "sip_password"),
        ({"sip_username": "alex.phone"}, "sip_password"),
        ({"role": "owner"}, "role"),
        ({"email": "x@y.test"}, "email"),
        ({"name": None}, "name"),  # NOT NULL columns refuse an explicit null (found by schemathesis)
        ({"package": None}, "package"),
    ]
    for payload, field in cases:
        status, body = await owner.call("PATCH", f"/v1/users/{agent}", json=payload)
        assert status == 422 and body["errors"][0]["field"] == field, (payload, body)
    for payload, field in [
        ({"email": "no-at-sign"}, "email"),
        ({"email": "a@b.test", "office_ids": [999999]}, "office_ids"),
    ]:
        status, body = await owner.call("POST", "/v1/users", json=payload)
        assert status == 422 and body["errors"][0]["field"] == field, (payload, body)
    status, body = await owner.call(
        "PATCH", f"/v1/users/{agent}", json={"call_destination": "(555) 010-7777"}
    )
    assert status == 200 and body["call_destination"] == "+15550107777"
    status, body = await owner.call("PATCH", f"/v1/users/{agent}", json={"sender_number_id": office_number})
    assert status == 200 and body["sender_number_id"] == office_number
    status, _ = await owner.call("POST", "/v1/users", json={"email": body["email"].upper()})
    assert status == 409  # emails are unique per account, case-insensitive


async def test_sip_password_is_kept_only_as_ha1(gateway: Gateway, conn: asyncpg.Connection) -> None:
    t = await team(gateway, conn)
    agent = t.apis["agent"]
    status, body = await agent.call(
        "PATCH",
        f"/v1/users/{t.ids['agent']}",
        json={"sip_username": "alex.phone", "sip_password": "correct horse battery"},
    )
    assert status == 200 and body["sip_username"] == "alex.phone" and "sip_ha1" not in body
    ha1 = await conn.fetchval("SELECT sip_ha1 FROM users WHERE id = $1", t.ids["agent"])
    assert ha1 == hashlib.md5(b"alex.phone:gateway:correct horse battery").hexdigest()
    dump = str([dict(r) for r in await conn.fetch("SELECT * FROM users")])
    assert "correct horse battery" not in dump


async def test_personal_number_owner_cannot_be_downgraded(gateway: Gateway, conn: asyncpg.Connection) -> None:
    t = await team(gateway, conn)
    await factories.number(conn, t.acct.id, "+15550160000", "personal", owner_user_id=t.ids["owner"])
    status, body = await t.apis["owner"].call(
        "PATCH", f"/v1/users/{t.ids['owner']}", json={"package": "standard"}
    )
    assert status in (403, 409) and body["status"] == status


async def test_keys_are_shown_once_hashed_at_rest_and_revocable(
    gateway: Gateway, conn: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    t = await team(gateway, conn)
    agent = t.apis["agent"]
    status, created = await agent.call(
        "POST", f"/v1/users/{t.ids['agent']}/api-keys", json={"label": "laptop"}
    )
    assert status == 201 and created["key"].startswith("gk_")
    key = created["key"]
    dump = str([dict(r) for r in await conn.fetch("SELECT * FROM api_keys")])
    assert key not in dump and key.split("_", 2)[2] not in dump
    _, listed = await agent.call("GET", f"/v1/users/{t.ids['agent']}/api-keys")
    assert all("key" not in k for k in listed["api_keys"])
    assert (await Api(gateway, key).call("GET", "/v1/numbers"))[0] == 200
    assert (await t.apis["agent2"].call("DELETE", f"/v1/api-keys/{created['id']}"))[0] == 403
    assert (await agent.call("DELETE", f"/v1/api-keys/{created['id']}"))[0] == 204
    assert (await Api(gateway, key).call("GET", "/v1/numbers"))[0] == 401
    assert key not in caplog.text
