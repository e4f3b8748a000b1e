"""Signed Twilio webhooks into the gateway, beside a bare aiohttp handler, in the
same run (issue 5).

The gateway (a real ``gateway serve`` process on its own Postgres cluster, with
default durability) verifies each signature, routes the text (R1-R6) and
commits message, timeline and usage before answering. The reference is a bare
aiohttp + uvloop process whose handler only parses the form. Both get the same
pre-signed requests (distinct MessageSids, so no redelivery shortcut):

* throughput: ``wrk`` (closed loop, 2 threads, 32 connections) for
  ``--seconds``, messages/s;
* latency: an open-loop client at ``--rate`` messages/s (default 1,000) for
  ``--seconds``, p50/p99 in ms.

Installs wrk when it is missing. Ends with the DESIGN §4 ``result:`` line
(metric: the gateway's messages/s; reference: the bare handler's).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import asyncpg
import uvloop
from aiohttp import web
from multidict import MultiDict
from twilio.request_validator import RequestValidator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import percentile, result_line
from gateway.store.embedded import EmbeddedPostgres
from gateway.store.migrations import migrate
from tests.factories import twilio_sid
from tests.gateway_process import GatewayProcess

TOKEN, PUBLIC, PATH = (
    "0123456789abcdef0123456789abcdef",
    "https://gw.example.com",
    "/v1/webhooks/twilio/messages",
)
NUMBER = "+15550180000"
LUA = """
local requests = {}
local i = 0
init = function(args)
  for line in io.lines(args[1]) do
    local sig, body = line:match("([^\\t]*)\\t(.*)")
    requests[#requests + 1] = {sig = sig, body = body}
  end
  i = math.random(#requests)
end
request = function()
  i = i % #requests + 1
  local r = requests[i]
  return wrk.format("POST", nil, {["Content-Type"] = "application/x-www-form-urlencoded",
                                  ["X-Twilio-Signature"] = r.sig}, r.body)
end
"""


def signed(prefix: str, count: int) -> list[tuple[str, str]]:
    validator = RequestValidator(TOKEN)
    out = []
    for i in range(count):
        params = [
            ("MessageSid", twilio_sid(f"{prefix}{i}")),
            ("From", f"+1555019{i % 1000:04d}"),
            ("To", NUMBER),
            ("Body", "Is the house on Elm Street still for sale?"),
            ("NumMedia", "0"),
        ]
        out.append((validator.compute_signature(PUBLIC + PATH, MultiDict(params)), urlencode(params)))
    return out


async def seed(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        account = await conn.fetchval(
            "INSERT INTO accounts (name, plan) VALUES ('b', 'enterprise') RETURNING id"
        )
        agent = await conn.fetchval(
            "INSERT INTO users (account_id, email, role, package)"
            " VALUES ($1, 'a@b.test', 'owner', 'standard') RETURNING id",
            account,
        )
        number = await conn.fetchval(
            "INSERT INTO numbers (account_id, e164, kind) VALUES ($1, $2, 'company') RETURNING id",
            account,
            NUMBER,
        )
        await conn.execute(
            "INSERT INTO number_route_targets (account_id, number_id, user_id, position)"
            " VALUES ($1, $2, $3, 0)",
            account,
            number,
            agent,
        )
        lead = await conn.fetchval(
            "INSERT INTO leads (account_id, primary_agent_id, source) VALUES ($1, $2, 'Web') RETURNING id",
            account,
            agent,
        )
        await conn.executemany(  # half the senders are known leads (R1), half unknown (R4)
            "INSERT INTO lead_phones (account_id, lead_id, e164) VALUES ($1, $2, $3)",
            [(account, lead, f"+1555019{i:04d}") for i in range(0, 1000, 2)],
        )
    finally:
        await conn.close()


def bare_server(port: int) -> None:
    """The reference: parse the form, answer empty TwiML."""

    async def handle(request: web.Request) -> web.Response:
        await request.post()
        return web.Response(text="<Response/>", content_type="text/xml")

    app = web.Application()
    app.router.add_post(PATH, handle)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, loop=uvloop.new_event_loop())


def run_wrk(port: int, requests: Path, seconds: float) -> float:
    script = requests.with_suffix(".lua")
    script.write_text(LUA)
    out = subprocess.run(
        [
            shutil.which("wrk") or "wrk",
            "-t2",
            "-c32",
            f"-d{int(seconds)}s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}{PATH}",
            "--",
            str(requests),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        print(f"  warning: {non2xx.group(1)} non-2xx answers", flush=True)
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert found, out
    return float(found.group(1))


async def open_loop(port: int, requests: list[tuple[str, str]], rate: float, seconds: float) -> list[float]:
    """Send at ``rate``/s whatever the answers' speed; latencies in ms."""
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as s:

        async def one(sig: str, body: str) -> None:
            started = time.perf_counter()
            async with s.post(
                f"http://127.0.0.1:{port}{PATH}",
                data=body,
                headers={"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": sig},
            ) as r:
                await r.read()
                if r.status == 200:
                    latencies.append((time.perf_counter() - started) * 1000)

        tasks = []
        start = time.perf_counter()
        for i, (sig, body) in enumerate(requests[: int(rate * seconds)]):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(sig, body)))
        await asyncio.gather(*tasks)
    return latencies


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        subprocess.run(["apt-get", "install", "-y", "wrk"], check=True, capture_output=True)
    with tempfile.TemporaryDirectory(prefix="gw-sms-bench-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        cluster = EmbeddedPostgres(work / "pg")
        dsn = await asyncio.to_thread(cluster.start)
        bare_port = _free_tcp()
        bare = subprocess.Popen([sys.executable, __file__, "--bare-server", str(bare_port)])
        gw = GatewayProcess(
            {
                "GATEWAY_DATABASE_URL": dsn,
                "GATEWAY_TWILIO_AUTH_TOKEN": TOKEN,
                "GATEWAY_HTTP_PUBLIC_BASE_URL": PUBLIC,
                "GATEWAY_SIP_PORT": "0",
                "GATEWAY_OUTBOX_DIR": str(work / "outbox"),
            },
            work,
        )
        try:
            await seed(dsn)
            await gw.start()
            await asyncio.sleep(1)
            count = int(max(args.rate * args.seconds, 60_000))
            print(f"signing {2 * count:,} requests...", flush=True)
            for_wrk = {name: work / f"{name}.tsv" for name in ("gateway", "bare")}
            for name, path in for_wrk.items():
                path.write_text("".join(f"{sig}\t{body}\n" for sig, body in signed(f"SMw{name}", count)))
            bare_rps = run_wrk(bare_port, for_wrk["bare"], args.seconds)
            ours_rps = run_wrk(gw.http_port, for_wrk["gateway"], args.seconds)
            print(f"throughput: gateway {ours_rps:,.0f}/s, bare aiohttp {bare_rps:,.0f}/s", flush=True)
            paced = signed("SMp", int(args.rate * args.seconds))
            bare_lat = await open_loop(bare_port, paced, args.rate, args.seconds)
            ours_lat = await open_loop(
                gw.http_port, signed("SMq", int(args.rate * args.seconds)), args.rate, args.seconds
            )
            conn = await asyncpg.connect(dsn)
            stored = await conn.fetchval("SELECT count(*) FROM messages")
            await conn.close()
        finally:
            bare.terminate()
            await gw.close()
            await asyncio.to_thread(cluster.stop)
    print(
        f"latency at {args.rate:.0f}/s: gateway p50 {percentile(ours_lat, 0.5):.1f} ms p99 "
        f"{percentile(ours_lat, 0.99):.1f} ms ({len(ours_lat)} ok); bare p50 {percentile(bare_lat, 0.5):.1f} "
        f"ms p99 {percentile(bare_lat, 0.99):.1f} ms; {stored:,} messages stored",
        flush=True,
    )
    print(
        result_line(
            "sms_webhook",
            ours_rps,
            bare_rps,
            p50_ms=percentile(ours_lat, 0.5),
            p99_ms=percentile(ours_lat, 0.99),
            bare_p50_ms=percentile(bare_lat, 0.5),
            bare_p99_ms=percentile(bare_lat, 0.99),
            rate=int(args.rate),
        ),
        flush=True,
    )


def _free_tcp() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--bare-server":
        bare_server(int(sys.argv[2]))
    else:
        uvloop.run(main())
