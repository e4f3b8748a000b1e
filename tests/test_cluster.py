"""Several gateways behave as one (issue 14): two `gateway serve` processes on
one Postgres, on different loopback addresses, with ``cluster.slots =
postgres``. R7's limit holds across them, a dead one's slots come back
within its lease, Postgres away degrades to each gateway's share and
reconciles, and round robin, event streams, index changes and SIP digest
nonces work whichever gateway a request reaches."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import asyncpg
import pytest
from multidict import MultiDict
from twilio.request_validator import RequestValidator

from gateway.store.api_keys import create_key
from gateway.store.credentials import ha1
from gateway.store.embedded import EmbeddedPostgres
from tests import factories
from tests.gateway_process import GatewayProcess
from tests.sipp_tools import CARRIER_IP, PHONE_IP, Sipp, free_port, start_sipp, udp_exchange
from tests.test_events import read_events
from tests.test_sip_calls import company_number, phone

pytestmark = pytest.mark.timeout(240)
NUMBER = "+15550230000"
A_IP, B_IP = "127.0.0.5", "127.0.0.6"
TOKEN, PUBLIC = "0123456789abcdef0123456789abcdef", "https://gw.example.com"
SECRET = "cluster-test-nonce-secret"
SLOTS = "SELECT count(*) FROM call_slots"


def cluster_env(dsn: str, sip_ip: str, workdir: Path, **extra: str) -> dict[str, str]:
    return {
        "GATEWAY_DATABASE_URL": dsn,
        "GATEWAY_SIP_HOST": sip_ip,
        "GATEWAY_SIP_PORT": "0",
        "GATEWAY_SIP_TRUNK_CIDRS": f"{CARRIER_IP}/32",
        "GATEWAY_SIP_NONCE_SECRET": SECRET,
        "GATEWAY_OUTBOX_DIR": str(workdir / "outbox"),
        "GATEWAY_CLUSTER_SLOTS": "postgres",
        "GATEWAY_CLUSTER_LEASE_S": "2",
        "GATEWAY_CLUSTER_HEARTBEAT_S": "0.5",
        "GATEWAY_TWILIO_AUTH_TOKEN": TOKEN,
        "GATEWAY_HTTP_PUBLIC_BASE_URL": PUBLIC,
        "GATEWAY_DATABASE_CONNECT_TIMEOUT_S": "1",
        "GATEWAY_SHUTDOWN_GRACE_PERIOD_S": "5",
        **extra,
    }


@contextlib.asynccontextmanager
async def two_gateways(dsn: str, tmp_path: Path, **extra: str) -> AsyncIterator[tuple[GatewayProcess, ...]]:
    gateways = []
    try:
        for name, ip in (("a", A_IP), ("b", B_IP)):
            work = tmp_path / name
            work.mkdir()
            gw = GatewayProcess(cluster_env(dsn, ip, work, **extra), work)
            gateways.append(gw)
            await gw.start()
        yield tuple(gateways)
    finally:
        for gw in gateways:
            await gw.close()


def target(gw: GatewayProcess) -> str:
    return f"{gw.env['GATEWAY_SIP_HOST']}:{gw.sip_port}"


async def agent_number(dsn: str, agent_ports: list[int], **settings: object) -> factories.Account:
    """NUMBER, routed to one agent per port (each phone a SIPp UAS on PHONE_IP)."""
    conn = await asyncpg.connect(dsn)
    try:
        acct = await factories.account(conn)
        users = [acct.agent_id] + [await factories.user(conn, acct.id) for _ in agent_ports[1:]]
        for user_id, port in zip(users, agent_ports, strict=True):
            await phone(conn, user_id, port)
        await company_number(conn, acct, users, NUMBER, **settings)
        return acct
    finally:
        await conn.close()


async def routable(*gateways: GatewayProcess) -> None:
    """Both indexes hold NUMBER: an INVITE to it is no longer 404."""
    for gw in gateways:
        for _ in range(100):
            if int(str((await gw.ready()).get("index_numbers", 0))) > 0:
                break
            await asyncio.sleep(0.1)


async def fetchval(dsn: str, query: str, *args: object) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


async def until(check: object, limit_s: float, what: str) -> None:
    """Poll the coroutine function ``check`` until it returns true."""
    deadline = asyncio.get_running_loop().time() + limit_s
    while not await check():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {limit_s}s: {what}")
        await asyncio.sleep(0.1)


async def dispositions(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT disposition, count(*) FROM call_records GROUP BY disposition")
        return {r["disposition"]: r["count"] for r in rows}
    finally:
        await conn.close()


async def carriers(
    tmp_path: Path, wave: str, gateways: tuple[GatewayProcess, ...], calls: int, pause_ms: int
) -> list[Sipp]:
    return [
        await start_sipp(
            f"{wave}-{n}",
            "uac_dialog.xml",
            tmp_path,
            ip=CARRIER_IP,
            remote=target(gw),
            service=NUMBER,
            calls=calls,
            rate=200,
            limit=calls,
            pause_ms=pause_ms,
        )
        for n, gw in enumerate(gateways)
    ]


async def test_sixty_calls_across_two_gateways_admit_exactly_fifty(db_dsn: str, tmp_path: Path) -> None:
    """R7 across the cluster: 60 simultaneous long calls to one number, 30 to
    each gateway -> exactly 50 answered, 10 x 486; after all hang up no slot
    is held; a second wave behaves the same."""
    agent_port = free_port(PHONE_IP)
    await agent_number(db_dsn, [agent_port])
    async with two_gateways(db_dsn, tmp_path) as (a, b):
        await routable(a, b)
        for wave in ("first", "second"):
            agent = await start_sipp(
                f"{wave}-agent", "uas_agent.xml", tmp_path, ip=PHONE_IP, port=agent_port, calls=50
            )
            sipps = await carriers(tmp_path, wave, (a, b), calls=30, pause_ms=4000)
            for carrier in sipps:
                assert await carrier.wait(60) == 0, carrier.errors()
            assert await agent.wait(20) == 0, agent.errors()
            assert agent.counts()["SuccessfulCall"] == 50
            await a.settled()
            await b.settled()
            await until(lambda: _equals(db_dsn, SLOTS, 0), 5, "every slot released")
            expected = 50 if wave == "first" else 100
            assert await dispositions(db_dsn) == {"answered": expected, "busy_limit": expected // 5}
        for gw in (a, b):
            state = (await gw.ready())["call_slots"]
            assert state["mode"] == "cluster" and state["live_instances"] == 2, state  # type: ignore[index]
        admitted = [
            await metric(gw, 'gateway_call_admissions_total{mode="cluster",result="admitted"}')
            for gw in (a, b)
        ]
        refused = [
            await metric(gw, 'gateway_call_admissions_total{mode="cluster",result="refused"}')
            for gw in (a, b)
        ]
        assert (sum(admitted), sum(refused)) == (100, 20)
        assert [await metric(gw, "gateway_call_slots_degraded") for gw in (a, b)] == [0, 0]
        assert [await metric(gw, "gateway_cluster_live_instances") for gw in (a, b)] == [2, 2]


async def _metric_is(gw: GatewayProcess, name: str, value: float) -> bool:
    return await metric(gw, name) == value


async def metric(gw: GatewayProcess, name: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{gw.http_port}/metrics") as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _equals(dsn: str, query: str, expected: object) -> bool:
    return await fetchval(dsn, query) == expected


async def test_a_killed_gateways_slots_come_back_within_its_lease(db_dsn: str, tmp_path: Path) -> None:
    """kill -9 one gateway while it holds 25 calls: within the lease (2 s) and
    a heartbeat, the survivor admits up to the limit of 50 again."""
    agent_port = free_port(PHONE_IP)
    await agent_number(db_dsn, [agent_port])
    async with two_gateways(db_dsn, tmp_path) as (a, b):
        await routable(a, b)
        agent = await start_sipp("agent", "uas_agent.xml", tmp_path, ip=PHONE_IP, port=agent_port, calls=100)
        held = await carriers(tmp_path, "held", (a, b), calls=25, pause_ms=30_000)
        await until(lambda: _equals(db_dsn, SLOTS, 50), 20, "50 calls up")
        a.kill()
        await a.wait()
        await held[0].stop()  # its calls died with the gateway
        started = asyncio.get_running_loop().time()
        await until(lambda: _equals(db_dsn, SLOTS, 25), 2 + 0.5 + 2, "the dead gateway's slots reclaimed")
        reclaimed_s = asyncio.get_running_loop().time() - started
        assert reclaimed_s < 4.5
        more = await start_sipp(
            "more", "uac_dialog.xml", tmp_path, ip=CARRIER_IP, remote=target(b), service=NUMBER,
            calls=26, rate=200, limit=26, pause_ms=1000,
        )  # fmt: skip
        assert await more.wait(30) == 0, more.errors()
        assert await held[1].wait(60) == 0, held[1].errors()
        await agent.stop()
        await b.settled()
        records = await dispositions(db_dsn)
        assert records["busy_limit"] == 1  # the 51st on the survivor
        assert await fetchval(db_dsn, SLOTS) == 0
        assert await fetchval(db_dsn, "SELECT count(*) FROM gateway_instances") == 1


async def test_postgres_away_admits_each_gateways_share_then_reconciles(
    private_cluster: EmbeddedPostgres, tmp_path: Path
) -> None:
    """Postgres stopped while both serve: each gateway admits at most
    ceil(4 / 2) = 2 calls to a number limited to 4 (the documented rule), and
    once Postgres is back the slots table holds exactly the calls in progress."""
    dsn = private_cluster.dsn
    agent_port = free_port(PHONE_IP)
    async with two_gateways(dsn, tmp_path) as (a, b):
        await agent_number(dsn, [agent_port], max_concurrent_calls=4)
        await routable(a, b)
        agent = await start_sipp("agent", "uas_agent.xml", tmp_path, ip=PHONE_IP, port=agent_port, calls=100)
        for gw in (a, b):  # each has seen the other at a heartbeat: the share is 4 / 2
            await until(lambda gw=gw: _live(gw, 2), 5, "two gateways live")  # type: ignore[misc]
        await asyncio.to_thread(private_cluster.stop_server)
        for gw in (a, b):
            await until(lambda gw=gw: _degraded(gw), 10, "degraded")  # type: ignore[misc]
        waves = await carriers(tmp_path, "away", (a, b), calls=3, pause_ms=6000)
        for gw in (a, b):  # each gateway decided its three INVITEs: two calls up, one 486
            await gw.until(lambda s: s.get("active_calls") == 2, "two calls up")
            await until(
                lambda gw=gw: _metric_is(
                    gw, 'gateway_call_admissions_total{mode="degraded",result="refused"}', 1
                ),
                10,
                "one refused",
            )  # type: ignore[misc]
        states = [(await gw.ready())["call_slots"] for gw in (a, b)]
        assert [s["degraded_admissions"] for s in states] == [2, 2], states  # type: ignore[index]
        assert [(await gw.ready())["active_calls"] for gw in (a, b)] == [2, 2]
        await asyncio.to_thread(private_cluster.start_server)
        await until(lambda: _equals(dsn, SLOTS, 4), 10, "the four calls in progress reconciled")
        for gw in (a, b):
            await until(lambda gw=gw: _cluster(gw), 10, "back on the cluster counter")  # type: ignore[misc]
        for carrier in waves:
            assert await carrier.wait(30) == 0, carrier.errors()
        await agent.stop()
        await a.settled()
        await b.settled()
        assert await dispositions(dsn) == {"answered": 4, "busy_limit": 2}
        await until(lambda: _equals(dsn, SLOTS, 0), 5, "every slot released")


async def _degraded(gw: GatewayProcess) -> bool:
    return (await gw.ready()).get("call_slots", {}).get("mode") == "degraded"  # type: ignore[union-attr,no-any-return]


async def _live(gw: GatewayProcess, count: int) -> bool:
    return (await gw.ready()).get("call_slots", {}).get("live_instances") == count  # type: ignore[union-attr,no-any-return]


async def _cluster(gw: GatewayProcess) -> bool:
    return (await gw.ready()).get("call_slots", {}).get("mode") == "cluster"  # type: ignore[union-attr,no-any-return]


async def test_round_robin_alternates_across_gateways(db_dsn: str, tmp_path: Path) -> None:
    """R4's shared turn lives in Postgres: unknown callers reaching A, B, A, B
    ring the two agents in turn."""
    ports = [free_port(PHONE_IP), free_port(PHONE_IP)]
    acct = await agent_number(db_dsn, ports, unknown_route="round_robin")
    async with two_gateways(db_dsn, tmp_path) as (a, b):
        await routable(a, b)
        phones = [
            await start_sipp(f"phone{n}", "uas_agent.xml", tmp_path, ip=PHONE_IP, port=port, calls=2)
            for n, port in enumerate(ports)
        ]
        for n, gw in enumerate((a, b, a, b)):
            caller = await start_sipp(
                f"caller{n}", "uac_dialog.xml", tmp_path, ip=CARRIER_IP, remote=target(gw), service=NUMBER,
                pause_ms=100,
            )  # fmt: skip
            assert await caller.wait(20) == 0, caller.errors()
        for phone in phones:
            assert await phone.wait(20) == 0, phone.errors()
        await a.settled()
        await b.settled()
        conn = await asyncpg.connect(db_dsn)
        try:
            rows = await conn.fetch("SELECT answered_by FROM call_records ORDER BY invited_at")
        finally:
            await conn.close()
        answered = [r["answered_by"] for r in rows]
        assert len(answered) == 4 and answered[0] != answered[1]
        assert answered[0::2] == [answered[0]] * 2 and answered[1::2] == [answered[1]] * 2
        assert acct.agent_id in answered


async def test_events_index_and_digest_nonces_work_across_gateways(db_dsn: str, tmp_path: Path) -> None:
    """A text received on A reaches an event stream on B; a number added
    through A's API routes on B; a digest nonce issued by A verifies on B."""
    conn = await asyncpg.connect(db_dsn)
    try:
        acct = await factories.account(conn)
        await factories.number(conn, acct.id, NUMBER)
        key = await create_key(conn, acct.id, acct.owner_id)
        await conn.execute(
            "UPDATE users SET sip_username = 'owner7', sip_ha1 = $2 WHERE id = $1",
            acct.owner_id,
            ha1("owner7", "gateway", "pw-7"),
        )
    finally:
        await conn.close()
    async with two_gateways(db_dsn, tmp_path) as (a, b):
        await routable(a, b)
        headers = {"Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            async with session.get(f"http://127.0.0.1:{b.http_port}/v1/events") as stream:
                assert (await stream.content.readline()).startswith(b": connected")
                assert await twilio_text(a.http_port, "SMc1a55e7") == 200
                # The owner hears of the unknown texter (R8) on B, live.
                (event,) = await read_events(stream, 1)
                assert event["event"] == "notification", event
                assert event["data"]["caller_e164"] == "+15557001234"

            # A lead created through A's API is in B's routing index.
            assert (await b.ready())["index_lead_phones"] == 0
            created = await session.post(
                f"http://127.0.0.1:{a.http_port}/v1/leads",
                json={"name": "Ann", "source": "Zillow", "phones": ["+15557004321"]},
            )
            assert created.status == 201, await created.text()
            await until(lambda: _lead_phones(b, 1), 5, "B's index followed A's change")
        await nonce_across(a, b)


async def _lead_phones(gw: GatewayProcess, count: int) -> bool:
    return (await gw.ready())["index_lead_phones"] == count


async def twilio_text(http_port: int, sid: str) -> int:
    path = "/v1/webhooks/twilio/messages"
    sid = factories.twilio_sid(sid)
    params = [("MessageSid", sid), ("SmsSid", sid), ("From", "+15557001234"), ("To", NUMBER),
              ("Body", "hello"), ("NumMedia", "0")]  # fmt: skip
    signature = RequestValidator(TOKEN).compute_signature(PUBLIC + path, MultiDict(params))
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"http://127.0.0.1:{http_port}{path}",
            data=urlencode(params),
            headers={"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature},
        ) as r,
    ):
        return r.status


