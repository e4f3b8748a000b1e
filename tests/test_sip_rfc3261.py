"""The SIP core against real SIPp and raw sockets on loopback (issue 11):
the defects a lossy network, a carrier and a hostile phone found, each
against a running gateway. The fake-clock twins of these tests are in
test_sip_core.py."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from gateway import config
from gateway.server import Gateway
from gateway.store.credentials import ha1
from tests import factories
from tests.conftest import sip_settings
from tests.sipp_tools import CARRIER_IP, PHONE_IP, free_port, start_sipp, udp_endpoint, udp_exchange
from tests.test_sip_calls import (
    NUMBER,
    SDP,
    agent_number,
    company_number,
    phone,
    records,
    routable,
    sip_target,
)

pytestmark = pytest.mark.timeout(150)


async def test_at_10_percent_loss_every_call_gets_its_final_and_no_slot_leaks(
    sip_gw: Gateway, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """SIPp drops 10% of what it sends and receives: INVITEs, 100/180/200/486,
    ACKs, BYEs and their 200s. A limit of 4 makes many calls 486s, whose
    retransmission (Timer G) the old core lacked (8 of 200 calls got no final)."""
    _, port, _ = await agent_number(sip_gw, conn, max_concurrent_calls=4)
    calls = 200
    agent = await start_sipp("agent", "uas_agent.xml", tmp_path, ip=PHONE_IP, port=port, calls=calls)
    carrier = await start_sipp(
        "carrier",
        "uac_dialog.xml",
        tmp_path,
        ip=CARRIER_IP,
        remote=sip_target(sip_gw),
        service=NUMBER,
        calls=calls,
        rate=40,
        limit=20,
        pause_ms=300,
        lost=10,
        timeout_s=90,
    )
    await carrier.wait(120)
    counts = carrier.counts()
    await agent.stop()
    # A call whose ACK SIPp "lost" for good is still waiting for it: Timer H
    # (64*T1 after the 200) hangs it up on both sides. Nothing else may be left.
    assert sip_gw.sip is not None
    deadline = asyncio.get_running_loop().time() + 40
    while sip_gw.sip.core.calls and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.5)
    rows = await records(sip_gw, conn)
    finals = [r["disposition"] for r in rows]
    assert counts["TotalCallCreated"] == calls
    assert counts["SuccessfulCall"] >= calls - 2, (counts, carrier.errors()[-2000:])
    assert len(rows) == calls  # every call that reached the gateway ended, and was recorded
    assert set(finals) <= {"answered", "busy_limit", "failed"}  # failed: Timer H, no ACK ever came
    assert finals.count("busy_limit") > 0 and finals.count("answered") > 0
    assert sip_gw.slots.total() == 0


@pytest.fixture
async def looping_gw(db_dsn: str, trunk_port: int) -> AsyncIterator[Gateway]:
    """A gateway that trusts its own address as a trunk: a destination that
    points back at it turns its own leg into a new inbound call."""
    s = sip_settings(db_dsn, trunk_port)
    sip = config.replace(s.sip, trunk_cidrs=f"{CARRIER_IP}/32,127.0.0.1/32")
    gateway = Gateway(config.replace(s, sip=sip))
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


async def test_a_destination_that_routes_back_is_a_loop_not_fifty_calls(
    looping_gw: Gateway, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """Defect 8: one INVITE became 51 INVITEs, 50 records and 50 notifications."""
    acct = await factories.account(conn)
    assert looping_gw.sip is not None
    await conn.execute(
        "UPDATE users SET call_destination = $2 WHERE id = $1",
        acct.agent_id,
        f"sip:{NUMBER}@127.0.0.1:{looping_gw.sip.port}",
    )
    number_id = await company_number(conn, acct, [acct.agent_id], unknown_step_timeout_s=5)
    await routable(looping_gw, number_id, acct.agent_id)
    caller = await start_sipp(
        "caller",
        "uac_unanswered.xml",
        tmp_path,
        ip=CARRIER_IP,
        remote=sip_target(looping_gw),
        service=NUMBER,
        rows=[["+15550199999"]],
    )
    assert await caller.wait(15) == 0, caller.errors()  # 480: the only leg met 482
    rows = await records(looping_gw, conn)
    assert [r["disposition"] for r in rows] == ["no_answer"]
    assert await conn.fetchval("SELECT count(*) FROM notifications") == 1
    assert looping_gw.slots.total() == 0


async def test_a_destination_given_as_a_host_name_is_reached(
    sip_gw: Gateway, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """Defect 11: uvloop's sendto refuses names; they are resolved (and cached)."""
    acct = await factories.account(conn)
    port = free_port(PHONE_IP)
    await conn.execute(
        "UPDATE users SET call_destination = $2 WHERE id = $1", acct.agent_id, f"sip:agent@localhost:{port}"
    )
    number_id = await company_number(conn, acct, [acct.agent_id])
    await routable(sip_gw, number_id, acct.agent_id)
    agent = await start_sipp("agent", "uas_agent.xml", tmp_path, ip=PHONE_IP, port=port, calls=2)
    carrier = await start_sipp(
        "carrier",
        "uac_dialog.xml",
        tmp_path,
        ip=CARRIER_IP,
        remote=sip_target(sip_gw),
        service=NUMBER,
        calls=2,
        pause_ms=200,
    )
    assert await carrier.wait(20) == 0, carrier.errors()
    assert await agent.wait(20) == 0, agent.errors()
    assert [r["disposition"] for r in await records(sip_gw, conn)] == ["answered", "answered"]


