"""Faults, against real processes and a real cluster (issue 7): a Postgres
outage loses nothing (calls route from the snapshot, their records and the
texts wait in the durable outbox), kill -9 loses nothing acknowledged and
charges nothing twice, and SIGTERM drains: new INVITEs get 503."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import asyncpg
import pytest
from multidict import MultiDict
from twilio.request_validator import RequestValidator

from gateway.store.embedded import EmbeddedPostgres
from tests import factories
from tests.gateway_process import GatewayProcess
from tests.sipp_tools import CARRIER_IP, PHONE_IP, free_port, start_sipp, udp_exchange

pytestmark = pytest.mark.timeout(180)
NUMBER, LEAD = "+15550190000", "+15550190001"
FORM = "application/x-www-form-urlencoded"
ANSWERED = "SELECT count(*) FROM call_records WHERE disposition = 'answered'"
TOKEN, PUBLIC = "0123456789abcdef0123456789abcdef", "https://gw.example.com"


def env_for(dsn: str, outbox: Path) -> dict[str, str]:
    return {
        "GATEWAY_DATABASE_URL": dsn,
        "GATEWAY_SIP_PORT": "0",
        "GATEWAY_SIP_TRUNK_CIDRS": f"{CARRIER_IP}/32",
        "GATEWAY_OUTBOX_DIR": str(outbox),
        "GATEWAY_TWILIO_AUTH_TOKEN": TOKEN,
        "GATEWAY_HTTP_PUBLIC_BASE_URL": PUBLIC,
        "GATEWAY_SHUTDOWN_GRACE_PERIOD_S": "10",
        "GATEWAY_DATABASE_CONNECT_TIMEOUT_S": "1",
    }


async def seed(dsn: str, agent_port: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        acct = await factories.account(conn)
        await conn.execute(
            "UPDATE users SET call_destination = $2 WHERE id = $1",
            acct.agent_id,
            f"sip:a@{PHONE_IP}:{agent_port}",
        )
        number_id = await factories.number(conn, acct.id, NUMBER)
        await conn.execute(
            "INSERT INTO number_route_targets (account_id, number_id, user_id, position)"
            " VALUES ($1, $2, $3, 0)",
            acct.id,
            number_id,
            acct.agent_id,
        )
        await factories.lead(conn, acct.id, acct.agent_id, LEAD)
    finally:
        await conn.close()


async def text(http_port: int, sid: str) -> int:
    """One signed Twilio webhook; its status."""
    path = "/v1/webhooks/twilio/messages"
    params = [("MessageSid", sid), ("From", LEAD), ("To", NUMBER), ("Body", f"text {sid}"), ("NumMedia", "0")]
    signature = RequestValidator(TOKEN).compute_signature(PUBLIC + path, MultiDict(params))
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s,
            s.post(
                f"http://127.0.0.1:{http_port}{path}",
                data=urlencode(params),
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    "X-Twilio-Signature": signature,
                },
            ) as r,
        ):
            return r.status
    except (aiohttp.ClientError, TimeoutError):
        return 0  # the process died under it: not acknowledged


def completed_calls(messages_log: str) -> set[str]:
    """Call-IDs whose BYE the carrier saw answered 200: calls that completed."""
    done = set()
    for block in messages_log.split("\n\n"):
        if block.lstrip().startswith("SIP/2.0 200") and "CSeq: 2 BYE" in block:
            found = re.search(r"Call-ID: (\S+)", block)
            if found:
                done.add(found.group(1))
    return done


async def test_database_outage_loses_nothing(private_cluster: EmbeddedPostgres, tmp_path: Path) -> None:
    agent_port = free_port(PHONE_IP)
    gw = GatewayProcess(env_for(private_cluster.dsn, tmp_path / "outbox"), tmp_path)
    await gw.start()
    try:
        await seed(private_cluster.dsn, agent_port)
        await gw.routable()
        await asyncio.to_thread(private_cluster.stop_server)
        state = await gw.ready()
        assert state["status"] == "degraded" and "database unreachable" in str(state["reason"])

        agent = await start_sipp("agent", "uas_agent.xml", tmp_path, ip=PHONE_IP, port=agent_port, calls=5)
        carrier = await start_sipp(
            "carrier", "uac_dialog.xml", tmp_path, ip=CARRIER_IP, remote=f"127.0.0.1:{gw.sip_port}",
            service=NUMBER, calls=5, rate=20, pause_ms=200,
        )  # fmt: skip
        statuses = [await text(gw.http_port, factories.twilio_sid(f"SMout{i}")) for i in range(5)]
        assert await carrier.wait(30) == 0, carrier.errors()  # routed and bridged from the snapshot
        assert await agent.wait(30) == 0
        assert statuses == [200] * 5  # acknowledged: durable in the outbox
        assert (await gw.ready())["outbox_backlog"] == 10

        await asyncio.to_thread(private_cluster.start_server)
        await gw.settled()
        conn = await asyncpg.connect(private_cluster.dsn)
        try:
            assert await conn.fetchval(ANSWERED) == 5
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM messages WHERE provider_message_id = ANY($1)",
                    [factories.twilio_sid(f"SMout{i}") for i in range(5)],
                )
                == 5
            )
            assert await conn.fetchval("SELECT count(*) FROM usage_ledger") == 10  # once each, never twice
        finally:
            await conn.close()
    finally:
        await gw.close()


async def test_kill_9_under_load_loses_nothing_acknowledged(db_dsn: str, tmp_path: Path) -> None:
    agent_port = free_port(PHONE_IP)
    await seed(db_dsn, agent_port)
    gw = GatewayProcess(env_for(db_dsn, tmp_path / "outbox"), tmp_path)
    await gw.start()
    try:
        agent = await start_sipp("agent", "uas_agent.xml", tmp_path, ip=PHONE_IP, port=agent_port, calls=400)
        carrier = await start_sipp(
            "carrier", "uac_dialog.xml", tmp_path, ip=CARRIER_IP, remote=f"127.0.0.1:{gw.sip_port}",
            service=NUMBER, calls=400, rate=100, limit=40, pause_ms=150, trace_messages=True,
        )  # fmt: skip
        acked: list[str] = []

        async def texts() -> None:
            for i in range(1000):
                sid = factories.twilio_sid(f"SMkill{i}")
                if await text(gw.http_port, sid) == 200:
                    acked.append(sid)

        sender = asyncio.create_task(texts())
        while len(acked) < 50 or not completed_calls(carrier.messages()):  # traffic in flight to lose
            await asyncio.sleep(0.05)
        gw.kill()
        await gw.wait()
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        await carrier.stop()
        await agent.stop()
        completed = completed_calls(carrier.messages())
        assert completed and acked  # there was traffic to lose

        restarted = GatewayProcess(env_for(db_dsn, tmp_path / "outbox"), tmp_path)
        await restarted.start()
        try:
            await restarted.settled()
        finally:
            await restarted.close()
        conn = await asyncpg.connect(db_dsn)
        try:
            rows = await conn.fetch("SELECT sip_call_id, disposition FROM call_records")
            stored = {r["sip_call_id"] for r in rows if r["disposition"] == "answered"}
            assert completed <= stored  # every completed call, exactly once (UNIQUE)
            got = {
                r["provider_message_id"] for r in await conn.fetch("SELECT provider_message_id FROM messages")
            }
            assert set(acked) <= got
            minutes = await conn.fetchval("SELECT count(*) FROM usage_ledger WHERE kind = 'call_minutes'")
            assert minutes == len(stored)  # charged once per answered call, never twice
            segments = await conn.fetchval("SELECT count(*) FROM usage_ledger WHERE kind = 'text_segments'")
            assert segments == len(got)
        finally:
            await conn.close()
    finally:
        await gw.close()


async def test_sigterm_drains_calls_and_refuses_new_ones(db_dsn: str, tmp_path: Path) -> None:
    agent_port = free_port(PHONE_IP)
    await seed(db_dsn, agent_port)
    gw = GatewayProcess(env_for(db_dsn, tmp_path / "outbox"), tmp_path)
    await gw.start()
    try:
        agent = await start_sipp("agent", "uas_agent.xml", tmp_path, ip=PHONE_IP, port=agent_port)
        carrier = await start_sipp(
            "carrier", "uac_dialog.xml", tmp_path, ip=CARRIER_IP, remote=f"127.0.0.1:{gw.sip_port}",
            service=NUMBER, pause_ms=2500,
        )  # fmt: skip
        await gw.until(lambda s: s.get("active_calls") == 1, "the call is up")
        gw.terminate()
        for _ in range(50):  # /readyz says draining once new INVITEs are refused
            if "draining" in str((await gw.ready()).get("detail", "")):
                break
            await asyncio.sleep(0.05)
        invite = (
            f"INVITE sip:{NUMBER}@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {CARRIER_IP}:5999;branch=z9hG4bK-late\r\n"
            f"From: <sip:{LEAD}@{CARRIER_IP}>;tag=l\r\nTo: <sip:{NUMBER}@127.0.0.1>\r\nCall-ID: late-1\r\n"
            "CSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        (refused,) = await udp_exchange(invite.encode(), ("127.0.0.1", gw.sip_port))
        assert refused.startswith(b"SIP/2.0 503") and b"Retry-After:" in refused
        assert await carrier.wait(20) == 0, carrier.errors()  # the call in progress finished normally
        assert await agent.wait(20) == 0
        assert await gw.wait(20) == 0
        conn = await asyncpg.connect(db_dsn)
        try:
            assert await conn.fetchval(ANSWERED) == 1
        finally:
            await conn.close()
    finally:
        await gw.close()


async def test_database_stopped_mid_batch_acknowledges_only_what_is_stored(
    private_cluster: EmbeddedPostgres, tmp_path: Path
) -> None:
    """Issue 13: texts are in flight, in batches, when Postgres goes away (fast
    shutdown cuts the open transactions). Each request is either acknowledged
    (stored, or durable in the outbox and stored on replay) or answered 503
    for redelivery: after the restart, every 200 has its one message and its
    one usage row."""
    gw = GatewayProcess(env_for(private_cluster.dsn, tmp_path / "outbox"), tmp_path)
    await gw.start()
    try:
        await seed(private_cluster.dsn, free_port(PHONE_IP))
        await gw.routable()
        answers: dict[str, int] = {}
        stop = asyncio.Event()

        async def sender(worker: int) -> None:
            n = 0
            while not stop.is_set():
                sid = factories.twilio_sid(f"SMcut{worker}x{n}")
                answers[sid] = await text(gw.http_port, sid)
                n += 1

        senders = [asyncio.create_task(sender(w)) for w in range(24)]
        while sum(status == 200 for status in answers.values()) < 100:  # stored before the cut
            await asyncio.sleep(0.05)
        await asyncio.to_thread(private_cluster.stop_server)
        await gw.until(lambda s: int(str(s.get("outbox_backlog", 0))) >= 20, "texts in the outbox")
        stop.set()
        await asyncio.gather(*senders)
        assert (await gw.ready())["outbox_backlog"] > 0  # the cut came while texts were arriving
        await asyncio.to_thread(private_cluster.start_server)
        await gw.settled()
        acknowledged = [sid for sid, status in answers.items() if status == 200]
        assert set(answers.values()) <= {200, 503}, answers
        assert len(acknowledged) > 50  # texts flowed before and during the cut
        conn = await asyncpg.connect(private_cluster.dsn)
        try:
            stored = await conn.fetch(
                "SELECT m.provider_message_id, count(u.id) AS charged FROM messages m"
                " LEFT JOIN usage_ledger u ON u.message_id = m.id GROUP BY m.id"
            )
        finally:
            await conn.close()
        charged = {row["provider_message_id"]: row["charged"] for row in stored}
        assert [sid for sid in acknowledged if sid not in charged] == []  # never 200 without a row
        assert {charged[sid] for sid in acknowledged} == {1}  # and charged once
    finally:
        await gw.close()


async def test_the_outbox_starts_whatever_a_crash_left_in_its_files(tmp_path: Path) -> None:
    """Issue 17, item 9: a damaged line is skipped (and counted), a torn last
    line is ignored, and the offset is replaced atomically (no .tmp left)."""
    from gateway.store.outbox import Outbox

    outbox_dir = tmp_path / "outbox"
    outbox_dir.mkdir()
    good = b'{"kind": "call", "payload": {}}\n'
    (outbox_dir / "outbox.jsonl").write_bytes(good + b"{not json\n" + good + b'{"kind": "ca')
    (outbox_dir / "outbox.offset").write_text("0")
    outbox = Outbox(None, outbox_dir, lambda: None)  # type: ignore[arg-type]
    entries = outbox._read_pending()
    assert len(entries) == 2 and outbox.refused == 1
    outbox._write_offset(entries[-1].end)
    assert int((outbox_dir / "outbox.offset").read_text()) == entries[-1].end
    assert sorted(p.name for p in outbox_dir.iterdir()) == ["outbox.jsonl", "outbox.offset"]


async def test_an_outbox_batch_stores_its_good_entries_whatever_else_it_holds(
    db_dsn: str, tmp_path: Path
) -> None:
    """Entries are read back through the records' own types (pydantic): one
    that does not fit (damaged, or from an incompatible version) is counted
    and skipped. A value Postgres refuses fails the batch's one statement; the
    batch is then applied entry by entry, so its good calls are stored, and a
    call replayed inside the batch is stored once."""
    from datetime import UTC, datetime, timedelta

    from gateway.store.calls import CallRecord, call_to_json
    from gateway.store.index_queries import fetch_number
    from gateway.store.outbox import Outbox, _Entry

    conn = await asyncpg.connect(db_dsn)
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=1)
    try:
        acct = await factories.account(conn)
        number = await fetch_number(conn, await factories.number(conn, acct.id, "+15550107001"))
        assert number is not None
        at = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)

        def call(call_id: str) -> _Entry:
            record = CallRecord(
                call_id,
                "inbound",
                number,
                "+15550107002",
                number.e164,
                at,
                at + timedelta(seconds=3),
                "no_answer",
            )
            return _Entry("call", call_to_json(record))

        outbox = Outbox(pool, tmp_path / "outbox", lambda: None)  # type: ignore[arg-type,return-value]
        await outbox._apply(
            [
                _Entry("call", {"sip_call_id": "x"}),
                _Entry("text", {"provider": "twilio", "received_at": "not a time"}),
                call("a@carrier"),
                call("a@carrier"),
                call("x" * 600),  # the table's CHECK refuses it
                call("b@carrier"),
            ]
        )
        assert outbox.refused == 3
        stored = await conn.fetch("SELECT sip_call_id FROM call_records ORDER BY sip_call_id")
        assert [r["sip_call_id"] for r in stored] == ["a@carrier", "b@carrier"]
    finally:
        await pool.close()
        await conn.close()
