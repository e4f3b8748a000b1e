"""Missed-call text-back (issue 15, item 11; R17), end to end: SIPp callers
nobody answers, signed Twilio webhooks for STOP/START, and a local stand-in
for Twilio's Messages API that records what the gateway sends."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from multidict import MultiDict
from twilio.request_validator import RequestValidator

from gateway.domain.hours import BusinessHours
from gateway.domain.index import Number
from gateway.domain.text_back import in_quiet_hours, opt_keyword, wants_missed_call_text
from gateway.server import Gateway
from gateway.store.api_keys import create_key
from tests import factories
from tests.sipp_tools import CARRIER_IP, PHONE_IP, free_port, start_sipp
from tests.test_crm import Api
from tests.test_overflow import PUBLIC, overflow_gw
from tests.test_sip_calls import NUMBER, company_number, phone, records, routable, sip_target
from tests.test_texts_outbound import TOKEN, FakeProviders, fake

__all__ = ["fake", "overflow_gw"]
pytestmark = pytest.mark.timeout(120)
CALLER, QUITTER = "+15550166001", "+15550166002"
MESSAGE = "Sorry we missed you! Reply here or we will call you back."


async def missed_call(gw: Gateway, tmp_path: Path, name: str, caller: str, agent_port: int) -> None:
    ringing = await start_sipp(f"ring-{name}", "uas_ring_only.xml", tmp_path, ip=PHONE_IP, port=agent_port)
    sipp = await start_sipp(
        name, "uac_unanswered.xml", tmp_path, ip=CARRIER_IP, remote=sip_target(gw), service=NUMBER,
        rows=[[caller]],
    )  # fmt: skip
    assert await sipp.wait(15) == 0, sipp.errors()
    assert await ringing.wait(15) == 0, ringing.errors()


async def text_in(gw: Gateway, sid: str, sender: str, body: str) -> int:
    import aiohttp

    path = "/v1/webhooks/twilio/messages"
    params = [("MessageSid", factories.twilio_sid(sid)), ("From", sender), ("To", NUMBER), ("Body", body)]
    signature = RequestValidator(TOKEN).compute_signature(PUBLIC + path, MultiDict(params))
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"http://127.0.0.1:{gw.http_port}{path}", data=params, headers={"X-Twilio-Signature": signature}
        ) as r,
    ):
        return r.status


async def sent_to(fake: FakeProviders, count: int) -> list[str]:
    for _ in range(100):
        if len(fake.calls) >= count:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # and nothing more arrives
    return [call["To"] for call in fake.calls]


async def test_a_missed_caller_is_texted_once_per_period_and_never_after_stop(
    overflow_gw: Gateway, conn: asyncpg.Connection, tmp_path: Path, fake: FakeProviders
) -> None:
    acct = await factories.account(conn)
    agent_port = free_port(PHONE_IP)
    await phone(conn, acct.agent_id, agent_port)
    number_id = await company_number(conn, acct, [acct.agent_id], unknown_step_timeout_s=1)
    owner = Api(overflow_gw, await create_key(conn, acct.id, acct.owner_id))
    settings = {
        "missed_call_text": MESSAGE,
        "missed_call_quiet_from": "00:00",
        "missed_call_quiet_to": "00:00",
    }
    status, body = await owner.call("PATCH", f"/v1/numbers/{number_id}", json=settings)
    assert status == 200 and body["missed_call_text"] == MESSAGE, body
    await routable(overflow_gw, number_id, acct.agent_id)
    assert overflow_gw.keeper is not None
    await overflow_gw.keeper.wait_until(lambda index: index.number(NUMBER).missed_call_text == MESSAGE)  # type: ignore[union-attr]

    await missed_call(overflow_gw, tmp_path, "first", CALLER, agent_port)
    assert await sent_to(fake, 1) == [CALLER]
    assert (fake.calls[0]["From"], fake.calls[0]["Body"]) == (NUMBER, MESSAGE)
    await missed_call(overflow_gw, tmp_path, "again", CALLER, agent_port)
    assert await sent_to(fake, 2) == [CALLER]  # once per period (a day by default)

    assert await text_in(overflow_gw, "stop-1", QUITTER, "Stop") == 200
    await missed_call(overflow_gw, tmp_path, "quitter", QUITTER, agent_port)
    assert await sent_to(fake, 2) == [CALLER]  # opted out: no text
    assert await text_in(overflow_gw, "start-1", QUITTER, "START") == 200
    await missed_call(overflow_gw, tmp_path, "back", QUITTER, agent_port)
    assert await sent_to(fake, 2) == [CALLER, QUITTER]  # opted back in
    assert [r["disposition"] for r in await records(overflow_gw, conn)] == ["no_answer"] * 4
    texts_back = await conn.fetch(
        "SELECT to_e164, sent_by FROM messages WHERE direction = 'outbound' ORDER BY id"
    )
    assert [(r["to_e164"], r["sent_by"]) for r in texts_back] == [(CALLER, None), (QUITTER, None)]


def _number(**changes: object) -> Number:
    base = Number(1, 1, NUMBER, "company", None, None, "user", (), 20, None, None, 50, "twilio")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_keywords_quiet_hours_and_who_is_texted() -> None:
    assert [opt_keyword(b) for b in ("stop", " STOP. ", "Unsubscribe", "start", "stop please", "")] == [
        "out", "out", "out", "in", None, None,
    ]  # fmt: skip
    night = _number(missed_call_text="hi", hours=BusinessHours("America/New_York", ((),) * 7))
    assert in_quiet_hours(night, datetime(2026, 7, 1, 2, 0, tzinfo=UTC))  # 22:00 in New York
    assert not in_quiet_hours(night, datetime(2026, 7, 1, 16, 0, tzinfo=UTC))  # noon
    assert in_quiet_hours(night, datetime(2026, 7, 1, 11, 59, tzinfo=UTC))  # 07:59
    assert not in_quiet_hours(
        _number(missed_call_quiet_from="00:00", missed_call_quiet_to="00:00"), datetime.now(UTC)
    )
    assert wants_missed_call_text(night, CALLER, "no_answer")
    assert not wants_missed_call_text(night, CALLER, "answered")
    assert not wants_missed_call_text(night, "anonymous", "canceled")
    assert not wants_missed_call_text(_number(), CALLER, "no_answer")  # off unless configured
