"""Business hours per number (issue 15, item 10; R16): the pure schedule and
routing with the clock as an argument (hypothesis), and end to end: a SIPp
call outside hours rings the after-hours user, not the lead's agent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.hours import DAYS, BusinessHours, format_hours, is_open, parse_hours
from gateway.domain.index import Index, LeadRef, Number, User
from gateway.domain.routing import route
from gateway.server import Gateway
from gateway.store.api_keys import create_key
from tests import factories
from tests.sipp_tools import CARRIER_IP, PHONE_IP, free_port, start_sipp
from tests.test_crm import Api
from tests.test_sip_calls import NUMBER, company_number, phone, records, routable, sip_target

NEW_YORK = ZoneInfo("America/New_York")
NINE_TO_FIVE = {
    "time_zone": "America/New_York",
    "weekly": {day: [["09:00", "17:00"]] for day in DAYS[:5]},
    "holidays": ["2026-12-25"],
}
instants = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1), timezones=st.just(UTC)
)


@given(instants)
def test_nine_to_five_is_open_exactly_on_weekday_office_hours_in_new_york(at: datetime) -> None:
    hours = parse_hours(NINE_TO_FIVE)
    local = at.astimezone(NEW_YORK)
    expected = local.weekday() < 5 and 9 <= local.hour < 17 and local.date().isoformat() != "2026-12-25"
    assert is_open(hours, at) == expected


@given(instants)
def test_no_schedule_is_always_open_and_an_empty_week_never(at: datetime) -> None:
    assert is_open(None, at)
    assert not is_open(BusinessHours("UTC", ((),) * 7), at)


def test_the_daylight_saving_change_moves_opening_with_local_time() -> None:
    hours = parse_hours(NINE_TO_FIVE)
    # 2026-03-06 (Fri, EST) opens at 14:00 UTC; 2026-03-09 (Mon, EDT) at 13:00 UTC.
    assert not is_open(hours, datetime(2026, 3, 6, 13, 59, tzinfo=UTC))
    assert is_open(hours, datetime(2026, 3, 6, 14, 0, tzinfo=UTC))
    assert is_open(hours, datetime(2026, 3, 9, 13, 0, tzinfo=UTC))
    assert not is_open(hours, datetime(2026, 12, 25, 15, 0, tzinfo=UTC))  # a holiday
    assert format_hours(hours) == NINE_TO_FIVE


@pytest.mark.parametrize(
    "bad",
    [
        {"weekly": {}},
        {"time_zone": "Mars/Olympus"},
        {"time_zone": "UTC", "weekly": {"someday": []}},
        {"time_zone": "UTC", "weekly": {"mon": [["17:00", "09:00"]]}},
        {"time_zone": "UTC", "weekly": {"mon": [["9am", "5pm"]]}},
        {"time_zone": "UTC", "holidays": ["25/12/2026"]},
    ],
)
def test_a_bad_schedule_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        parse_hours(bad)


@given(instants, st.booleans())
def test_outside_hours_every_caller_takes_the_after_hours_route(at: datetime, lead_calls: bool) -> None:
    """R16 over R1-R5: the lead's agent is not rung after hours; the lead
    still gets its timeline record (R1)."""
    index = Index()
    for uid in (5, 6):
        index.put_user(User(uid, 1, "agent", "standard", frozenset(), "sip:a@b", None))  # type: ignore[arg-type]
    closed = Number(
        1, 1, NUMBER, "company", None, None, "user", (5,), 20, None, None, 50, "twilio",
        hours=BusinessHours("UTC", ((),) * 7), after_hours_user_ids=(6,),
    )  # fmt: skip
    caller = "+15550140099"
    if lead_calls:
        index.put_lead_phone(1, caller, LeadRef(77, 5, datetime(2024, 1, 1, tzinfo=UTC)))
    decision = route(index, closed, caller, call_at=at)
    assert (decision.reason, decision.targets) == ("after_hours", (6,))
    assert decision.timeline_leads == ((77,) if lead_calls else ())
    assert route(index, closed, caller).reason != "after_hours"  # texts: no hours


async def test_a_call_after_hours_rings_the_after_hours_user(
    sip_gw: Gateway, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    acct = await factories.account(conn)
    night = await factories.user(conn, acct.id)
    day_port, night_port = free_port(PHONE_IP), free_port(PHONE_IP)
    await phone(conn, acct.agent_id, day_port)
    await phone(conn, night, night_port)
    number_id = await company_number(conn, acct, [acct.agent_id])
    await factories.lead(conn, acct.id, acct.agent_id, "+15550140077")
    owner = Api(sip_gw, await create_key(conn, acct.id, acct.owner_id))
    today = datetime.now(UTC).astimezone(NEW_YORK).date().isoformat()
    closed_today = {**NINE_TO_FIVE, "holidays": [today]}
    change = {"business_hours": closed_today, "after_hours": "users", "after_hours_user_ids": [night]}
    status, body = await owner.call("PATCH", f"/v1/numbers/{number_id}", json=change)
    assert status == 200, body
    assert body["business_hours"]["holidays"] == [today] and body["after_hours_user_ids"] == [night]
    bad = {"business_hours": {"time_zone": "Nowhere/City"}}
    status, body = await owner.call("PATCH", f"/v1/numbers/{number_id}", json=bad)
    assert status == 422 and body["errors"][0]["field"] == "business_hours"
    await routable(sip_gw, number_id, acct.agent_id, night)
    assert sip_gw.keeper is not None
    await sip_gw.keeper.wait_until(lambda index: index.number(NUMBER).hours is not None)  # type: ignore[union-attr]

    night_phone = await start_sipp("night", "uas_agent.xml", tmp_path, ip=PHONE_IP, port=night_port)
    carrier = await start_sipp(
        "carrier", "uac_call.xml", tmp_path, ip=CARRIER_IP, remote=sip_target(sip_gw), service=NUMBER,
        rows=[["+15550140077"]], pause_ms=200,
    )  # fmt: skip
    assert await carrier.wait(20) == 0, carrier.errors()
    assert await night_phone.wait(20) == 0, night_phone.errors()
    (row,) = await records(sip_gw, conn)
    assert (row["disposition"], row["answered_by"]) == ("answered", night)
    reason = await conn.fetchval("SELECT reason FROM timeline_events WHERE channel = 'call'")
    assert reason == "after_hours"  # the lead's history says why its agent was not rung
    assert datetime.now(UTC) - row["ended_at"] < timedelta(minutes=1)
