"""The SIP entry point under ordinary and hostile input (issue 6 g, issue 5):
texts by SIP MESSAGE through SIPp, 415/403/413, retransmission dedupe, and a
burst of malformed datagrams (RFC 4475 torture cases among them) that leaves
the server answering with no slot taken and no exception escaped."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from gateway.server import Gateway
from tests import factories
from tests.sipp_tools import CARRIER_IP, start_sipp, udp_exchange
from tests.test_sip_calls import sip_target

pytestmark = pytest.mark.timeout(60)
NUMBER = "+15550160000"
LEAD = "+15550160001"


def message(*, branch: str, call_id: str = "m-1", body: bytes = b"hello", ctype: str = "text/plain") -> bytes:
    head = (
        f"MESSAGE sip:{NUMBER}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {CARRIER_IP}:5070;branch={branch}\r\n"
        f"From: <sip:{LEAD}@{CARRIER_IP}>;tag=m\r\nTo: <sip:{NUMBER}@127.0.0.1>\r\nCall-ID: {call_id}\r\n"
        f"CSeq: 7 MESSAGE\r\nMax-Forwards: 70\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def setup(conn: asyncpg.Connection, sip_gw: Gateway) -> factories.Account:
    acct = await factories.account(conn)
    await factories.number(conn, acct.id, NUMBER)
    await factories.lead(conn, acct.id, acct.agent_id, LEAD)
    assert sip_gw.keeper is not None
    await sip_gw.keeper.wait_until(lambda index: index.number(NUMBER) is not None)
    return acct


async def test_text_by_sip_message_through_sipp(
    sip_gw: Gateway, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    acct = await setup(conn, sip_gw)
    trunk = await start_sipp(
        "trunk",
        "uac_message.xml",
        tmp_path,
        ip=CARRIER_IP,
        remote=sip_target(sip_gw),
        service=NUMBER,
        rows=[[LEAD]],
    )
    assert await trunk.wait(20) == 0, trunk.errors()
    row = await conn.fetchrow("SELECT * FROM messages")
    assert (row["provider"], row["from_e164"], row["to_e164"], row["user_id"]) == (
        "sip",
        LEAD,
        NUMBER,
        acct.agent_id,
    )
    assert row["body"].strip() == "Is the house on Elm Street still for sale?"
    assert await conn.fetchval("SELECT count(*) FROM timeline_events WHERE channel = 'text'") == 1


async def test_message_answers_and_retransmissions(sip_gw: Gateway, conn: asyncpg.Connection) -> None:
    await setup(conn, sip_gw)
    target = ("127.0.0.1", sip_gw.sip.port)  # type: ignore[union-attr]

    (reply,) = await udp_exchange(message(branch="z9hG4bK-a"), target)
    assert reply.startswith(b"SIP/2.0 202 Accepted")
    assert b"Contact:" not in reply and reply.endswith(b"Content-Length: 0\r\n\r\n")
    (again,) = await udp_exchange(message(branch="z9hG4bK-a"), target)  # UDP retransmission
    assert again.startswith(b"SIP/2.0 202")
    (new_tx,) = await udp_exchange(message(branch="z9hG4bK-b"), target)  # same Call-ID and CSeq
    assert new_tx.startswith(b"SIP/2.0 202")
    assert await conn.fetchval("SELECT count(*) FROM messages") == 1

    (sms,) = await udp_exchange(
        message(branch="z9hG4bK-c", call_id="m-2", ctype="application/vnd.3gpp.sms"), target
    )
    assert sms.startswith(b"SIP/2.0 415") and b"Accept: text/plain" in sms
    (big,) = await udp_exchange(message(branch="z9hG4bK-d", call_id="m-3", body=b"x" * 5000), target)
    assert big.startswith(b"SIP/2.0 413")
    (stranger,) = await udp_exchange(
        message(branch="z9hG4bK-e", call_id="m-4"), target, source_ip="127.0.0.5"
    )
    assert stranger.startswith(b"SIP/2.0 403")
    assert await conn.fetchval("SELECT count(*) FROM messages") == 1


TORTURE = [
    b"",
    b"\r\n\r\n",
    b"\x00\xff\xfe garbage \x80",
    b"INVITE sip:+15550160000@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2;branch=z9hG4bK-t",  # truncated
    b"INVITE sip:+15550160000@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2;branch=z9hG4bK-t1\r\n"
    b"From: <sip:a@b>;tag=1\r\nTo: <sip:+15550160000@127.0.0.1>\r\nCSeq: 1 INVITE\r\n\r\n",  # no Call-ID
    b"INVITE sip:+15550160000@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2;branch=z9hG4bK-t2\r\n"
    b"From: <sip:a@b>;tag=1\r\nTo: <sip:+15550160000@127.0.0.1>\r\nCall-ID: t2\r\nCSeq: 1 BYE\r\n\r\n",
    b"INVITE sip:+15550160000@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2;branch=z9hG4bK-t3\r\n"
    b"From: <sip:a@b>;tag=1\r\nTo: <sip:+15550160000@127.0.0.1>\r\nCall-ID: t3\r\nCSeq: -5 INVITE\r\n"
    b"Content-Length: -999\r\n\r\n",  # RFC 4475 3.1.2.7-style negative numbers
    b"INVITE sip:+15550160000@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2;branch=z9hG4bK-t4\r\n"
    b"From: <sip:a@b>;tag=1\r\nTo: <sip:+15550160000@127.0.0.1>\r\nCall-ID: t4\r\nCSeq: 1 INVITE\r\n"
    b"Content-Length: 9999\r\n\r\nv=0\r\n",  # body shorter than Content-Length (RFC 4475 3.1.2.5)
    b"INVITE sip:+15550160000@127.0.0.1 SIP/7.0\r\nVia: SIP/7.0/UDP 127.0.0.2;branch=z9hG4bK-t5\r\n\r\n",
    b"INVITE <sip:+15550160000@127.0.0.1> SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2;branch=z9hG4bK-t6\r\n"
    b"From: <sip:a@b>;tag=1\r\nTo: <sip:+15550160000@127.0.0.1>\r\nCall-ID: t6\r\nCSeq: 1 INVITE\r\n\r\n",
    b"NEWMETHOD sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2;branch=z9hG4bK-t7\r\n"
    b"From: <sip:a@b>;tag=1\r\nTo: <sip:x@127.0.0.1>\r\nCall-ID: t7\r\nCSeq: 1 NEWMETHOD\r\n\r\n",
    b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK-nobody\r\nCSeq: 1 INVITE\r\n\r\n",
    b"SIP/2.0 abc\r\n\r\n",
    b"ACK sip:x@127.0.0.1 SIP/2.0\r\n\r\n",
    b"INVITE sip:+15550160000@127.0.0.1 SIP/2.0\r\n" + b"X-Long: " + b"a" * 60000 + b"\r\n\r\n",
    b"INVITE sip:+15550160000@127.0.0.1 SIP/2.0\r\n" + b"X: y\r\n" * 400 + b"\r\n",  # too many headers
    b"INVITE sip:+15550160000@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2;branch=z9hG4bK-t8\r\n"
    b"From: \xc3\x28 <sip:a@b>;tag=1\r\nTo: <sip:+15550160000@127.0.0.1>;tag=nope\r\nCall-ID: t8\r\n"
    b"CSeq: 1 INVITE\r\n\r\n",  # invalid UTF-8, and a To tag naming no dialog
    b"CANCEL sip:+15550160000@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2;branch=z9hG4bK-none\r\n"
    b"From: <sip:a@b>;tag=1\r\nTo: <sip:+15550160000@127.0.0.1>\r\nCall-ID: none\r\nCSeq: 1 CANCEL\r\n\r\n",
]


async def test_malformed_burst_leaves_the_server_answering(sip_gw: Gateway, conn: asyncpg.Connection) -> None:
    await setup(conn, sip_gw)
    assert sip_gw.sip is not None
    target = ("127.0.0.1", sip_gw.sip.port)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=(CARRIER_IP, 0))
    for _ in range(20):
        for datagram in TORTURE:
            transport.sendto(datagram, target)
        await asyncio.sleep(0)
    transport.close()

    options = (
        "OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bK-ping\r\n"
        "From: <sip:ping@127.0.0.2>;tag=p\r\nTo: <sip:127.0.0.1>\r\nCall-ID: ping\r\nCSeq: 1 OPTIONS\r\n\r\n"
    )
    (pong,) = await udp_exchange(options.encode(), target, wait_s=3)
    assert pong.startswith(b"SIP/2.0 200 OK")
    assert sip_gw.slots.total() == 0
    errors = sip_gw.metrics.registry.get_sample_value("gateway_sip_handler_errors_total")
    assert errors == 0
    malformed = sip_gw.metrics.registry.get_sample_value("gateway_sip_malformed_total", {"transport": "udp"})
    assert malformed is not None and malformed >= 20 * 5

    (no_call_id,) = await udp_exchange(TORTURE[4], target)
    assert no_call_id.startswith(b"SIP/2.0 400")
    (unknown,) = await udp_exchange(TORTURE[10], target)
    assert unknown.startswith(b"SIP/2.0 501")


async def test_tcp_garbage_closes_only_that_connection(sip_gw: Gateway) -> None:
    assert sip_gw.sip is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", sip_gw.sip.port)
    writer.write(b"INVITE sip:x SIP/2.0\r\nContent-Length: 99999999\r\n\r\n")
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the gateway
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", sip_gw.sip.port)
    writer.write(
        b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK-tcp\r\n"
        b"From: <sip:p@127.0.0.1>;tag=p\r\nTo: <sip:127.0.0.1>\r\nCall-ID: tcp-1\r\nCSeq: 1 OPTIONS\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"SIP/2.0 200 OK")
    writer.close()
