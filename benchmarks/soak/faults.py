"""Faults against the real `gateway serve` process, with the numbers that go
into benchmarks/RELIABILITY.md (issue 7). Each run starts its own Postgres
cluster, a carrier and an agent SIPp, and a texting client; everything is
bounded in time.

    python benchmarks/soak/faults.py [--soak-minutes 10] [--only outage,kill9,...]

Runs: ``outage`` (Postgres stopped 30 s mid-traffic), ``kill9`` (SIGKILL under
calls and texts, then restart), ``sigterm`` (graceful stop under load),
``dead_agents`` (agents that never answer or vanish after answering, beside
normal traffic), ``hostile`` (mutated SIP and forged webhooks), ``soak``
(mixed load, resources sampled). Lost must be 0 for every row.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.store.api_keys import create_key
from gateway.store.embedded import EmbeddedPostgres
from gateway.store.migrations import migrate
from tests.factories import twilio_sid
from tests.gateway_process import GatewayProcess
from tests.sipp_tools import CARRIER_IP, PHONE_IP, Sipp, free_port, start_sipp
from tests.test_hostile_input import TEMPLATES, mutate
from tests.test_reliability import LEAD, NUMBER, completed_calls, env_for, seed, text

REPORT = Path(__file__).resolve().parents[1] / "RELIABILITY.md"


@dataclass
class Row:
    fault: str
    injected: str
    traffic: str
    lost: int
    duplicated: int
    recovery_s: float | None
    notes: str = ""


class Bench:
    """One cluster, one seeded account, one gateway process."""

    def __init__(self, work: Path, name: str) -> None:
        self.work = work / name
        self.work.mkdir(parents=True)
        self.cluster = EmbeddedPostgres(self.work / "pg")
        self.dsn = ""
        self.agent_port = free_port(PHONE_IP)
        self.gw: GatewayProcess | None = None

    async def __aenter__(self) -> Bench:
        self.dsn = await asyncio.to_thread(self.cluster.start)
        conn = await asyncpg.connect(self.dsn)
        await migrate(conn)
        await conn.close()
        await seed(self.dsn, self.agent_port)
        self.gw = await self.start_gateway()
        return self

    async def start_gateway(self) -> GatewayProcess:
        gw = GatewayProcess(env_for(self.dsn, self.work / "outbox"), self.work)
        await gw.start()
        return gw

    async def __aexit__(self, *exc: object) -> None:
        if self.gw is not None:
            await self.gw.close()
        await asyncio.to_thread(self.cluster.stop)

    async def calls(self, name: str, count: int, rate: float, pause_ms: int) -> tuple[Sipp, Sipp]:
        assert self.gw is not None
        agent = await start_sipp(
            f"{name}-agent", "uas_agent.xml", self.work, ip=PHONE_IP, port=self.agent_port, calls=count
        )
        carrier = await start_sipp(
            f"{name}-carrier",
            "uac_dialog.xml",
            self.work,
            ip=CARRIER_IP,
            remote=f"127.0.0.1:{self.gw.sip_port}",
            service=NUMBER,
            calls=count,
            rate=rate,
            limit=int(rate * pause_ms / 1000 * 2) + 10,
            pause_ms=pause_ms,
            trace_messages=True,
            rtt=True,
        )
        return agent, carrier

    async def texts(self, prefix: str, per_second: float, seconds: float, acked: list[str]) -> None:
        assert self.gw is not None
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            sid = twilio_sid(f"{prefix}{i}")
            i += 1
            if await text(self.gw.http_port, sid) == 200:
                acked.append(sid)
            await asyncio.sleep(1 / per_second)

    async def count_losses(self, completed: int, acked: list[str]) -> tuple[int, int]:
        """:meth:`losses` by counts: answered records can only be fewer than the
        carrier's successful calls if some were lost (the record is unique per call)."""
        conn = await asyncpg.connect(self.dsn)
        try:
            stored = await conn.fetchval("SELECT count(*) FROM call_records WHERE disposition = 'answered'")
            texts = {r[0] for r in await conn.fetch("SELECT provider_message_id FROM messages")}
            usage = await conn.fetchval("SELECT count(*) FROM usage_ledger")
        finally:
            await conn.close()
        return max(0, completed - stored) + len(set(acked) - texts), max(0, usage - stored - len(texts))

    async def losses(self, completed: set[str], acked: list[str]) -> tuple[int, int]:
        """(lost, duplicated): acknowledged work missing from Postgres, and any
        charged twice (usage rows beyond one per answered call and text)."""
        conn = await asyncpg.connect(self.dsn)
        try:
            stored = {
                r[0]
                for r in await conn.fetch("SELECT sip_call_id FROM call_records WHERE disposition='answered'")
            }
            texts = {r[0] for r in await conn.fetch("SELECT provider_message_id FROM messages")}
            usage = await conn.fetchval("SELECT count(*) FROM usage_ledger")
        finally:
            await conn.close()
        lost = len(completed - stored) + len(set(acked) - texts)
        return lost, max(0, usage - len(stored) - len(texts))


