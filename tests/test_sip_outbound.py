"""Outbound calls from an agent's phone (R11, issue 6 f): digest
authentication, each caller-ID choice shown to the trunk in From and
P-Asserted-Identity, and a choice the user may not use refused with 403."""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg
import pytest

from gateway.server import Gateway
from gateway.store.credentials import ha1
from tests import factories
from tests.sipp_tools import PHONE_IP, TRUNK_IP, start_sipp, udp_exchange
from tests.test_sip_calls import sip_target

pytestmark = pytest.mark.timeout(120)
COMPANY, PERSONAL, BRIDGE, OFFICE = "+15550150001", "+15550150002", "+15550150003", "+15550150004"
GROUP_COMPANY = "+15550150005"
LEAD_PHONE = "+15557770001"


async def credentials(conn: asyncpg.Connection, user_id: int, username: str, password: str) -> None:
    await conn.execute(
        "UPDATE users SET sip_username = $2, sip_ha1 = $3 WHERE id = $1",
        user_id,
        username,
        ha1(username, "gateway", password),
    )


async def test_each_caller_id_choice_reaches_the_trunk(
    sip_gw: Gateway,
    trunk_port: int,
    conn: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    acct = await factories.account(conn)
    await factories.number(conn, acct.id, COMPANY)
    await factories.number(conn, acct.id, PERSONAL, kind="personal", owner_user_id=acct.owner_id)
    bridge = await factories.number(conn, acct.id, BRIDGE)
    await conn.execute("UPDATE numbers SET bridge = true WHERE id = $1", bridge)
    lead = await factories.lead(conn, acct.id, acct.owner_id, LEAD_PHONE)
    await credentials(conn, acct.owner_id, "owner1", "s3cret-owner")
    assert sip_gw.keeper is not None
    # The caller's group has a company number of its own, bought later (higher id):
    # "company" means that one, as R10's auto texts do (issue 15, item 4).
    await factories.number(conn, acct.id, GROUP_COMPANY, office_id=acct.office_id)
    await conn.execute(
        "INSERT INTO user_offices (account_id, user_id, office_id) VALUES ($1, $2, $3)",
        acct.id,
        acct.owner_id,
        acct.office_id,
    )
    await sip_gw.keeper.wait_until(
        lambda index: (
            index.user(acct.owner_id) is not None
            and acct.office_id in index.user(acct.owner_id).office_ids  # type: ignore[union-attr]
            and index.number(GROUP_COMPANY) is not None
        )
    )

    choices = [("company", GROUP_COMPANY), ("personal", PERSONAL), ("bridge", BRIDGE), (COMPANY, COMPANY)]
    trunk = await start_sipp(
        "trunk",
        "uas_agent.xml",
        tmp_path,
        ip=TRUNK_IP,
        port=trunk_port,
        calls=len(choices),
        trace_messages=True,
    )
    phone = await start_sipp(
        "phone",
        "uac_outbound.xml",
        tmp_path,
        ip=PHONE_IP,
        remote=sip_target(sip_gw),
        calls=len(choices),
        limit=1,
        rows=[[LEAD_PHONE, choice] for choice, _ in choices],
        auth=("owner1", "s3cret-owner"),
        auth_uri=f"{LEAD_PHONE}@{sip_target(sip_gw)}",
    )
    assert await phone.wait(40) == 0, phone.errors()
    assert await trunk.wait(20) == 0, trunk.errors()

    invites = [block for block in trunk.messages().split("INVITE sip:")[1:] if "P-Asserted-Identity" in block]
    shown = [re.search(r"From: <sip:(\+\d+)@", block).group(1) for block in invites]  # type: ignore[union-attr]
    asserted = [re.search(r"P-Asserted-Identity: <sip:(\+\d+)@", b).group(1) for b in invites]  # type: ignore[union-attr]
    assert shown == asserted == [number for _, number in choices]
    assert all(block.startswith(f"{LEAD_PHONE}@{TRUNK_IP}") for block in invites)
    # Topology hiding: the trunk never sees the phone's address.
    assert PHONE_IP + ":" + str(phone.port) not in trunk.messages()

    assert sip_gw.recorder is not None and await sip_gw.recorder.drain(10)
    rows = await conn.fetch("SELECT * FROM call_records WHERE direction = 'outbound' ORDER BY id")
    assert [(r["disposition"], r["answered_by"], r["callee_e164"]) for r in rows] == [
        ("answered", acct.owner_id, LEAD_PHONE)
    ] * 4
    assert [r["caller_e164"] for r in rows] == [number for _, number in choices]
    charged = await conn.fetchval("SELECT count(*) FROM usage_ledger WHERE user_id = $1", acct.owner_id)
    assert charged == 4  # R9: minutes to the user who called
    timeline = await conn.fetchval(
        "SELECT count(*) FROM timeline_events WHERE lead_id = $1 AND direction = 'outbound'", lead
    )
    assert timeline == 4


async def test_a_caller_id_the_user_may_not_use_is_refused(
    sip_gw: Gateway,
    conn: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    acct = await factories.account(conn)
    await factories.number(conn, acct.id, COMPANY)
    await credentials(conn, acct.agent_id, "agent1", "s3cret-agent")
    assert sip_gw.keeper is not None
    await sip_gw.keeper.wait_until(lambda index: index.user(acct.agent_id) is not None)
    # A standard package has no personal number (R11); there is no bridge number.
    phone = await start_sipp(
        "phone",
        "uac_outbound_refused.xml",
        tmp_path,
        ip=PHONE_IP,
        remote=sip_target(sip_gw),
        calls=2,
        limit=1,
        rows=[[LEAD_PHONE, "personal"], [LEAD_PHONE, "bridge"]],
        auth=("agent1", "s3cret-agent"),
        auth_uri=f"{LEAD_PHONE}@{sip_target(sip_gw)}",
    )
    assert await phone.wait(20) == 0, phone.errors()


async def test_wrong_password_and_no_credentials(sip_gw: Gateway, conn: asyncpg.Connection) -> None:
    """Without credentials: a 407 challenge. Wrong ones: 403, and nothing rings."""
    acct = await factories.account(conn)
    await credentials(conn, acct.agent_id, "agent2", "right")
    invite = (
        "INVITE sip:+15557770009@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-o1\r\n"
        "From: <sip:agent2@127.0.0.1>;tag=a\r\nTo: <sip:+15557770009@127.0.0.1>\r\nCall-ID: out-1\r\n"
        "CSeq: 1 INVITE\r\nMax-Forwards: 70\r\n{auth}Content-Length: 0\r\n\r\n"
    )
    target = ("127.0.0.1", sip_gw.sip.port)  # type: ignore[union-attr]
    replies = await udp_exchange(invite.format(auth="").encode(), target, source_ip=PHONE_IP, expect=2)
    assert replies[-1].startswith(b"SIP/2.0 407")
    challenge = re.search(rb'nonce="([^"]+)"', replies[-1]).group(1).decode()  # type: ignore[union-attr]
    wrong = (
        f'Proxy-Authorization: Digest username="agent2", realm="gateway", nonce="{challenge}", '
        f'uri="sip:+15557770009@127.0.0.1", response="{"0" * 32}"\r\n'
    )
    invite2 = invite.replace("z9hG4bK-o1", "z9hG4bK-o2").replace("CSeq: 1", "CSeq: 2")
    replies = await udp_exchange(invite2.format(auth=wrong).encode(), target, source_ip=PHONE_IP, expect=2)
    assert replies[-1].startswith(b"SIP/2.0 403")
    assert sip_gw.sip is not None and not sip_gw.sip.core.calls