async def nonce_across(a: GatewayProcess, b: GatewayProcess) -> None:
    """An INVITE challenged by A, answered to B: B accepts the credentials
    (it does not challenge again, and does not refuse them)."""
    uri = "sip:+15557770009@127.0.0.1"
    invite = (
        f"INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE_IP}:5999;branch=z9hG4bK-{{branch}}\r\n"
        f"From: <sip:owner7@127.0.0.1>;tag=a\r\nTo: <{uri}>\r\nCall-ID: across-1\r\n"
        "CSeq: {cseq} INVITE\r\nMax-Forwards: 70\r\n{auth}Content-Length: 0\r\n\r\n"
    )
    first = invite.format(branch="n1", cseq=1, auth="").encode()
    replies = await udp_exchange(first, (A_IP, a.sip_port), source_ip=PHONE_IP, expect=2)
    assert replies[-1].startswith(b"SIP/2.0 407"), replies
    challenge = replies[-1].decode()
    nonce = re.search(r'nonce="([^"]+)"', challenge).group(1)  # type: ignore[union-attr]
    opaque = re.search(r'opaque="([^"]+)"', challenge)
    h1 = ha1("owner7", "gateway", "pw-7")
    h2 = hashlib.md5(f"INVITE:{uri}".encode()).hexdigest()
    response = hashlib.md5(f"{h1}:{nonce}:00000001:c0ffee:auth:{h2}".encode()).hexdigest()
    auth = (
        f'Proxy-Authorization: Digest username="owner7", realm="gateway", nonce="{nonce}", uri="{uri}", '
        f'response="{response}", algorithm=MD5, qop=auth, nc=00000001, cnonce="c0ffee"'
        + (f', opaque="{opaque.group(1)}"' if opaque else "")
        + "\r\n"
    )
    second = invite.format(branch="n2", cseq=2, auth=auth).encode()
    replies = await udp_exchange(second, (B_IP, b.sip_port), source_ip=PHONE_IP, expect=2, wait_s=2)
    finals = [r.split(b"\r\n", 1)[0] for r in replies if not r.startswith(b"SIP/2.0 100")]
    assert not any(line.split()[1] in (b"401", b"403", b"407") for line in finals), finals


