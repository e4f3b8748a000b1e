"""One chain for every caller (issue 15, item 9; R18): a lead's agent, then the
number's route, then its fallback, each step on the call record and on the
lead's timeline. Domain rules, then SIPp end to end."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.calls import Step, Target, call_plan
from gateway.domain.index import Index, LeadRef, Number, User
from gateway.domain.routing import route
from gateway.server import Gateway
from gateway.store.api_keys import create_key
from tests import factories
from tests.sipp_tools import CARRIER_IP, PHONE_IP, free_port, start_sipp
from tests.test_crm import Api
from tests.test_sip_calls import NUMBER, company_number, phone, records, routable, sip_target

pytestmark = pytest.mark.timeout(120)
LEAD_PHONE = "+15550144444"


def test_a_lead_call_chains_agent_route_then_fallback() -> None:
    index = Index()
    for uid in (1, 2, 3):
        index.put_user(User(uid, 1, "agent", "standard", frozenset(), f"sip:u{uid}@h", None))  # type: ignore[arg-type]
    number = Number(
        9, 1, NUMBER, "company", None, None, "ring_all", (1, 2, 3), 7, None, None, 50, "twilio",
        fallback_target="+15550100000",
    )  # fmt: skip
    index.put_lead_phone(1, LEAD_PHONE, LeadRef(5, 1, datetime(2024, 1, 1, tzinfo=UTC)))
    plan = call_plan(index, route(index, number, LEAD_PHONE), number)
    assert plan == (
        Step((Target(1, "sip:u1@h"),), 7.0, "agent"),
        Step((Target(2, "sip:u2@h"), Target(3, "sip:u3@h")), 7.0, "route"),  # without the agent again
        Step((Target(None, "+15550100000"),), 60.0, "fallback"),
    )
    unknown = call_plan(index, route(index, number, "+15550149999"), number)
    assert [step.label for step in unknown] == ["route", "fallback"]


async def test_the_agent_does_not_answer_the_route_does_and_the_timeline_says_so(
    sip_gw: Gateway, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    acct = await factories.account(conn)
    pool_agent = await factories.user(conn, acct.id)
    agent_port, pool_port = free_port(PHONE_IP), free_port(PHONE_IP)
    await phone(conn, acct.agent_id, agent_port)
    await phone(conn, pool_agent, pool_port)
    number_id = await company_number(
        conn, acct, [pool_agent], unknown_route="ring_all", unknown_step_timeout_s=1
    )
    lead = await factories.lead(conn, acct.id, acct.agent_id, LEAD_PHONE)
    await routable(sip_gw, number_id, acct.agent_id, pool_agent)
    assert sip_gw.keeper is not None
    await sip_gw.keeper.wait_until(lambda index: bool(index.leads_for(acct.id, LEAD_PHONE)))

    ringing = await start_sipp("agent", "uas_ring_only.xml", tmp_path, ip=PHONE_IP, port=agent_port)
    pool = await start_sipp("pool", "uas_agent.xml", tmp_path, ip=PHONE_IP, port=pool_port)
    carrier = await start_sipp(
        "carrier", "uac_call.xml", tmp_path, ip=CARRIER_IP, remote=sip_target(sip_gw), service=NUMBER,
        rows=[[LEAD_PHONE]], pause_ms=200,
    )  # fmt: skip
    assert await carrier.wait(20) == 0, carrier.errors()
    assert await pool.wait(20) == 0 and await ringing.wait(20) == 0
    (row,) = await records(sip_gw, conn)
    assert (row["disposition"], row["answered_by"]) == ("answered", pool_agent)
    api = Api(sip_gw, await create_key(conn, acct.id, acct.owner_id))
    _, timeline = await api.call("GET", f"/v1/leads/{lead}/timeline")
    (event,) = timeline["events"]
    steps = event["steps"]
    assert [(s["label"], s["users"], s["result"]) for s in steps] == [
        ("agent", [acct.agent_id], "no_answer"),
        ("route", [pool_agent], "answered"),
    ]
    assert 0.5 <= steps[0]["seconds"] <= 3  # the step timeout, 1 s


@given(
    st.lists(st.integers(1, 8), unique=True, max_size=6),
    st.integers(1, 8),
    st.sampled_from(["user", "ring_all", "sequential", "round_robin"]),
    st.booleans(),
)
def test_every_chain_rings_the_agent_first_nobody_twice_and_the_fallback_last(
    pool: list[int], agent: int, strategy: str, fallback: bool
) -> None:
    index = Index()
    for uid in range(1, 9):
        index.put_user(User(uid, 1, "agent", "standard", frozenset(), f"sip:u{uid}@h", None))  # type: ignore[arg-type]
    number = Number(
        9, 1, NUMBER, "company", None, None, strategy, tuple(pool[:1] if strategy == "user" else pool), 7,
        None, None, 50, "twilio", fallback_target="sip:vm@h" if fallback else None,
    )  # fmt: skip
    index.put_lead_phone(1, LEAD_PHONE, LeadRef(5, agent, datetime(2024, 1, 1, tzinfo=UTC)))
    plan = call_plan(index, route(index, number, LEAD_PHONE), number)
    rung = [t.user_id for step in plan for t in step.targets if t.user_id is not None]
    assert plan[0].label == "agent" and [t.user_id for t in plan[0].targets] == [agent]
    assert len(rung) == len(set(rung))  # nobody twice
    assert set(rung) == {agent} | set(number.route_user_ids)
    assert (plan[-1].label == "fallback") == fallback