async def outage(work: Path) -> Row:
    async with Bench(work, "outage") as b:
        assert b.gw is not None
        agent, carrier = await b.calls("outage", 900, 20, 500)
        acked: list[str] = []
        sender = asyncio.create_task(b.texts("SMo", 20, 45, acked))
        await asyncio.sleep(5)
        await asyncio.to_thread(b.cluster.stop_server)
        degraded = (await b.gw.ready())["status"]
        await asyncio.sleep(30)
        await asyncio.to_thread(b.cluster.start_server)
        back = time.monotonic()
        await sender
        await carrier.wait(120)
        await agent.wait(30)
        await b.gw.settled(120)
        recovery = time.monotonic() - back
        completed = completed_calls(carrier.messages())
        lost, dup = await b.losses(completed, acked)
        return Row(
            "Postgres outage",
            "cluster stopped 30 s mid-traffic, then restarted",
            _traffic(completed, acked),
            lost,
            dup,
            recovery,
            f"/readyz during the outage: {degraded}; calls kept routing from the snapshot",
        )


async def kill9(work: Path) -> Row:
    async with Bench(work, "kill9") as b:
        assert b.gw is not None
        agent, carrier = await b.calls("kill9", 2000, 60, 300)
        acked: list[str] = []
        sender = asyncio.create_task(b.texts("SMk", 40, 8, acked))
        await asyncio.sleep(6)
        b.gw.kill()
        await b.gw.wait()
        killed = time.monotonic()
        await _halt(sender, carrier, agent)
        b.gw = await b.start_gateway()
        settled = await b.gw.settled(60)
        recovery = time.monotonic() - killed
        completed = completed_calls(carrier.messages())
        lost, dup = await b.losses(completed, acked)
        return Row(
            "kill -9 under load",
            "SIGKILL during 60 calls/s and 40 texts/s, then restart",
            _traffic(completed, acked),
            lost,
            dup,
            recovery,
            f"active calls after restart: {settled['active_calls']} (no slot survives the process)",
        )


async def sigterm(work: Path) -> Row:
    async with Bench(work, "sigterm") as b:
        assert b.gw is not None
        agent, carrier = await b.calls("sigterm", 300, 30, 2000)
        acked: list[str] = []
        sender = asyncio.create_task(b.texts("SMt", 20, 4, acked))
        await asyncio.sleep(4)
        stopping = time.monotonic()
        b.gw.terminate()
        code = await b.gw.wait(30)
        drained = time.monotonic() - stopping
        await _halt(sender, carrier, agent)
        completed = completed_calls(carrier.messages())
        refused = carrier.messages().count("SIP/2.0 503 Service Unavailable")
        lost, dup = await b.losses(completed, acked)
        b.gw = None
        return Row(
            "SIGTERM under load",
            "graceful stop during 30 calls/s of 2 s calls and 20 texts/s",
            _traffic(completed, acked),
            lost,
            dup,
            drained,
            f"exit code {code}; {refused} new INVITEs answered 503 + Retry-After while draining",
        )