async def test_invite_retransmissions_during_a_slow_round_robin_are_one_call(
    sip_gw: Gateway, conn: asyncpg.Connection, db_dsn: str, tmp_path: Path
) -> None:
    """Defect 4: with the turn's row locked (a slow database), the carrier's
    retransmitted INVITEs used to become three calls, three legs, three slots."""
    acct = await factories.account(conn)
    other = await factories.user(conn, acct.id)
    port = free_port(PHONE_IP)
    for user in (acct.agent_id, other):
        await phone(conn, user, port)
    number_id = await company_number(conn, acct, [acct.agent_id, other], unknown_route="round_robin")
    await conn.execute("INSERT INTO round_robin_cursors (number_id, turns) VALUES ($1, 0)", number_id)
    await routable(sip_gw, number_id, acct.agent_id, other)
    agent = await start_sipp("agent", "uas_agent.xml", tmp_path, ip=PHONE_IP, port=port, calls=1)
    blocker = await asyncpg.connect(db_dsn)
    tx = blocker.transaction()
    await tx.start()
    await blocker.execute("SELECT * FROM round_robin_cursors WHERE number_id = $1 FOR UPDATE", number_id)
    carrier_port = free_port(CARRIER_IP)
    transport, got = await udp_endpoint(CARRIER_IP, carrier_port)
    assert sip_gw.sip is not None
    invite = (
        f"INVITE sip:{NUMBER}@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {CARRIER_IP}:{carrier_port};branch=z9hG4bK-rr\r\n"
        f"From: <sip:+15557770042@{CARRIER_IP}>;tag=r\r\nTo: <sip:{NUMBER}@127.0.0.1>\r\nCall-ID: rr-1\r\n"
        f"CSeq: 1 INVITE\r\nContact: <sip:c@{CARRIER_IP}:{carrier_port}>\r\nMax-Forwards: 70\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {len(SDP)}\r\n\r\n{SDP}"
    ).encode()
    try:
        for _ in range(3):  # Timer A at 0, 0.5 s, 1.5 s while the database waits
            transport.sendto(invite, ("127.0.0.1", sip_gw.sip.port))
            await asyncio.sleep(0.6)
        assert sip_gw.slots.total() == 1 and len(sip_gw.sip.core.calls) == 1
        await tx.rollback()
        ok = b""
        while not ok.startswith(b"SIP/2.0 200"):
            ok = await asyncio.wait_for(got.get(), 10)
        tag = re.search(rb"To: [^\r]*tag=([^\r;]+)", ok).group(1).decode()  # type: ignore[union-attr]
        ack = invite.decode().split("Content-Type")[0].replace("INVITE sip", "ACK sip", 1)
        ack = ack.replace("CSeq: 1 INVITE", "CSeq: 1 ACK").replace(
            f"To: <sip:{NUMBER}@127.0.0.1>", f"To: <sip:{NUMBER}@127.0.0.1>;tag={tag}"
        )
        transport.sendto((ack + "Content-Length: 0\r\n\r\n").encode(), ("127.0.0.1", sip_gw.sip.port))
        bye = (
            ack.replace("ACK sip", "BYE sip", 1)
            .replace("CSeq: 1 ACK", "CSeq: 2 BYE")
            .replace("z9hG4bK-rr", "z9hG4bK-rr-bye")
        )
        transport.sendto((bye + "Content-Length: 0\r\n\r\n").encode(), ("127.0.0.1", sip_gw.sip.port))
        assert await agent.wait(20) == 0, agent.errors()
    finally:
        transport.close()
        await blocker.close()
    assert agent.counts()["SuccessfulCall"] == 1
    assert [r["disposition"] for r in await records(sip_gw, conn)] == ["answered"]
    assert sip_gw.slots.total() == 0


