"""No unknown caller is lost (issue 15, items 1-3), end to end: SIP calls from
SIPp and signed Twilio webhooks in, the CRM API and SQL out.

1. An unknown caller nobody could ring (the route's user has no phone, or the
   number's route was never configured) still raises an R8 notification:
   to the route's users, else to the account's owners and admins.
2. An unknown texter raises one (one open per number, texter and user).
3. A lead made or associated from a notification starts with that call or
   text on its timeline.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from gateway.domain.notifications import call_raises_r8, r8_recipients, text_raises_r8
from gateway.domain.routing import Decision
from gateway.server import Gateway
from gateway.store.api_keys import create_key
from tests import factories
from tests.sipp_tools import CARRIER_IP, start_sipp
from tests.test_crm import Api
from tests.test_sip_calls import NUMBER, company_number, records, sip_target
from tests.test_texts_inbound import gw, twilio_params, twilio_post

__all__ = ["gw"]
pytestmark = pytest.mark.timeout(120)
CALLER = "+15550177777"


async def unanswered_call(sip_gw: Gateway, tmp_path: Path, caller: str = CALLER) -> None:
    sipp = await start_sipp(
        "caller",
        "uac_unanswered.xml",
        tmp_path,
        ip=CARRIER_IP,
        remote=sip_target(sip_gw),
        service=NUMBER,
        rows=[[caller]],
    )
    assert await sipp.wait(10) == 0, sipp.errors()  # 480: nobody could be rung


async def in_index(sip_gw: Gateway, number_id: int) -> None:
    assert sip_gw.keeper is not None
    await sip_gw.keeper.wait_until(lambda index: index.number(NUMBER) is not None)


async def test_a_caller_nobody_could_ring_reaches_the_route_user_and_becomes_a_lead_with_history(
    sip_gw: Gateway, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """Items 1 and 3: the route's agent has no call destination."""
    acct = await factories.account(conn)
    number_id = await company_number(conn, acct, [acct.agent_id], source="Billboard", tag="elm-st")
    await in_index(sip_gw, number_id)
    await unanswered_call(sip_gw, tmp_path)
    (call,) = await records(sip_gw, conn)
    assert call["disposition"] == "rejected"
    (note,) = await conn.fetch("SELECT * FROM notifications")
    assert (note["user_id"], note["caller_e164"], note["source"], note["tag"], note["channel"]) == (
        acct.agent_id,
        CALLER,
        "Billboard",
        "elm-st",
        "call",
    )
    agent = Api(sip_gw, await create_key(conn, acct.id, acct.agent_id))
    status, made = await agent.call(
        "POST", f"/v1/notifications/{note['id']}/actions", json={"action": "new_lead"}
    )
    assert status in (200, 201), made
    status, timeline = await agent.call("GET", f"/v1/leads/{made['lead_id']}/timeline")
    assert status == 200
    (entry,) = timeline["events"]
    assert (entry["channel"], entry["disposition"], entry["reason"]) == ("call", "missed", "unknown_caller")


async def test_a_number_with_no_route_notifies_the_owners_and_admins(
    sip_gw: Gateway, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """Item 1: a route never configured (no users at all)."""
    acct = await factories.account(conn)
    admin = await factories.user(conn, acct.id, role="admin", package="none")
    number_id = await company_number(conn, acct, [])
    await in_index(sip_gw, number_id)
    await unanswered_call(sip_gw, tmp_path)
    assert [r["disposition"] for r in await records(sip_gw, conn)] == ["rejected"]
    notified = await conn.fetch("SELECT user_id FROM notifications ORDER BY user_id")
    assert {r["user_id"] for r in notified} == {acct.owner_id, admin}  # not the agent


async def test_an_unknown_texter_raises_one_notification_and_associates_with_history(
    gw: Gateway, conn: asyncpg.Connection
) -> None:
    """Items 2 and 3, through signed Twilio webhooks."""
    from tests.test_texts_inbound import setup

    acct, second, lead = await setup(conn, gw)  # ring_all to the agent and a second agent
    for n in range(3):
        assert (await twilio_post(gw, twilio_params(f"unknown-{n}", sender=CALLER)))[0] == 200
    notes = await conn.fetch("SELECT * FROM notifications WHERE state = 'open' ORDER BY user_id")
    assert [(n["user_id"], n["channel"], n["caller_e164"]) for n in notes] == sorted(
        [(acct.agent_id, "text", CALLER), (second, "text", CALLER)]
    )
    owner = Api(gw, await create_key(conn, acct.id, acct.owner_id))
    status, body = await owner.call(
        "POST", f"/v1/notifications/{notes[0]['id']}/actions", json={"action": "associate", "lead_id": lead}
    )
    assert status == 200, body
    status, timeline = await owner.call("GET", f"/v1/leads/{lead}/timeline")
    texts = [e for e in timeline["events"] if e["channel"] == "text"]
    assert len(texts) == 1 and texts[0]["reason"] == "unknown_caller"
    # Settled for both agents; the now-known texter raises no more, a new stranger does.
    assert await conn.fetchval("SELECT count(*) FROM notifications WHERE state = 'open'") == 0
    assert gw.keeper is not None
    await gw.keeper.wait_until(lambda index: bool(index.leads_for(acct.id, CALLER)))
    assert (await twilio_post(gw, twilio_params("known-now", sender=CALLER)))[0] == 200
    assert (await twilio_post(gw, twilio_params("stranger", sender="+15550166666")))[0] == 200
    opened = await conn.fetch("SELECT caller_e164 FROM notifications WHERE state = 'open'")
    assert {r["caller_e164"] for r in opened} == {"+15550166666"}


def _decision(targets: tuple[int, ...], leads: tuple[int, ...] = ()) -> Decision:
    return Decision("unknown_caller" if targets else "no_target", "ring_all", targets, leads, 20)


def test_r8_applies_to_every_unanswered_ending_of_an_unknown_call() -> None:
    unknown = _decision((1, 2))
    for disposition in ("no_answer", "canceled", "rejected", "failed", "busy_limit"):
        assert call_raises_r8(unknown, CALLER, disposition)
    assert not call_raises_r8(unknown, CALLER, "answered")
    assert not call_raises_r8(unknown, "anonymous", "no_answer")  # no number to call back
    assert not call_raises_r8(_decision((1,), leads=(9,)), CALLER, "no_answer")  # a known lead
    assert text_raises_r8(unknown, CALLER) and not text_raises_r8(_decision((1,), leads=(9,)), CALLER)
    assert r8_recipients(unknown) == (1, 2) and r8_recipients(_decision(())) is None