async def test_draining_one_gateway_leaves_the_other_serving(db_dsn: str, tmp_path: Path) -> None:
    """SIGTERM A: its slots leave the cluster counter when it exits, and B
    keeps answering calls."""
    agent_port = free_port(PHONE_IP)
    await agent_number(db_dsn, [agent_port])
    async with two_gateways(db_dsn, tmp_path) as (a, b):
        await routable(a, b)
        agent = await start_sipp("agent", "uas_agent.xml", tmp_path, ip=PHONE_IP, port=agent_port, calls=3)
        first = await start_sipp(
            "first",
            "uac_dialog.xml",
            tmp_path,
            ip=CARRIER_IP,
            remote=target(a),
            service=NUMBER,
            pause_ms=1500,
        )
        await a.until(lambda s: s.get("active_calls") == 1, "A's call is up")
        a.terminate()
        assert await first.wait(20) == 0, first.errors()  # A's call in progress finished normally
        assert await a.wait(20) == 0
        assert await fetchval(db_dsn, "SELECT count(*) FROM gateway_instances") == 1
        later = await start_sipp(
            "later", "uac_dialog.xml", tmp_path, ip=CARRIER_IP, remote=target(b), service=NUMBER,
            calls=2, pause_ms=200,
        )  # fmt: skip
        assert await later.wait(20) == 0, later.errors()
        assert await agent.wait(20) == 0, agent.errors()
        await b.settled()
        assert (await dispositions(db_dsn)) == {"answered": 3}
        assert await fetchval(db_dsn, SLOTS) == 0
