"""Over the limit is not a dead end (issue 15, item 8), with SIPp as carrier,
agent phone and overflow service, and a local stand-in for Twilio's API.

A number with a limit of 1 takes one long call; the second caller gets what
the number's ``overflow`` says: ``forward`` rings the overflow target instead
(no slot taken), ``text_back`` is 486 and a text from the number. Either way
the account's admins see an ``over_limit`` event and the metric counts it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from gateway import config
from gateway.config import TwilioSettings
from gateway.server import Gateway
from tests import factories
from tests.conftest import sip_settings
from tests.sipp_tools import CARRIER_IP, PHONE_IP, free_port, start_sipp
from tests.test_sip_calls import NUMBER, company_number, phone, records, routable, sip_target
from tests.test_texts_outbound import SID, TOKEN, FakeProviders, fake

__all__ = ["fake"]
pytestmark = pytest.mark.timeout(120)
CALLER = "+15550155555"


PUBLIC = "https://gw.example.com"


@pytest.fixture
async def overflow_gw(db_dsn: str, trunk_port: int, fake: FakeProviders) -> AsyncIterator[Gateway]:
    """A SIP gateway whose texts (text-backs) go to the local Twilio stand-in
    and whose webhooks are signed for PUBLIC."""
    s = sip_settings(db_dsn, trunk_port)
    s = config.replace(
        s,
        http=config.replace(s.http, public_base_url=PUBLIC),
        twilio=TwilioSettings(auth_token=TOKEN, account_sid=SID, api_base_url=fake.base),  # type: ignore[attr-defined]
    )
    gateway = Gateway(s)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


async def two_callers(gw: Gateway, tmp_path: Path) -> int:
    """Two simultaneous 2-second calls from CALLER; the carrier's exit code
    (a 486 counts as an expected ending)."""
    carrier = await start_sipp(
        "carrier",
        "uac_call.xml",
        tmp_path,
        ip=CARRIER_IP,
        remote=sip_target(gw),
        service=NUMBER,
        calls=2,
        rate=50,
        limit=2,
        pause_ms=2000,
        rows=[[CALLER], [CALLER]],
    )
    return await carrier.wait(30)


async def limited_number(
    gw: Gateway, conn: asyncpg.Connection, **overflow: object
) -> tuple[factories.Account, int]:
    acct = await factories.account(conn)
    agent_port = free_port(PHONE_IP)
    await phone(conn, acct.agent_id, agent_port)
    settings = dict(sorted(overflow.items(), key=lambda item: item[0] == "overflow"))  # the target first
    number_id = await company_number(conn, acct, [acct.agent_id], max_concurrent_calls=1, **settings)
    await routable(gw, number_id, acct.agent_id)
    assert gw.keeper is not None
    await gw.keeper.wait_until(lambda index: index.number(NUMBER).overflow == overflow["overflow"])  # type: ignore[union-attr]
    return acct, agent_port


async def test_the_caller_past_the_limit_is_forwarded_to_the_overflow_target(
    overflow_gw: Gateway, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    service_port = free_port(PHONE_IP)
    acct, agent_port = await limited_number(
        overflow_gw, conn, overflow="forward", overflow_target=f"sip:answering@{PHONE_IP}:{service_port}"
    )
    agent = await start_sipp("agent", "uas_agent.xml", tmp_path, ip=PHONE_IP, port=agent_port, calls=1)
    service = await start_sipp("service", "uas_agent.xml", tmp_path, ip=PHONE_IP, port=service_port, calls=1)
    assert await two_callers(overflow_gw, tmp_path) == 0  # both answered: nobody hit a dead end
    assert await agent.wait(20) == 0 and await service.wait(20) == 0, service.errors()
    rows = await records(overflow_gw, conn)
    assert [(r["disposition"], r["answered_by"]) for r in rows] == [
        ("answered", acct.agent_id),
        ("answered", None),
    ] or [(r["disposition"], r["answered_by"]) for r in rows] == [
        ("answered", None),
        ("answered", acct.agent_id),
    ]
    assert overflow_gw.slots.total() == 0
    await _admins_told(conn, acct, "forward")


async def test_the_caller_past_the_limit_gets_486_and_a_text_back(
    overflow_gw: Gateway, conn: asyncpg.Connection, tmp_path: Path, fake: FakeProviders
) -> None:
    acct, agent_port = await limited_number(
        overflow_gw, conn, overflow="text_back", overflow_text="All lines busy - we will call you back!"
    )
    agent = await start_sipp("agent", "uas_agent.xml", tmp_path, ip=PHONE_IP, port=agent_port, calls=1)
    await two_callers(overflow_gw, tmp_path)
    assert await agent.wait(20) == 0
    rows = await records(overflow_gw, conn)
    assert sorted(r["disposition"] for r in rows) == ["answered", "busy_limit"]  # one got 486
    for _ in range(100):
        if fake.calls:
            break
        await asyncio.sleep(0.05)
    (sent,) = fake.calls
    assert (sent["From"], sent["To"], sent["Body"]) == (
        NUMBER,
        CALLER,
        "All lines busy - we will call you back!",
    )
    for _ in range(100):
        message = await conn.fetchrow("SELECT * FROM messages WHERE direction = 'outbound'")
        if message is not None and message["status"] != "queued":
            break
        await asyncio.sleep(0.05)
    assert message is not None and (message["to_e164"], message["sent_by"]) == (CALLER, None)
    assert await conn.fetchval("SELECT count(*) FROM usage_ledger WHERE kind = 'text_segments'") == 0
    await _admins_told(conn, acct, "text_back")


async def _admins_told(conn: asyncpg.Connection, acct: factories.Account, action: str) -> None:
    for _ in range(100):
        events = await conn.fetch("SELECT user_id, payload FROM user_events WHERE kind = 'over_limit'")
        if events:
            break
        await asyncio.sleep(0.05)
    assert [e["user_id"] for e in events] == [acct.owner_id]  # the owner; the agent is no admin
    assert f'"action": "{action}"' in events[0]["payload"] and CALLER in events[0]["payload"]


async def test_overflow_settings_are_checked(overflow_gw: Gateway, conn: asyncpg.Connection) -> None:
    from gateway.store.api_keys import create_key
    from tests.test_crm import Api

    acct = await factories.account(conn)
    number_id = await factories.number(conn, acct.id, NUMBER)
    owner = Api(overflow_gw, await create_key(conn, acct.id, acct.owner_id))
    path = f"/v1/numbers/{number_id}"
    status, body = await owner.call("PATCH", path, json={"overflow": "forward"})
    assert status == 422 and body["errors"][0]["field"] == "overflow_target"
    status, body = await owner.call("PATCH", path, json={"overflow": "forward", "overflow_target": "nobody"})
    assert status == 422 and body["errors"][0]["field"] == "overflow_target"
    change = {"overflow": "forward", "overflow_target": "(555) 010-0000"}
    status, body = await owner.call("PATCH", path, json=change)
    assert status == 200 and (body["overflow"], body["overflow_target"]) == ("forward", "+15550100000")


def test_over_limit_action_falls_back_to_busy() -> None:
    from gateway.domain.calls import over_limit_action
    from gateway.domain.index import Number

    base = Number(1, 1, NUMBER, "company", None, None, "user", (), 20, None, None, 1, "twilio")
    assert over_limit_action(base, CALLER) == "busy"
    assert over_limit_action(dataclasses.replace(base, overflow="text_back"), CALLER) == "text_back"
    assert (
        over_limit_action(dataclasses.replace(base, overflow="text_back"), None) == "busy"
    )  # nobody to text
    assert over_limit_action(dataclasses.replace(base, overflow="forward"), CALLER) == "busy"  # no target
    forward = dataclasses.replace(base, overflow="forward", overflow_target="sip:a@b")
    assert over_limit_action(forward, None) == "forward"