async def dead_agents(work: Path) -> Row:
    """Agents that never answer keep slots only until their timers fire; the
    rest of the traffic's setup latency is compared with a quiet run."""
    async with Bench(work, "dead") as b:
        assert b.gw is not None
        quiet = await _setup_p99(b, "quiet")
        conn = await asyncpg.connect(b.dsn)
        dead_port = free_port(PHONE_IP)
        acct = await conn.fetchval("SELECT account_id FROM numbers WHERE e164 = $1", NUMBER)
        dead_user = await conn.fetchval(
            "INSERT INTO users (account_id, email, role, package, call_destination)"
            " VALUES ($1, 'dead@x.test', 'agent', 'standard', $2) RETURNING id",
            acct,
            f"sip:dead@{PHONE_IP}:{dead_port}",
        )
        dead_number = await conn.fetchval(
            "INSERT INTO numbers (account_id, e164, kind, unknown_step_timeout_s) VALUES ($1, '+15550190099',"
            " 'company', 2) RETURNING id",
            acct,
        )
        await conn.execute(
            "INSERT INTO number_route_targets (account_id, number_id, user_id, position)"
            " VALUES ($1, $2, $3, 0)",
            acct,
            dead_number,
            dead_user,
        )
        await conn.close()
        await asyncio.sleep(1)
        # Nobody listens on the dead phone's port: INVITEs vanish, Timer/step timeouts must free the slots.
        dead = await start_sipp(
            "dead-carrier",
            "uac_unanswered.xml",
            b.work,
            ip=CARRIER_IP,
            remote=f"127.0.0.1:{b.gw.sip_port}",
            service="+15550190099",
            calls=200,
            rate=20,
            limit=200,
            rows=[["+15557770123"]],
        )
        loaded = await _setup_p99(b, "beside-dead")
        await dead.wait(60)
        state = await b.gw.settled(60)
        ratio = loaded / quiet if quiet else 0.0
        return Row(
            "Dead agent phones",
            "200 calls to a phone that never answers (2 s hunt step), beside normal calls",
            "200 unanswered + 600 normal calls",
            0,
            0,
            None,
            f"setup p99 {loaded:.0f} ms beside them vs {quiet:.0f} ms quiet (x{ratio:.2f}); "
            f"slots held afterwards: {state['active_calls']}",
        )


async def _setup_p99(b: Bench, name: str) -> float:
    agent, carrier = await b.calls(name, 600, 60, 200)
    await carrier.wait(60)
    await agent.wait(30)
    rtts = sorted(
        float(r.split(";")[1])
        for p in carrier.workdir.glob("*_rtt.csv")
        for r in p.read_text().splitlines()[1:]
        if ";" in r
    )
    return rtts[int(0.99 * len(rtts))] if rtts else 0.0


async def hostile(work: Path) -> Row:
    """Mutated SIP from a stranger and forged webhooks, beside normal calls and texts."""
    async with Bench(work, "hostile") as b:
        assert b.gw is not None and b.gw.process is not None
        rss0 = _rss(b.gw.process.pid)
        agent, carrier = await b.calls("hostile", 300, 20, 300)
        acked: list[str] = []
        sender = asyncio.create_task(b.texts("SMh", 10, 15, acked))
        rng = random.Random(7)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.9", 0)
        )
        sent = 0
        for i in range(20000):
            data = TEMPLATES[i % len(TEMPLATES)].format(n=NUMBER, i=i).encode()
            transport.sendto(mutate(data, rng), ("127.0.0.1", b.gw.sip_port))
            sent += 1
            if i % 100 == 0:
                await asyncio.sleep(0.01)
        transport.close()
        statuses: dict[int, int] = {}
        forger = aiohttp.TCPConnector(local_addr=("127.0.0.10", 0))
        async with aiohttp.ClientSession(connector=forger) as s:
            for i in range(500):
                async with s.post(
                    f"http://127.0.0.1:{b.gw.http_port}/v1/webhooks/twilio/messages",
                    data={"MessageSid": f"SMf{i}", "From": LEAD, "To": NUMBER},
                    headers={"X-Twilio-Signature": "forged"},
                ) as r:
                    statuses[r.status] = statuses.get(r.status, 0) + 1
        await sender
        await carrier.wait(120)
        await agent.wait(30)
        state = await b.gw.settled(30)
        rss1 = _rss(b.gw.process.pid)
        errors = _metric(await _scrape(b.gw.http_port), "gateway_sip_handler_errors_total")
        five = sum(n for code, n in statuses.items() if code >= 500)
        completed = completed_calls(carrier.messages())
        lost, dup = await b.losses(completed, acked)
        return Row(
            "Hostile input",
            f"{sent} mutated SIP datagrams from a stranger; 500 forged Twilio webhooks from another",
            f"beside {len(completed)}/300 calls completed and {len(acked)} texts acknowledged",
            lost,
            dup,
            None,
            f"forged webhooks answered {dict(sorted(statuses.items()))} ({five} 5xx); "
            f"handler exceptions {errors:.0f}; RSS {rss0} -> {rss1} kB; /readyz {state['status']}",
        )


