"""Voice through the B2BUA with real SIPp on loopback (issue 6): the carrier
SIPp sends from a trusted trunk address, agents' phones are SIPp UASes.

(a) R7's limit of 50 with no leak, (b) CANCEL frees the slot, (c) nobody
answers -> 480 and an R8 notification, (d) R1 and R3 reach the right agent,
(e) ring_all: one answer wins, the others are CANCELled."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from gateway.server import Gateway
from tests import factories
from tests.sipp_tools import CARRIER_IP, PHONE_IP, free_port, start_sipp, udp_endpoint

NUMBER = "+15550140000"
SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
pytestmark = pytest.mark.timeout(120)


def sip_target(sip_gw: Gateway) -> str:
    assert sip_gw.sip is not None
    return f"127.0.0.1:{sip_gw.sip.port}"


async def phone(conn: asyncpg.Connection, user_id: int, port: int) -> None:
    await conn.execute(
        "UPDATE users SET call_destination = $2 WHERE id = $1", user_id, f"sip:agent@{PHONE_IP}:{port}"
    )


async def company_number(
    conn: asyncpg.Connection,
    acct: factories.Account,
    route_users: list[int],
    e164: str = NUMBER,
    **settings: object,
) -> int:
    number_id = await factories.number(conn, acct.id, e164)
    for position, user_id in enumerate(route_users):
        await conn.execute(
            "INSERT INTO number_route_targets (account_id, number_id, user_id, position)"
            " VALUES ($1, $2, $3, $4)",
            acct.id,
            number_id,
            user_id,
            position,
        )
    for column, value in settings.items():
        await conn.execute(f"UPDATE numbers SET {column} = $2 WHERE id = $1", number_id, value)
    return number_id


async def routable(sip_gw: Gateway, number_id: int, *user_ids: int) -> None:
    assert sip_gw.keeper is not None
    await sip_gw.keeper.wait_until(
        lambda index: (
            index.number(NUMBER) is not None
            and index.number(NUMBER).id == number_id  # type: ignore[union-attr]
            and all(index.user(u) is not None and index.user(u).call_destination for u in user_ids)
        )  # type: ignore[union-attr]
    )


async def agent_number(
    sip_gw: Gateway, conn: asyncpg.Connection, **settings: object
) -> tuple[factories.Account, int, int]:
    """An account whose agent's phone answers on a free port of PHONE_IP, and
    the company number NUMBER routed to that agent, ready in the index.
    Returns (account, phone port, number id)."""
    acct = await factories.account(conn)
    port = free_port(PHONE_IP)
    await phone(conn, acct.agent_id, port)
    number_id = await company_number(conn, acct, [acct.agent_id], **settings)
    await routable(sip_gw, number_id, acct.agent_id)
    return acct, port, number_id


async def records(sip_gw: Gateway, conn: asyncpg.Connection) -> list[asyncpg.Record]:
    assert sip_gw.recorder is not None
    assert await sip_gw.recorder.drain(10)
    return await conn.fetch("SELECT * FROM call_records ORDER BY id")


async def test_limit_of_50_refuses_the_rest_with_486_and_never_leaks(
    sip_gw: Gateway, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """(a) R7: 60 simultaneous long calls -> 50 reach the agent, 10 get 486;
    afterwards 50 new calls all succeed."""
    acct = await factories.account(conn)
    agent_port = free_port(PHONE_IP)
    await phone(conn, acct.agent_id, agent_port)
    number_id = await company_number(conn, acct, [acct.agent_id])
    await routable(sip_gw, number_id, acct.agent_id)

    agent = await start_sipp("agent", "uas_agent.xml", tmp_path, ip=PHONE_IP, port=agent_port, calls=50)
    carrier = await start_sipp(
        "carrier",
        "uac_dialog.xml",
        tmp_path,
        ip=CARRIER_IP,
        remote=sip_target(sip_gw),
        service=NUMBER,
        calls=60,
        rate=300,
        limit=60,
        pause_ms=3000,
    )
    assert await carrier.wait(40) == 0, carrier.errors()
    assert await agent.wait(20) == 0, agent.errors()
    assert agent.counts()["SuccessfulCall"] == 50
    rows = await records(sip_gw, conn)
    assert sorted(r["disposition"] for r in rows).count("answered") == 50
    assert [r["disposition"] for r in rows].count("busy_limit") == 10
    assert sip_gw.slots.active(number_id) == 0

    again = await start_sipp("agent2", "uas_agent.xml", tmp_path, ip=PHONE_IP, port=agent_port, calls=50)
    carrier2 = await start_sipp(
        "carrier2",
        "uac_dialog.xml",
        tmp_path,
        ip=CARRIER_IP,
        remote=sip_target(sip_gw),
        service=NUMBER,
        calls=50,
        rate=300,
        limit=50,
        pause_ms=500,
    )
    assert await carrier2.wait(40) == 0, carrier2.errors()
    assert await again.wait(20) == 0
    assert again.counts()["SuccessfulCall"] == 50
    rows = await records(sip_gw, conn)
    assert [r["disposition"] for r in rows].count("answered") == 100
    assert sip_gw.slots.total() == 0
    usage = await conn.fetchval("SELECT count(*) FROM usage_ledger WHERE kind = 'call_minutes'")
    assert usage == 100  # R9: every answered call charged once, to the agent


async def test_cancel_before_answer_frees_the_slot(
    sip_gw: Gateway, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """(b) With a limit of 1, a CANCELled call leaves the slot free for the next."""
    acct = await factories.account(conn)
    port = free_port(PHONE_IP)
    await phone(conn, acct.agent_id, port)
    number_id = await company_number(conn, acct, [acct.agent_id], max_concurrent_calls=1)
    await routable(sip_gw, number_id, acct.agent_id)

    ringing = await start_sipp("ringing", "uas_ring_only.xml", tmp_path, ip=PHONE_IP, port=port)
    caller = await start_sipp(
        "cancel", "uac_cancel.xml", tmp_path, ip=CARRIER_IP, remote=sip_target(sip_gw), service=NUMBER
    )
    assert await caller.wait(20) == 0, caller.errors()
    assert await ringing.wait(20) == 0, ringing.errors()  # it was CANCELled
    assert sip_gw.slots.active(number_id) == 0

    answering = await start_sipp("answer", "uas_agent.xml", tmp_path, ip=PHONE_IP, port=port)
    second = await start_sipp(
        "second",
        "uac_dialog.xml",
        tmp_path,
        ip=CARRIER_IP,
        remote=sip_target(sip_gw),
        service=NUMBER,
        pause_ms=200,
    )
    assert await second.wait(20) == 0, second.errors()
    assert await answering.wait(20) == 0
    assert [r["disposition"] for r in await records(sip_gw, conn)] == ["canceled", "answered"]


async def test_unanswered_unknown_caller_gets_480_and_a_notification(
    sip_gw: Gateway, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """(c) The agent never answers: 480 after the step timeout, a call record
    with no_answer, and R8's notification carrying the number's source."""
    acct = await factories.account(conn)
    port = free_port(PHONE_IP)
    await phone(conn, acct.agent_id, port)
    number_id = await company_number(
        conn, acct, [acct.agent_id], unknown_step_timeout_s=1, source="Billboard", tag="elm-st"
    )
    await routable(sip_gw, number_id, acct.agent_id)

    ringing = await start_sipp("ringing", "uas_ring_only.xml", tmp_path, ip=PHONE_IP, port=port)
    caller = await start_sipp(
        "caller",
        "uac_unanswered.xml",
        tmp_path,
        ip=CARRIER_IP,
        remote=sip_target(sip_gw),
        service=NUMBER,
        rows=[["+15550199999"]],
    )
    assert await caller.wait(10) == 0, caller.errors()
    assert await ringing.wait(10) == 0, ringing.errors()
    (row,) = await records(sip_gw, conn)
    assert row["disposition"] == "no_answer"
    assert row["targets_tried"] == [acct.agent_id]
    assert (row["ended_at"] - row["invited_at"]).total_seconds() < 3
    note = await conn.fetchrow("SELECT * FROM notifications")
    assert note["user_id"] == acct.agent_id
    assert (note["caller_e164"], note["source"], note["tag"], note["channel"]) == (
        "+15550199999",
        "Billboard",
        "elm-st",
        "call",
    )
    assert sip_gw.slots.total() == 0


async def test_existing_and_duplicate_leads_reach_the_right_agent(
    sip_gw: Gateway, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """(d) R1: a lead's call reaches its primary agent's phone. R3: duplicates
    with different agents -> the newest lead's agent, timeline on that lead only."""
    acct = await factories.account(conn)
    first, second = await factories.user(conn, acct.id), await factories.user(conn, acct.id)
    ports = {user: free_port(PHONE_IP) for user in (acct.agent_id, first, second)}
    for user, port in ports.items():
        await phone(conn, user, port)
    number_id = await company_number(conn, acct, [acct.agent_id])
    lead = await factories.lead(conn, acct.id, first, "+15550170001")
    await factories.lead(conn, acct.id, first, "+15550170002")
    newest = await factories.lead(conn, acct.id, second, "+15550170002")
    await routable(sip_gw, number_id, *ports)
    assert sip_gw.keeper is not None
    await sip_gw.keeper.wait_until(lambda index: len(index.leads_for(acct.id, "+15550170002")) == 2)

    agent_first = await start_sipp("first", "uas_agent.xml", tmp_path, ip=PHONE_IP, port=ports[first])
    caller = await start_sipp(
        "lead",
        "uac_call.xml",
        tmp_path,
        ip=CARRIER_IP,
        remote=sip_target(sip_gw),
        service=NUMBER,
        rows=[["+15550170001"]],
        pause_ms=200,
    )
    assert await caller.wait(20) == 0, caller.errors()
    assert await agent_first.wait(20) == 0

    agent_second = await start_sipp("second", "uas_agent.xml", tmp_path, ip=PHONE_IP, port=ports[second])
    dup = await start_sipp(
        "dup",
        "uac_call.xml",
        tmp_path,
        ip=CARRIER_IP,
        remote=sip_target(sip_gw),
        service=NUMBER,
        rows=[["+15550170002"]],
        pause_ms=200,
    )
    assert await dup.wait(20) == 0, dup.errors()
    assert await agent_second.wait(20) == 0
    rows = await records(sip_gw, conn)
    assert [(r["answered_by"], r["disposition"]) for r in rows] == [(first, "answered"), (second, "answered")]
    timeline = await conn.fetch("SELECT lead_id, reason, disposition FROM timeline_events ORDER BY id")
    assert [tuple(t) for t in timeline] == [
        (lead, "existing_lead", "answered"),
        (newest, "duplicate_most_recent", "answered"),
    ]


