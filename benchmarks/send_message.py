"""``POST /v1/messages`` (issue 5, and issue 13 item 5: "do not make it slower"),
beside a bare aiohttp + raw asyncpg handler, in the same run.

Both sides answer a CRM's send the same way at the wire: read the JSON body,
commit the message as ``queued``, call the provider's API (a local stand-in
for Twilio's Messages resource, answering 201 with a fresh SID at once), then
commit its SID and status and answer 201 with the row. The gateway also
checks the API key, picks the sender (R10), checks the allowance (R9), and
records the R1 timeline and the usage of each send; its outcome writes go
through group commit (``gateway.store.outcome_batch``).

* latency: ``--sends`` sends one after another (an idle gateway), p50/p99 ms;
* throughput: ``wrk`` (2 threads, 32 connections) for ``--seconds``, sends/s;
  ``--repeats`` pairs, bare and gateway in alternating order, median ratio.

Ends with the DESIGN §4 ``result:`` line (metric: the gateway's sends/s at 32
connections; reference: the bare handler's).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg
import uvloop
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ensure_wrk, free_tcp_port, median_pair, percentile, result_line, wrk_rate
from gateway.store.api_keys import create_key
from gateway.store.embedded import EmbeddedPostgres
from gateway.store.migrations import migrate
from tests import factories
from tests.gateway_process import GatewayProcess

SID, TOKEN = "AC0123456789", "0123456789abcdef0123456789abcdef"
NUMBER, LEAD_PHONE = "+15550180000", "+15557000001"
BODY = json.dumps({"to": LEAD_PHONE, "body": "Open house on Saturday, 1-3 pm"})


def stub_twilio(port: int) -> None:
    """Twilio's Messages resource as documented: 201 and the new message's SID."""
    counter = itertools.count()

    async def messages(request: web.Request) -> web.Response:
        await request.post()
        return web.json_response(
            {"sid": f"SM{os.getpid():08x}{next(counter):024x}", "status": "queued"}, status=201
        )

    app = web.Application()
    app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", messages)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, loop=uvloop.new_event_loop())


def bare_server(port: int, dsn: str, provider: str) -> None:
    """The reference: the same two commits and provider call, nothing else."""

    async def start(app: web.Application) -> None:
        app["pool"] = await asyncpg.create_pool(dsn, min_size=4, max_size=10)
        app["http"] = aiohttp.ClientSession()
        row = await app["pool"].fetchrow("SELECT account_id, id, e164 FROM numbers WHERE e164 = $1", NUMBER)
        app["number"] = dict(row)

    async def stop(app: web.Application) -> None:
        await app["http"].close()
        await app["pool"].close()

    async def send(request: web.Request) -> web.Response:
        data = await request.json()
        number, pool = request.app["number"], request.app["pool"]
        message_id = await pool.fetchval(
            "INSERT INTO messages (account_id, number_id, direction, provider, provider_message_id,"
            " from_e164, to_e164, body, status)"
            " VALUES ($1, $2, 'outbound', 'twilio', $3, $4, $5, $6, 'queued')"
            " RETURNING id",
            number["account_id"],
            number["id"],
            f"bare:{time.monotonic_ns()}:{id(request)}",
            number["e164"],
            data["to"],
            data["body"],
        )
        async with request.app["http"].post(
            f"{provider}/2010-04-01/Accounts/{SID}/Messages.json",
            data={"From": number["e164"], "To": data["to"], "Body": data["body"]},
        ) as answer:
            sent = await answer.json()
        row = await pool.fetchrow(
            "UPDATE messages SET provider_message_id = $2, status = $3, updated_at = now() WHERE id = $1"
            " RETURNING id, provider_message_id, status, created_at",
            message_id,
            sent["sid"],
            sent["status"],
        )
        return web.json_response({**dict(row), "created_at": row["created_at"].isoformat()}, status=201)

    app = web.Application()
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_post("/v1/messages", send)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, loop=uvloop.new_event_loop())


async def seed(dsn: str) -> str:
    """An account with an agent, a company number and one lead; the agent's
    API key. Texts past the allowance are recorded, not blocked (the default)."""
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        account = await factories.account(conn)
        await factories.number(conn, account.id, NUMBER)
        await factories.lead(conn, account.id, account.agent_id, LEAD_PHONE)
        return await create_key(conn, account.id, account.agent_id)
    finally:
        await conn.close()


async def one_by_one(port: int, key: str, count: int) -> list[float]:
    """Latencies (ms) of ``count`` sends, each after the last was answered."""
    latencies = []
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(headers=headers) as session:
        for _ in range(count):
            started = time.perf_counter()
            async with session.post(f"http://127.0.0.1:{port}/v1/messages", data=BODY) as answer:
                await answer.read()
                assert answer.status == 201, await answer.text()
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def run_wrk(port: int, key: str, seconds: float, work: Path) -> float:
    script = work / "send.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(BODY)}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
    )
    return wrk_rate(
        ["-t2", "-c32", f"-d{int(seconds)}s", "-s", str(script), f"http://127.0.0.1:{port}/v1/messages"]
    )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--sends", type=int, default=500, help="sends one by one, for latency")
    parser.add_argument("--repeats", type=int, default=3, help="throughput pairs; the median ratio counts")
    args = parser.parse_args()
    ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="gw-send-bench-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        cluster = EmbeddedPostgres(work / "pg")
        dsn = await asyncio.to_thread(cluster.start)
        key = await seed(dsn)
        stub_port, bare_port = free_tcp_port(), free_tcp_port()
        provider = f"http://127.0.0.1:{stub_port}"
        children = [
            subprocess.Popen([sys.executable, __file__, "--stub-twilio", str(stub_port)]),
            subprocess.Popen([sys.executable, __file__, "--bare-server", str(bare_port), dsn, provider]),
        ]
        gw = GatewayProcess(
            {
                "GATEWAY_DATABASE_URL": dsn,
                "GATEWAY_TWILIO_AUTH_TOKEN": TOKEN,
                "GATEWAY_TWILIO_ACCOUNT_SID": SID,
                "GATEWAY_TWILIO_API_BASE_URL": provider,
                "GATEWAY_SIP_PORT": "0",
                "GATEWAY_OUTBOX_DIR": str(work / "outbox"),
            },
            work,
        )
        try:
            await gw.start()
            await asyncio.sleep(1)
            await one_by_one(bare_port, key, 50)  # warm both: connections, prepared statements
            await one_by_one(gw.http_port, key, 50)
            latency = {port: await one_by_one(port, key, args.sends) for port in (bare_port, gw.http_port)}
            for name, port in (("bare", bare_port), ("gateway", gw.http_port)):
                p50, p99 = percentile(latency[port], 0.5), percentile(latency[port], 0.99)
                print(f"one by one, {name}: p50 {p50:.2f} ms p99 {p99:.2f} ms", flush=True)
            pairs = []
            for k in range(args.repeats):
                ports = [bare_port, gw.http_port] if k % 2 == 0 else [gw.http_port, bare_port]
                measured = {port: run_wrk(port, key, args.seconds, work) for port in ports}
                pairs.append((measured[gw.http_port], measured[bare_port]))
                print(
                    f"32 connections, pair {k + 1}: gateway {pairs[-1][0]:,.0f}/s, bare {pairs[-1][1]:,.0f}/s"
                    f" (ratio {pairs[-1][0] / pairs[-1][1]:.2f})",
                    flush=True,
                )
            ours, bare = median_pair(pairs)
            await asyncio.sleep(1)  # the sends wrk left in flight at its end
            conn = await asyncpg.connect(dsn)
            try:
                counts = await conn.fetchrow(
                    "SELECT (SELECT count(*) FROM usage_ledger),"
                    " (SELECT count(*) FROM messages WHERE provider_message_id LIKE 'local:%')"
                )
            finally:
                await conn.close()
            assert counts is not None
            usage, queued = counts
            print(f"{usage:,} sends charged; {queued} left without the provider's id", flush=True)
            print(
                result_line(
                    "send_message",
                    ours,
                    bare,
                    p50_ms=percentile(latency[gw.http_port], 0.5),
                    p99_ms=percentile(latency[gw.http_port], 0.99),
                    bare_p50_ms=percentile(latency[bare_port], 0.5),
                    bare_p99_ms=percentile(latency[bare_port], 0.99),
                ),
                flush=True,
            )
        finally:
            await gw.close()
            for child in children:
                child.terminate()
                child.wait()
            await asyncio.to_thread(cluster.stop)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--stub-twilio":
        stub_twilio(int(sys.argv[2]))
    elif len(sys.argv) == 5 and sys.argv[1] == "--bare-server":
        bare_server(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        uvloop.run(main())