async def test_crlf_keepalives_lone_crlf_and_other_sip_versions(sip_gw: Gateway) -> None:
    """Defect 10: CRLFCRLF on TCP gets a CRLF pong (RFC 5626 §3.5.1); a lone
    CRLF before a request does not lose it; SIP/3.0 gets 505."""
    assert sip_gw.sip is not None
    port = sip_gw.sip.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\r\n\r\n")
    assert await asyncio.wait_for(reader.readexactly(2), 2) == b"\r\n"
    writer.close()
    options = (
        f"OPTIONS sip:gw@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {CARRIER_IP}:5999;branch=z9hG4bK-o1;rport\r\n"
        f"From: <sip:probe@{CARRIER_IP}>;tag=o\r\nTo: <sip:gw@127.0.0.1>\r\n"
        "Call-ID: opt-1\r\nCSeq: 1 OPTIONS\r\n"
        "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    (reply,) = await udp_exchange(b"\r\n" + options.encode(), ("127.0.0.1", port))
    assert reply.startswith(b"SIP/2.0 200")
    via = re.search(rb"Via: ([^\r]+)", reply).group(1)  # type: ignore[union-attr]
    assert b";received=127.0.0.2;rport=" in via  # RFC 3581
    v3 = options.replace("SIP/2.0\r\n", "SIP/3.0\r\n", 1).replace("z9hG4bK-o1", "z9hG4bK-o2")
    (reply,) = await udp_exchange(v3.encode(), ("127.0.0.1", port))
    assert reply.startswith(b"SIP/2.0 505")


async def test_a_captured_authorization_cannot_be_replayed(sip_gw: Gateway, conn: asyncpg.Connection) -> None:
    """Defect 1 against the running gateway: a header computed for one
    destination fails on another, and the same nonce-count fails twice."""
    acct = await factories.account(conn)
    await factories.number(conn, acct.id, "+15550160099")  # a company number to call from (R11)
    await conn.execute(
        "UPDATE users SET sip_username = 'agent9', sip_ha1 = $2 WHERE id = $1",
        acct.agent_id,
        ha1("agent9", "gateway", "pw"),
    )
    assert sip_gw.sip is not None
    target = ("127.0.0.1", sip_gw.sip.port)

    def invite(dest: str, branch: str, auth: str = "") -> bytes:
        return (
            f"INVITE sip:{dest}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE_IP}:5998;branch={branch}\r\n"
            f"From: <sip:agent9@127.0.0.1>;tag=a\r\nTo: <sip:{dest}@127.0.0.1>\r\nCall-ID: {branch}\r\n"
            f"CSeq: 1 INVITE\r\nMax-Forwards: 70\r\n{auth}Content-Length: 0\r\n\r\n"
        ).encode()

    replies = await udp_exchange(invite("+15551112222", "z9hG4bK-d1"), target, source_ip=PHONE_IP, expect=2)
    nonce = re.search(rb'nonce="([^"]+)"', replies[-1]).group(1).decode()  # type: ignore[union-attr]
    uri = "sip:+15551112222@127.0.0.1"
    md5 = lambda s: hashlib.md5(s.encode()).hexdigest()  # noqa: E731
    response = md5(f"{ha1('agent9', 'gateway', 'pw')}:{nonce}:00000001:c:auth:{md5(f'INVITE:{uri}')}")
    header = (
        f'Proxy-Authorization: Digest username="agent9", realm="gateway", nonce="{nonce}", uri="{uri}", '
        f'response="{response}", qop=auth, nc=00000001, cnonce="c", algorithm=MD5\r\n'
    )
    replayed = await udp_exchange(
        invite("+15559998888", "z9hG4bK-d2", header), target, source_ip=PHONE_IP, expect=2
    )
    assert replayed[-1].startswith(b"SIP/2.0 403")
    first = await udp_exchange(
        invite("+15551112222", "z9hG4bK-d3", header), target, source_ip=PHONE_IP, expect=2
    )
    assert not first[-1].startswith(b"SIP/2.0 403")  # genuine: it passes and the call is placed
    again = await udp_exchange(
        invite("+15551112222", "z9hG4bK-d4", header), target, source_ip=PHONE_IP, expect=2
    )
    assert again[-1].startswith(b"SIP/2.0 403")  # the same nc on a new Call-ID
    assert not sip_gw.sip.core.calls or all(c.outcome.callee == "+15551112222" for c in sip_gw.sip.core.calls)


async def test_bye_in_the_early_dialog_stops_the_ringing_and_frees_the_slot(
    sip_gw: Gateway, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """Defect 3: a BYE with the 180's To tag got 481 and the agent kept ringing."""
    _, port, _ = await agent_number(sip_gw, conn, max_concurrent_calls=1)
    ringing = await start_sipp("ringing", "uas_ring_only.xml", tmp_path, ip=PHONE_IP, port=port)
    caller = await start_sipp(
        "caller", "uac_early_bye.xml", tmp_path, ip=CARRIER_IP, remote=sip_target(sip_gw), service=NUMBER
    )
    assert await caller.wait(15) == 0, caller.errors()
    assert await ringing.wait(15) == 0, ringing.errors()  # it was CANCELled
    assert [r["disposition"] for r in await records(sip_gw, conn)] == ["canceled"]
    assert sip_gw.slots.total() == 0


async def test_delayed_offer_reaches_the_agent_in_the_ack(
    sip_gw: Gateway, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """Defect 7: the caller's answer (in its ACK) never reached the agent; the
    gateway sent an empty ACK of its own first. Both SIPps check the SDP."""
    _, port, _ = await agent_number(sip_gw, conn)
    agent = await start_sipp("agent", "uas_delayed_offer.xml", tmp_path, ip=PHONE_IP, port=port)
    caller = await start_sipp(
        "caller", "uac_delayed_offer.xml", tmp_path, ip=CARRIER_IP, remote=sip_target(sip_gw), service=NUMBER
    )
    assert await caller.wait(15) == 0, caller.errors()
    assert await agent.wait(15) == 0, agent.errors()
    assert [r["disposition"] for r in await records(sip_gw, conn)] == ["answered"]


async def test_a_retransmitted_cancel_is_answered_200_again(
    sip_gw: Gateway, conn: asyncpg.Connection
) -> None:
    """Defect 3: the retransmission of a CANCEL whose 200 was lost got 481."""
    acct = await factories.account(conn)
    number_id = await company_number(conn, acct, [acct.agent_id])
    await conn.execute(
        "UPDATE users SET call_destination = 'sip:agent@127.0.0.1:9' WHERE id = $1", acct.agent_id
    )
    await routable(sip_gw, number_id, acct.agent_id)
    assert sip_gw.sip is not None
    target = ("127.0.0.1", sip_gw.sip.port)
    head = (
        f"sip:{NUMBER}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {CARRIER_IP}:5997;branch=z9hG4bK-cx\r\n"
        f"From: <sip:+15557770043@{CARRIER_IP}>;tag=x\r\nTo: <sip:{NUMBER}@127.0.0.1>\r\nCall-ID: cx-1\r\n"
        "Max-Forwards: 70\r\n"
    )
    transport, got = await udp_endpoint(CARRIER_IP, 5997)

    async def answers(count: int) -> list[bytes]:
        return [(await asyncio.wait_for(got.get(), 3)).split(b"\r\n", 1)[0] for _ in range(count)]

    try:
        transport.sendto(f"INVITE {head}CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n".encode(), target)
        assert await answers(1) == [b"SIP/2.0 100 Trying"]
        cancel = f"CANCEL {head}CSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n".encode()
        transport.sendto(cancel, target)
        assert sorted(await answers(2)) == [b"SIP/2.0 200 OK", b"SIP/2.0 487 Request Terminated"]
        transport.sendto(cancel, target)  # as if the 200 was lost
        again = await answers(1)
        while again == [b"SIP/2.0 487 Request Terminated"]:  # Timer G repeats the unACKed 487
            again = await answers(1)
        assert again == [b"SIP/2.0 200 OK"]
    finally:
        transport.close()
    assert sip_gw.slots.total() == 0
