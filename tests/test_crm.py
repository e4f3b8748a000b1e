"""What routing leaves behind, on real Postgres and real HTTP (issue 3):
timeline records (R1-R3), R8 notifications and their actions, R9 usage,
the shared round-robin cursor, and account-scoped access."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from gateway.domain.billing import billable_minutes
from gateway.domain.index import Index, Number
from gateway.domain.routing import Decision, rotate, route
from gateway.server import Gateway
from gateway.store.api_keys import create_key, digest
from gateway.store.crm import (
    InboundEvent,
    decide,
    may_use,
    next_round_robin_turn,
    raise_unknown_caller_notifications,
    record_timeline,
    record_usage,
)
from tests import factories

CALLER = "+15557770001"
T0 = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)


class Api:
    """Real HTTP against the running gateway, as one user."""

    def __init__(self, gw: Gateway, key: str | None) -> None:
        self.base = f"http://127.0.0.1:{gw.http_port}"
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession(headers=self.headers) as session,
            session.request(method, self.base + path, **kwargs) as response,
        ):
            body = await response.json(content_type=None)
            return response.status, body


async def setup_number(
    conn: asyncpg.Connection, route_kind: str = "ring_all"
) -> tuple[factories.Account, int, int]:
    acct = await factories.account(conn)
    second_agent = await factories.user(conn, acct.id)
    number_id = await factories.number(conn, acct.id, "+15550109999")
    await conn.execute(
        "UPDATE numbers SET unknown_route = $2, source = 'Company Number', tag = 'inbound-call'"
        " WHERE id = $1",
        number_id,
        route_kind,
    )
    await conn.executemany(
        "INSERT INTO number_route_targets (account_id, number_id, position, user_id) VALUES ($1, $2, $3, $4)",
        [(acct.id, number_id, 0, acct.agent_id), (acct.id, number_id, 1, second_agent)],
    )
    return acct, number_id, second_agent


async def routed(gw: Gateway, e164: str, caller: str, check: Any = None) -> tuple[Number, Decision]:
    assert gw.keeper is not None

    def ready(idx: Index) -> bool:
        n = idx.number(e164)
        return n is not None and len(n.route_user_ids) == 2 and (check is None or check(idx, n))

    await gw.keeper.wait_until(ready)
    number = gw.keeper.index.number(e164)
    assert number is not None
    return number, route(gw.keeper.index, number, caller)


def event(number: Number, key: str, channel: str = "call", **kw: Any) -> InboundEvent:
    return InboundEvent(number=number, channel=channel, caller=CALLER, event_key=key, occurred_at=T0, **kw)  # type: ignore[arg-type]


async def test_timeline_records_follow_r2_and_r3_exactly(gateway: Gateway, conn: asyncpg.Connection) -> None:
    acct, _, other = await setup_number(conn)
    same = [await factories.lead(conn, acct.id, acct.agent_id, CALLER) for _ in range(3)]
    number, decision = await routed(
        gateway, "+15550109999", CALLER, lambda idx, n: len(idx.leads_for(n.account_id, CALLER)) == 3
    )
    assert decision.reason == "duplicate_same_agent"
    ev = event(number, "call:r2", agent_id=acct.agent_id, disposition="answered", duration_s=42)
    assert await record_timeline(conn, ev, decision) == 3  # R2: every duplicate lead
    assert await record_timeline(conn, ev, decision) == 0  # a replay writes nothing
    rows = await conn.fetch("SELECT lead_id, reason, duration_s FROM timeline_events ORDER BY lead_id")
    assert [r["lead_id"] for r in rows] == same
    assert {(r["reason"], r["duration_s"]) for r in rows} == {("duplicate_same_agent", 42)}

    newer = await factories.lead(conn, acct.id, other, CALLER)  # a different agent, created last
    number, decision = await routed(
        gateway, "+15550109999", CALLER, lambda idx, n: len(idx.leads_for(n.account_id, CALLER)) == 4
    )
    assert decision.reason == "duplicate_most_recent" and decision.targets == (other,)
    assert await record_timeline(conn, event(number, "call:r3"), decision) == 1  # R3: the newest only
    assert (
        await conn.fetchval("SELECT lead_id FROM timeline_events WHERE reason = 'duplicate_most_recent'")
        == newer
    )


async def http_setup(
    gateway: Gateway, conn: asyncpg.Connection
) -> tuple[factories.Account, int, Api, Api, Api]:
    acct, number_id, second = await setup_number(conn)
    owner = Api(gateway, await create_key(conn, acct.id, acct.owner_id))
    agent = Api(gateway, await create_key(conn, acct.id, acct.agent_id))
    agent2 = Api(gateway, await create_key(conn, acct.id, second))
    return acct, number_id, owner, agent, agent2


async def test_r8_new_lead_takes_number_source_and_tag_and_routes_at_once(
    gateway: Gateway, conn: asyncpg.Connection
) -> None:
    acct, _, _owner, agent, agent2 = await http_setup(gateway, conn)
    number, decision = await routed(gateway, "+15550109999", CALLER)
    assert decision.reason == "unknown_caller" and decision.strategy == "ring_all"
    ids = await raise_unknown_caller_notifications(conn, event(number, "call:unknown-1"), decision)
    assert len(ids) == 2  # ring_all: every routed user is told
    assert await raise_unknown_caller_notifications(conn, event(number, "call:unknown-1"), decision) == []

    status, body = await agent.call("GET", f"/v1/users/{acct.agent_id}/notifications?state=open")
    assert status == 200
    (note,) = body["notifications"]
    assert (note["source"], note["caller_e164"], note["state"]) == ("Company Number", CALLER, "open")

    status, body = await agent.call(
        "POST", f"/v1/notifications/{note['id']}/actions", json={"action": "new_lead"}
    )
    assert status == 201, body
    lead_id = body["lead_id"]
    lead = await conn.fetchrow("SELECT source, primary_agent_id FROM leads WHERE id = $1", lead_id)
    assert (lead["source"], lead["primary_agent_id"]) == ("Company Number", acct.agent_id)
    assert await conn.fetchval("SELECT array_agg(tag) FROM lead_tags WHERE lead_id = $1", lead_id) == [
        "inbound-call"
    ]
    # Idempotent: the same action again returns the same lead, creating nothing.
    status, again = await agent.call(
        "POST", f"/v1/notifications/{note['id']}/actions", json={"action": "new_lead"}
    )
    assert (status, again["lead_id"]) == (200, lead_id)
    assert await conn.fetchval("SELECT count(*) FROM leads WHERE account_id = $1", acct.id) == 1
    # The sibling notification of the same call is settled too.
    second = decision.targets[1]
    _, sibling = await agent2.call("GET", f"/v1/users/{second}/notifications?state=all")
    assert [(n["state"], n["lead_id"]) for n in sibling["notifications"]] == [("closed", lead_id)]
    assert await conn.fetchval("SELECT count(*) FROM notifications WHERE state = 'open'") == 0
    # The new lead routes as an existing lead at once, through the index.
    _, decision = await routed(
        gateway, "+15550109999", CALLER, lambda idx, n: bool(idx.leads_for(n.account_id, CALLER))
    )
    assert (decision.reason, decision.targets, decision.timeline_leads) == (
        "existing_lead",
        (acct.agent_id,),
        (lead_id,),
    )


async def test_r8_associate_keeps_the_one_source_and_adds_tags(
    gateway: Gateway, conn: asyncpg.Connection
) -> None:
    acct, _, owner, _agent, _ = await http_setup(gateway, conn)
    existing = await factories.lead(conn, acct.id, acct.owner_id, "+15557779999", source="Zillow")
    number, decision = await routed(gateway, "+15550109999", CALLER)
    (note_id, _) = await raise_unknown_caller_notifications(conn, event(number, "call:unknown-2"), decision)
    path = f"/v1/notifications/{note_id}/actions"
    status, body = await owner.call("POST", path, json={"action": "associate", "lead_id": existing})
    assert (status, body["lead_id"]) == (200, existing)
    assert await conn.fetchval("SELECT source FROM leads WHERE id = $1", existing) == "Zillow"
    tags = await conn.fetchval(
        "SELECT array_agg(tag ORDER BY tag) FROM lead_tags WHERE lead_id = $1", existing
    )
    assert tags == ["Company Number", "inbound-call"]
    phones = await conn.fetchval(
        "SELECT array_agg(e164 ORDER BY e164) FROM lead_phones WHERE lead_id = $1", existing
    )
    assert phones == [CALLER, "+15557779999"]
    assert (await owner.call("POST", path, json={"action": "associate", "lead_id": existing}))[0] == 200
    status, body = await owner.call("POST", path, json={"action": "new_lead"})
    assert status == 409 and "associate" in body["detail"]


async def test_notification_action_validation_and_scoping(gateway: Gateway, conn: asyncpg.Connection) -> None:
    acct, _, owner, agent, agent2 = await http_setup(gateway, conn)
    stranger = await factories.account(conn)
    outsider = Api(gateway, await create_key(conn, stranger.id, stranger.owner_id))
    number, decision = await routed(gateway, "+15550109999", CALLER)
    ids = await raise_unknown_caller_notifications(conn, event(number, "call:unknown-3"), decision)
    mine = ids[0]
    path = f"/v1/notifications/{mine}/actions"
    # Another account's notification is a 404, exactly like a missing one.
    assert (await outsider.call("POST", path, json={"action": "new_lead"}))[0] == 404
    assert (await outsider.call("POST", "/v1/notifications/999999/actions", json={"action": "new_lead"}))[
        0
    ] == 404
    assert (await outsider.call("GET", f"/v1/users/{acct.agent_id}/notifications"))[0] == 404
    assert (
        await outsider.call("GET", f"/v1/leads/{await factories.lead(conn, acct.id, acct.agent_id)}/timeline")
    )[0] == 404
    # An agent sees only their own; owners and admins see everyone's.
    assert (await agent2.call("GET", f"/v1/users/{acct.agent_id}/notifications"))[0] == 404
    assert (await owner.call("GET", f"/v1/users/{acct.agent_id}/notifications"))[0] == 200
    # Bad input names the field.
    cases = [
        ({"json": {"action": "delete"}}, 422, "action"),
        ({"json": {"action": "associate"}}, 422, "lead_id"),
        ({"json": {"action": "associate", "lead_id": "7"}}, 422, "lead_id"),
        ({"json": {"action": "new_lead", "name": "x" * 201}}, 422, "name"),
        ({"json": {"action": "associate", "lead_id": 2**62}}, 422, "lead_id"),
        ({"json": [1, 2]}, 400, "body"),
        ({"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "body"),
        ({"data": b"\xff\xfe", "headers": {"Content-Type": "application/json"}}, 400, "body"),
        (
            {"data": b"action=new_lead", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
            415,
            "Content-Type",
        ),
    ]
    for kwargs, status, field in cases:
        got, body = await agent.call("POST", path, **kwargs)
        assert got == status, (kwargs, body)
        assert body["errors"][0]["field"] == field
    # Another account's user as primary agent: 422 for a manager, naming the field
    # (an agent may name nobody but themselves: 403, whoever the id is).
    foreign = {"action": "new_lead", "primary_agent_id": stranger.agent_id}
    got, body = await owner.call("POST", path, json=foreign)
    assert got == 422 and body["errors"][0]["field"] == "primary_agent_id"
    assert (await agent.call("POST", path, json=foreign))[0] == 403
    for bad in ("abc", "0", "-1", "99999999999999999999", "1%2F..%2F2"):
        got, body = await agent.call("POST", f"/v1/notifications/{bad}/actions", json={"action": "new_lead"})
        assert got in (400, 404) and got < 500, (bad, body)
    assert (await agent.call("GET", f"/v1/users/{acct.agent_id}/notifications?state=maybe"))[1]["errors"][0][
        "field"
    ] == "state"


async def test_authentication(gateway: Gateway, conn: asyncpg.Connection) -> None:
    acct = await factories.account(conn)
    key = await create_key(conn, acct.id, acct.agent_id)
    assert key.startswith("gk_")
    stored = await conn.fetchrow("SELECT prefix, digest FROM api_keys")
    assert key not in str(dict(stored)) and bytes(stored["digest"]) == digest(key)  # only the digest at rest
    path = f"/v1/users/{acct.agent_id}/notifications"
    for headers in (
        {},
        {"Authorization": "Basic x"},
        {"Authorization": "Bearer gk_nope"},
        {"Authorization": "Bearer " + key[:-1] + ("A" if key[-1] != "A" else "B")},
    ):
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://127.0.0.1:{gateway.http_port}{path}", headers=headers) as r,
        ):
            assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await Api(gateway, key).call("GET", path))[0] == 200
    await conn.execute("UPDATE api_keys SET revoked_at = now()")
    assert (await Api(gateway, key).call("GET", path))[0] == 401


async def test_r9_usage_is_charged_to_users_and_read_back(gateway: Gateway, conn: asyncpg.Connection) -> None:
    acct, number_id, _owner, agent, _ = await http_setup(gateway, conn)
    await conn.execute("UPDATE users SET included_minutes = 3 WHERE id = $1", acct.agent_id)
    record_id = await conn.fetchval(
        "INSERT INTO call_records (account_id, number_id, sip_call_id, direction, caller_e164, callee_e164,"
        " answered_by, invited_at, answered_at, ended_at, disposition)"
        " VALUES ($1, $2, 'c1', 'inbound', $3, '+15550109999', $4, $5, $5, $6, 'answered') RETURNING id",
        acct.id,
        number_id,
        CALLER,
        acct.agent_id,
        T0,
        T0 + timedelta(seconds=150.2),
    )
    minutes = billable_minutes(T0, T0 + timedelta(seconds=150.2))
    assert minutes == 3
    common = {"account_id": acct.id, "user_id": acct.agent_id, "at": T0, "number_id": number_id}
    first = await record_usage(
        conn, kind="call_minutes", quantity=minutes, event_key="call:c1", call_record_id=record_id, **common
    )
    assert first.recorded
    again = await record_usage(
        conn, kind="call_minutes", quantity=minutes, event_key="call:c1", call_record_id=record_id, **common
    )
    assert not again.recorded  # never double-charged
    record2 = await conn.fetchval(
        "INSERT INTO call_records (account_id, number_id, sip_call_id, direction, caller_e164, callee_e164,"
        " invited_at, answered_at, ended_at, disposition)"
        " VALUES ($1, $2, 'c2', 'inbound', $3, '+15550109999', $4, $4, $5, 'answered') RETURNING id",
        acct.id,
        number_id,
        CALLER,
        T0,
        T0 + timedelta(seconds=5),
    )
    over = await record_usage(
        conn, kind="call_minutes", quantity=1, event_key="call:c2", call_record_id=record2, **common
    )
    assert over.recorded  # recorded, not blocked: over quota, as the usage report says below
    assert await conn.fetchval("SELECT count(*) FROM usage_ledger WHERE user_id <> $1", acct.agent_id) == 0

    status, body = await agent.call("GET", f"/v1/users/{acct.agent_id}/usage?period=2026-11")
    assert status == 200
    assert body["totals"] == {"call_minutes": 4, "text_segments": 0}
    assert body["included"]["call_minutes"] == 3 and body["over_quota"]["call_minutes"] is True
    assert [e["number_id"] for e in body["entries"]] == [number_id, number_id]
    assert [e["over_quota"] for e in body["entries"]] == [False, True]  # 3 of 3 minutes, then 1 more
    status, body = await agent.call("GET", f"/v1/users/{acct.agent_id}/usage?period=2026-12")
    assert body["totals"]["call_minutes"] == 0
    for bad in ("2026-13", "26-11", "", "2026-1", "0000-01"):  # year 0 was a 500 (found by schemathesis)
        status, body = await agent.call("GET", f"/v1/users/{acct.agent_id}/usage?period={bad}")
        assert status == 400 and body["errors"][0]["field"] == "period"


async def test_round_robin_cursor_is_shared_and_fair(db_dsn: str, conn: asyncpg.Connection) -> None:
    acct = await factories.account(conn)
    number_id = await factories.number(conn, acct.id, "+15550108888")
    others = [await asyncpg.connect(db_dsn) for _ in range(3)]
    try:

        async def claim(c: asyncpg.Connection) -> list[int]:
            return [await next_round_robin_turn(c, number_id) for _ in range(10)]

        turns = [t for claimed in await asyncio.gather(*(claim(c) for c in others)) for t in claimed]
    finally:
        for c in others:
            await c.close()
    assert sorted(turns) == list(range(30))  # every turn claimed once, across connections
    targets = (1, 2, 3, 4)
    firsts = Counter(rotate(targets, turn)[0] for turn in turns)
    assert max(firsts.values()) - min(firsts.values()) <= 1


def test_account_create_cli_prints_a_working_key(db_dsn: str, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "GATEWAY_DATABASE_URL": db_dsn}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "account",
            "create",
            "--name",
            "Acme",
            "--plan",
            "enterprise",
            "--owner-email",
            "o@acme.test",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    key = result.stdout.split("shown once, store it now): ")[1].strip()
    assert key.startswith("gk_")

    async def check() -> str:
        c = await asyncpg.connect(db_dsn)
        try:
            return str(await c.fetchval("SELECT plan FROM accounts WHERE name = 'Acme'"))
        finally:
            await c.close()

    assert asyncio.run(check()) == "enterprise"
    assert key not in result.stderr


async def test_decide_rotates_round_robin_with_the_shared_turn(
    gateway: Gateway, conn: asyncpg.Connection
) -> None:
    acct, _, second = await setup_number(conn, route_kind="round_robin")
    number, plain = await routed(gateway, "+15550109999", CALLER)
    assert plain.targets == (acct.agent_id, second)
    firsts = [(await decide(conn, gateway.keeper.index, number, CALLER)).targets[0] for _ in range(6)]  # type: ignore[union-attr]
    assert Counter(firsts) == {acct.agent_id: 3, second: 3}
    assert firsts[:2] == [acct.agent_id, second]  # alternation, starting from turn 0


async def test_may_use_blocks_only_in_block_mode(conn: asyncpg.Connection) -> None:
    acct = await factories.account(conn)
    await conn.execute("UPDATE users SET included_segments = 2 WHERE id = $1", acct.agent_id)
    assert await may_use(conn, acct.id, acct.agent_id, "text_segments", 5, T0)  # mode record
    await conn.execute("UPDATE accounts SET over_quota = 'block' WHERE id = $1", acct.id)
    assert await may_use(conn, acct.id, acct.agent_id, "text_segments", 2, T0)
    assert not await may_use(conn, acct.id, acct.agent_id, "text_segments", 3, T0)
    with pytest.raises(LookupError):
        await may_use(conn, acct.id + 1000, acct.agent_id, "text_segments", 1, T0)