async def soak(work: Path, minutes: float, rate: float) -> Row:
    """Mixed load at ``rate`` calls/s: 95% of 0.2 s, 5% of 5 s; texts; API reads."""
    async with Bench(work, "soak") as b:
        assert b.gw is not None and b.gw.process is not None
        conn = await asyncpg.connect(b.dsn)
        await conn.execute("UPDATE numbers SET max_concurrent_calls = 2000")  # R7 is not under test here
        key = await _api_key(conn)
        await conn.close()
        seconds = minutes * 60
        short_n, long_n = int(rate * 0.95 * seconds), int(rate * 0.05 * seconds)
        target = f"127.0.0.1:{b.gw.sip_port}"
        agent = await start_sipp(
            "soak-agent",
            "uas_agent.xml",
            b.work,
            ip=PHONE_IP,
            port=b.agent_port,
            calls=2 * (short_n + long_n),
            timeout_s=int(seconds) + 180,
        )
        short = await start_sipp(
            "soak-short",
            "uac_dialog.xml",
            b.work,
            ip=CARRIER_IP,
            remote=target,
            service=NUMBER,
            calls=short_n,
            rate=rate * 0.95,
            limit=int(rate * 2) + 20,
            pause_ms=200,
            timeout_s=int(seconds) + 120,
        )
        long = await start_sipp(
            "soak-long",
            "uac_dialog.xml",
            b.work,
            ip=CARRIER_IP,
            remote=target,
            service=NUMBER,
            calls=long_n,
            rate=rate * 0.05,
            limit=int(rate * 0.5) + 20,
            pause_ms=5000,
            timeout_s=int(seconds) + 120,
        )
        acked: list[str] = []
        sender = asyncio.create_task(b.texts("SMs", 10, seconds, acked))
        reads = {"ok": 0, "other": 0}
        samples = []
        start = time.monotonic()
        async with aiohttp.ClientSession() as s:
            while time.monotonic() - start < seconds:
                async with s.get(f"http://127.0.0.1:{b.gw.http_port}/metrics") as r:
                    body = await r.text()
                samples.append(
                    (
                        _rss(b.gw.process.pid),
                        _fds(b.gw.process.pid),
                        _metric(body, "gateway_asyncio_tasks"),
                        _metric(body, "gateway_sip_transactions_in_flight"),
                    )
                )
                for _ in range(20):  # API reads: 2/s
                    async with s.get(
                        f"http://127.0.0.1:{b.gw.http_port}/v1/numbers",
                        headers={"Authorization": f"Bearer {key}"},
                    ) as r:
                        reads["ok" if r.status == 200 else "other"] += 1
                    await asyncio.sleep(0.5)
        await sender
        for p in (short, long):
            await p.wait(120)
        await agent.stop()
        state = await b.gw.settled(60)
        # No per-message trace at this rate (it would throttle SIPp): compare counts instead.
        completed = sum(p.counts().get("SuccessfulCall", 0) for p in (short, long))
        lost, dup = await b.count_losses(completed, acked)
        first, middle, last = samples[min(1, len(samples) - 1)], samples[len(samples) // 2], samples[-1]
        return Row(
            f"Soak ({minutes:g} min)",
            f"{rate:g} calls/s (95% of 0.2 s, 5% of 5 s), 10 texts/s, 2 API reads/s",
            f"{completed} calls completed, {len(acked)} texts, "
            f"{reads['ok']} reads ({reads['other']} not 200)",
            lost,
            dup,
            None,
            f"at 10 s / half-time / end: RSS {first[0]} / {middle[0]} / {last[0]} kB, "
            f"fds {first[1]} / {middle[1]} / {last[1]}, "
            f"tasks {first[2]:.0f} / {middle[2]:.0f} / {last[2]:.0f}, "
            f"transactions in flight {first[3]:.0f} / {middle[3]:.0f} / {last[3]:.0f}; "
            f"active calls at the end {state['active_calls']}",
        )


async def _api_key(conn: asyncpg.Connection) -> str:
    owner = await conn.fetchval("SELECT id FROM users WHERE role = 'owner' LIMIT 1")
    account = await conn.fetchval("SELECT account_id FROM users WHERE id = $1", owner)
    key: str = await create_key(conn, account, owner, "soak")
    return key


def _traffic(completed: set[str], acked: list[str]) -> str:
    return f"{len(completed)} calls completed, {len(acked)} texts acknowledged"


async def _halt(sender: asyncio.Task[None], carrier: Sipp, agent: Sipp) -> None:
    """Stop the texting client and both SIPps (the gateway is gone or going)."""
    await asyncio.gather(sender, return_exceptions=True)
    await carrier.stop()
    await agent.stop()


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


async def _scrape(port: int) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        return await r.text()


def _metric(body: str, name: str) -> float:
    for line in body.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def write_report(rows: list[Row], command: str) -> None:
    lines = [
        "# Reliability under faults (issue 7)",
        "",
        f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "Every row runs the real `gateway serve` process on its own Postgres cluster, with SIPp as carrier",
        "and agent phone and signed Twilio webhooks as texts. *Lost* counts acknowledged work (a call whose",
        "BYE was answered 200, a text answered 200) missing from Postgres afterwards; *duplicated* counts",
        "usage charged more than once. Recovery is from the end of the fault until the outbox is empty and",
        "no call is in progress (or, for SIGTERM, the time to drain and exit).",
        "",
        "| fault | injected | traffic | lost | duplicated | recovery | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        recovery = f"{r.recovery_s:.1f} s" if r.recovery_s is not None else "-"
        lines.append(
            f"| {r.fault} | {r.injected} | {r.traffic} | {r.lost} | {r.duplicated} | {recovery} | {r.notes} |"
        )
    REPORT.write_text("\n".join(lines) + "\n")


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--soak-minutes", type=float, default=10.0)
    parser.add_argument(
        "--soak-rate", type=float, default=300.0, help="calls/s; about half the measured maximum"
    )
    parser.add_argument("--only", default="outage,kill9,sigterm,dead_agents,hostile,soak")
    args = parser.parse_args()
    wanted = args.only.split(",")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gw-faults-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        runs = {
            "outage": outage,
            "kill9": kill9,
            "sigterm": sigterm,
            "dead_agents": dead_agents,
            "hostile": hostile,
        }
        for name in wanted:
            started = time.monotonic()
            row = await (
                soak(work, args.soak_minutes, args.soak_rate) if name == "soak" else runs[name](work)
            )
            rows.append(row)
            print(f"{row}  ({time.monotonic() - started:.0f} s)", flush=True)
    write_report(rows, "python benchmarks/soak/faults.py " + " ".join(sys.argv[1:]))
    lost = sum(r.lost for r in rows)
    print(f"result: faults metric={lost} reference=0 ratio={'0.00' if lost == 0 else 'inf'} rows={len(rows)}")


if __name__ == "__main__":
    uvloop.run(main())
