"""Per-number and account-wide analytics (issue 16, item 2) over real HTTP,
from calls written by the outbox's own writer, texts in both directions and
an unknown caller turned into a lead through the R8 action."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from gateway.domain.routing import Decision
from gateway.server import Gateway
from gateway.store.api_keys import create_key
from gateway.store.calls import CallRecord, write_calls
from gateway.store.index_queries import fetch_number
from tests import factories
from tests.test_crm import Api

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)  # a Monday, 09:00 UTC


def _call(
    number: object,
    call_id: str,
    at: datetime,
    disposition: str,
    agent: int | None,
    answer_s: float,
    talk_s: float,
    *,
    caller: str = "+15550130100",
    direction: str = "inbound",
    unknown_to: tuple[int, ...] = (),
) -> CallRecord:
    answered = at + timedelta(seconds=answer_s) if disposition == "answered" else None
    ended = (answered or at) + timedelta(seconds=talk_s if answered else answer_s)
    decision = Decision("unknown_caller", "single", unknown_to, (), 20) if unknown_to else None
    return CallRecord(
        call_id, direction, number, caller, "+15550130000", at, ended, disposition,  # type: ignore[arg-type]
        decision, answered_by=agent if answered else None, answered_at=answered,
    )  # fmt: skip


async def _text(
    conn: asyncpg.Connection, account_id: int, number_id: int, direction: str, at: datetime
) -> None:
    await conn.execute(
        "INSERT INTO messages (account_id, number_id, direction, provider, provider_message_id, from_e164,"
        " to_e164, status, created_at) VALUES ($1, $2, $3, 'twilio', $4, '+15550130100', '+15550130000',"
        " $5, $6)",
        account_id,
        number_id,
        direction,
        f"SM{direction}{at.timestamp()}",
        "received" if direction == "inbound" else "sent",
        at,
    )


async def test_a_numbers_figures_by_hour_and_the_accounts_by_day(
    gateway: Gateway, conn: asyncpg.Connection
) -> None:
    acct = await factories.account(conn)
    main = await factories.number(conn, acct.id, "+15550130000")
    other = await factories.number(conn, acct.id, "+15550130001")
    await conn.execute("UPDATE numbers SET source = 'Billboard', tag = 'bb' WHERE id = $1", main)
    number = await fetch_number(conn, main)
    second = await fetch_number(conn, other)
    stranger = await factories.account(conn)
    foreign = await fetch_number(conn, await factories.number(conn, stranger.id, "+15550139999"))
    assert number is not None and second is not None and foreign is not None
    agent = acct.agent_id
    hour2 = T0 + timedelta(hours=1)
    async with conn.transaction():
        await write_calls(
            conn,
            [
                # 09:00-10:00 on the main number: answered after 2, 4 and 10 s (talk 60 s, 30 s, 90 s).
                _call(number, "a1", T0, "answered", agent, 2, 60),
                _call(number, "a2", T0 + timedelta(minutes=5), "answered", agent, 4, 30),
                _call(number, "a3", T0 + timedelta(minutes=9), "answered", agent, 10, 90),
                _call(
                    number, "m1", T0 + timedelta(minutes=10), "no_answer", None, 20, 0, unknown_to=(agent,)
                ),
                _call(number, "l1", T0 + timedelta(minutes=11), "busy_limit", None, 0, 0),
                _call(number, "c1", T0 + timedelta(minutes=12), "canceled", None, 5, 0),
                _call(
                    number, "o1", T0 + timedelta(minutes=13), "answered", agent, 3, 120, direction="outbound"
                ),
                # 10:00-11:00: one missed call; the other number and another account are not counted.
                _call(number, "m2", hour2, "no_answer", None, 20, 0),
                _call(second, "x1", T0, "answered", agent, 1, 10),
                _call(foreign, "f1", T0, "answered", None, 1, 10),
            ],
        )
    for direction, minute in (("inbound", 1), ("inbound", 2), ("outbound", 3)):
        await _text(conn, acct.id, main, direction, T0 + timedelta(minutes=minute))
    await _text(conn, acct.id, other, "inbound", hour2)
    owner = Api(gateway, await create_key(conn, acct.id, acct.owner_id))
    agent_api = Api(gateway, await create_key(conn, acct.id, agent))

    # The unknown caller of m1 becomes a lead, with the number's source and tag (R8).
    notification = await conn.fetchval("SELECT id FROM notifications WHERE number_id = $1", main)
    status, body = await agent_api.call(
        "POST", f"/v1/notifications/{notification}/actions", json={"action": "new_lead"}
    )
    assert status in (200, 201), body
    await conn.execute(
        "UPDATE notifications SET closed_at = $1 WHERE id = $2", T0 + timedelta(minutes=30), notification
    )

    period = {"from": T0.isoformat(), "to": (T0 + timedelta(hours=3)).isoformat(), "bucket": "hour"}
    status, body = await owner.call("GET", f"/v1/numbers/{main}/stats", params=period)
    assert status == 200, body
    first, second_hour, third = body["buckets"]
    assert [b["start"] for b in body["buckets"]] == [(T0 + timedelta(hours=h)).isoformat() for h in range(3)]
    assert first["calls"] == {
        "offered": 6, "answered": 3, "missed": 1, "over_limit": 1, "abandoned": 1, "failed": 0, "outbound": 1,
    }  # fmt: skip
    assert first["time_to_answer_s"] == {"p50": 4.0, "p90": 8.8}  # percentile_cont of 2, 4, 10 s
    assert first["talk_minutes"] == 5.0  # 60 + 30 + 90 + 120 s, both directions
    assert first["texts"] == {"in": 2, "out": 1}
    assert first["leads_captured"] == 1
    assert second_hour["calls"]["missed"] == 1 and second_hour["calls"]["offered"] == 1
    assert third["calls"]["offered"] == 0 and third["time_to_answer_s"] == {"p50": None, "p90": None}
    assert body["totals"]["calls"]["offered"] == 7 and body["totals"]["calls"]["missed"] == 2
    assert body["leads_by_source_tag"] == [{"source": "Billboard", "tag": "bb", "leads": 1}]

    day = {
        "from": T0.replace(hour=0).isoformat(),
        "to": (T0 + timedelta(days=1)).isoformat(),
        "bucket": "day",
    }
    # By day, the same calls come from the rollup the insert trigger keeps (migration 0022).
    status, by_day = await owner.call("GET", f"/v1/numbers/{main}/stats", params=day)
    assert status == 200, by_day
    assert len(by_day["buckets"]) == 2  # 2026-11-02 and 2026-11-03: `to` widened to midnight
    assert by_day["buckets"][0]["calls"] == body["totals"]["calls"]
    assert by_day["buckets"][0]["time_to_answer_s"] == {"p50": 4.0, "p90": 8.8}
    assert by_day["buckets"][0]["talk_minutes"] == 5.0
    async with conn.transaction():  # a replayed record adds nothing, a new one adds to its day
        await write_calls(conn, [_call(number, "a1", T0, "answered", agent, 2, 60)])
        await write_calls(conn, [_call(number, "a4", T0 + timedelta(hours=5), "answered", agent, 30, 60)])
    by_day = (await owner.call("GET", f"/v1/numbers/{main}/stats", params=day))[1]
    assert by_day["buckets"][0]["calls"]["answered"] == 4
    assert by_day["buckets"][0]["time_to_answer_s"] == {"p50": 7.0, "p90": 24.0}  # 2, 4, 10, 30 s

    status, body = await owner.call("GET", "/v1/stats", params=day)
    assert status == 200, body
    assert body["number_id"] is None
    assert body["totals"]["calls"]["offered"] == 9  # both numbers, not the other account's
    assert body["totals"]["texts"] == {"in": 3, "out": 1}
    assert body["buckets"][0]["start"] == T0.replace(hour=0).isoformat()

    # Who may look: an agent sees no account figures and no shared number's.
    assert (await agent_api.call("GET", "/v1/stats", params=day))[0] == 403
    assert (await agent_api.call("GET", f"/v1/numbers/{main}/stats", params=day))[0] == 403
    outsider = Api(gateway, await create_key(conn, stranger.id, stranger.owner_id))
    assert (await outsider.call("GET", f"/v1/numbers/{main}/stats", params=day))[0] == 404


async def test_bad_periods_are_refused_naming_the_parameter(
    gateway: Gateway, conn: asyncpg.Connection
) -> None:
    acct = await factories.account(conn)
    number = await factories.number(conn, acct.id, "+15550131000")
    owner = Api(gateway, await create_key(conn, acct.id, acct.owner_id))
    path = f"/v1/numbers/{number}/stats"
    cases = [
        ({"from": "yesterday"}, "from", 400),
        ({"from": "0.5"}, "from", 400),  # not read as a Unix time
        ({"to": "2026-11-02T00:00:00"}, "to", 400),  # no offset: ambiguous
        ({"bucket": "week"}, "bucket", 400),
        ({"from": "2026-11-02T00:00:00Z", "to": "2026-11-01T00:00:00Z"}, "to", 422),
        ({"from": "2026-01-01T00:00:00Z", "to": "2026-03-01T00:00:00Z", "bucket": "hour"}, "to", 422),
        ({"from": "2025-01-01T00:00:00Z", "to": "2026-03-01T00:00:00Z"}, "to", 422),
    ]
    for params, field, code in cases:
        status, body = await owner.call("GET", path, params=params)
        assert status == code, (params, body)
        assert [e["field"] for e in body["errors"]] == [field], (params, body)
    status, body = await owner.call("GET", path)  # the last 7 days by day
    assert status == 200 and body["bucket"] == "day" and len(body["buckets"]) == 8