async def test_ring_all_first_answer_wins_and_the_others_are_cancelled(
    sip_gw: Gateway, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """(e) R4 ring_all to three phones: one answers, the other two get CANCEL."""
    acct = await factories.account(conn)
    users = [acct.agent_id, await factories.user(conn, acct.id), await factories.user(conn, acct.id)]
    ports = [free_port(PHONE_IP) for _ in users]
    for user, port in zip(users, ports, strict=True):
        await phone(conn, user, port)
    number_id = await company_number(conn, acct, users, unknown_route="ring_all")
    await routable(sip_gw, number_id, *users)

    winner = await start_sipp("winner", "uas_agent.xml", tmp_path, ip=PHONE_IP, port=ports[1])
    losers = [
        await start_sipp(f"loser{i}", "uas_ring_only.xml", tmp_path, ip=PHONE_IP, port=ports[i])
        for i in (0, 2)
    ]
    caller = await start_sipp(
        "caller",
        "uac_dialog.xml",
        tmp_path,
        ip=CARRIER_IP,
        remote=sip_target(sip_gw),
        service=NUMBER,
        pause_ms=300,
    )
    assert await caller.wait(20) == 0, caller.errors()
    assert await winner.wait(20) == 0, winner.errors()
    for loser in losers:
        assert await loser.wait(20) == 0, loser.errors()
    (row,) = await records(sip_gw, conn)
    assert row["answered_by"] == users[1]
    assert sorted(row["targets_tried"]) == sorted(users)


@pytest.mark.timeout(90)
async def test_a_caller_that_never_acks_is_hung_up_by_timer_h(
    sip_gw: Gateway, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """Issue 7: the agent answers but the carrier never ACKs our 200. After 64*T1
    (32 s) both sides get a BYE, the slot is free and the record says failed."""
    acct = await factories.account(conn)
    port = free_port(PHONE_IP)
    await phone(conn, acct.agent_id, port)
    number_id = await company_number(conn, acct, [acct.agent_id], max_concurrent_calls=1)
    await routable(sip_gw, number_id, acct.agent_id)
    agent = await start_sipp("agent", "uas_agent.xml", tmp_path, ip=PHONE_IP, port=port)
    carrier_port = free_port(CARRIER_IP)
    transport, got = await udp_endpoint(CARRIER_IP, carrier_port)
    try:
        invite = (
            f"INVITE sip:{NUMBER}@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {CARRIER_IP}:{carrier_port};branch=z9hG4bK-noack\r\n"
            f"From: <sip:+15557770042@{CARRIER_IP}>;tag=n\r\nTo: <sip:{NUMBER}@127.0.0.1>\r\n"
            f"Call-ID: noack-1\r\nCSeq: 1 INVITE\r\nContact: <sip:c@{CARRIER_IP}:{carrier_port}>\r\n"
            f"Max-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: {len(SDP)}\r\n\r\n"
        ) + SDP
        assert sip_gw.sip is not None
        transport.sendto(invite.encode(), ("127.0.0.1", sip_gw.sip.port))
        bye = b""
        while not bye.startswith(b"BYE "):
            bye = await asyncio.wait_for(got.get(), 40)  # 100, 180, 200 (retransmitted), then BYE
        assert sip_gw.slots.total() == 0
    finally:
        transport.close()
    assert await agent.wait(20) == 0, agent.errors()  # the agent got its BYE too
    (row,) = await records(sip_gw, conn)
    assert row["disposition"] == "failed" and row["answered_by"] == acct.agent_id
