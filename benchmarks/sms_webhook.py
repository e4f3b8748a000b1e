"""Signed Twilio and Telnyx webhooks into the gateway, beside a bare aiohttp
handler, in the same run (issues 5 and 13).

The gateway (a real ``gateway serve`` process on its own Postgres cluster, with
default durability) verifies each signature, routes the text (R1-R6) and
commits message, timeline and usage before answering. The reference is a bare
aiohttp + uvloop process whose handler only parses the body (form or JSON).
Both get the same kind of pre-signed requests (distinct message ids, so no
redelivery shortcut):

* throughput: ``wrk`` (closed loop, 2 threads, 32 connections) for
  ``--seconds``, texts/s, Twilio and Telnyx; ``--repeats`` pairs of runs,
  bare and gateway in alternating order, and the pair with the median ratio
  is reported (runs on this machine vary by up to 2x);
* capacity: at 32 connections the gateway is bound by its writer's commits
  (each request waits for one; the CPU is not all used), the bare handler
  by CPU. Each side's capacity is its best Twilio throughput over
  32, 128 and 512 connections, so the overload runs below are at 2x and 4x
  what the gateway can really take;
* latency: an open-loop client (benchmarks/open_loop.py) at ``--rate`` texts/s
  (default 1,000) for ``--seconds``, p50/p99 in ms;
* overload: the same client at 2x and 4x the gateway's Twilio capacity for
  ``--overload-seconds``: p99 of the 200s (from the scheduled time, and from
  the write), and the 503s (Retry-After, redeliver) counted apart.

Installs wrk when it is missing. Ends with the DESIGN §4 ``result:`` line
(metric: the gateway's Twilio texts/s; reference: the bare handler's).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

import asyncpg
import uvloop
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from multidict import MultiDict
from twilio.request_validator import RequestValidator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import open_loop
from benchmarks.common import ensure_wrk, free_tcp_port, median_pair, percentile, result_line, wrk_rate
from gateway.store.embedded import EmbeddedPostgres
from gateway.store.migrations import migrate
from tests.factories import twilio_sid
from tests.gateway_process import GatewayProcess

TOKEN, PUBLIC = "0123456789abcdef0123456789abcdef", "https://gw.example.com"
PATH, TELNYX_PATH = "/v1/webhooks/twilio/messages", "/v1/webhooks/telnyx/messages"
TELNYX_KEY = Ed25519PrivateKey.generate()
TELNYX_PUBLIC = base64.b64encode(
    TELNYX_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
).decode()
NUMBER = "+15550180000"
WRK_THREADS = 2
CAPACITY_CONNECTIONS = (32, 128, 512)
# Each line of the requests file: header name, value, [name, value, ...], body; tab-separated.
# LuaJIT seeds every thread's math.random alike, so a random start sent each
# request twice, once per thread (half the gateway's "texts" were
# redeliveries): each thread starts at its own share of the file instead.
LUA = """
local requests = {}
local i = 0
local threads = 0
setup = function(thread)
  thread:set("share", threads)
  threads = threads + 1
end
init = function(args)
  for line in io.lines(args[1]) do
    local fields = {}
    for field in (line .. "\t"):gmatch("([^\t]*)\t") do fields[#fields + 1] = field end
    local headers = {}
    for k = 1, #fields - 1, 2 do headers[fields[k]] = fields[k + 1] end
    requests[#requests + 1] = {headers = headers, body = fields[#fields]}
  end
  i = share * math.floor(#requests / THREADS)
end
request = function()
  i = i % #requests + 1
  local r = requests[i]
  return wrk.format("POST", nil, r.headers, r.body)
end
""".replace("THREADS", str(WRK_THREADS))

Signed = tuple[list[tuple[str, str]], str]  # (headers, body)


def signed(prefix: str, count: int) -> list[Signed]:
    """Twilio form webhooks, signed as Twilio's SDK signs them."""
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
        signature = validator.compute_signature(PUBLIC + PATH, MultiDict(params))
        headers = [("Content-Type", "application/x-www-form-urlencoded"), ("X-Twilio-Signature", signature)]
        out.append((headers, urlencode(params)))
    return out


def signed_telnyx(prefix: str, count: int) -> list[Signed]:
    """Telnyx message.received events, Ed25519-signed over timestamp|body."""
    stamp = str(int(time.time()))
    out = []
    for i in range(count):
        body = json.dumps(
            {
                "data": {
                    "event_type": "message.received",
                    "id": f"ev-{prefix}{i}",
                    "payload": {
                        "id": f"{prefix}{i}",
                        "from": {"phone_number": f"+1555019{i % 1000:04d}"},
                        "to": [{"phone_number": NUMBER}],
                        "text": "Is the house on Elm Street still for sale?",
                        "media": [],
                        "parts": 1,
                    },
                }
            }
        )
        signature = base64.b64encode(TELNYX_KEY.sign(stamp.encode() + b"|" + body.encode())).decode()
        headers = [
            ("Content-Type", "application/json"),
            ("telnyx-signature-ed25519", signature),
            ("telnyx-timestamp", stamp),
        ]
        out.append((headers, body))
    return out


def raw_http(path: str, requests: list[Signed]) -> list[bytes]:
    """Complete HTTP/1.1 requests for the open-loop client."""
    out = []
    for headers, body in requests:
        data = body.encode()
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
        out.append(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{lines}Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
    return out


def write_for_wrk(path: Path, requests: list[Signed]) -> Path:
    path.write_text(
        "".join(
            "\t".join([*(f for pair in headers for f in pair), body]) + "\n" for headers, body in requests
        )
    )
    return path


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
    """The reference: parse the body, answer as the gateway does."""

    async def twilio(request: web.Request) -> web.Response:
        await request.post()
        return web.Response(text="<Response/>", content_type="text/xml")

    async def telnyx(request: web.Request) -> web.Response:
        await request.json()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post(PATH, twilio)
    app.router.add_post(TELNYX_PATH, telnyx)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, loop=uvloop.new_event_loop())


def run_wrk(port: int, path: str, requests: Path, seconds: float, connections: int = 32) -> float:
    script = requests.with_suffix(".lua")
    script.write_text(LUA)
    return wrk_rate(
        [
            f"-t{WRK_THREADS}",
            f"-c{connections}",
            f"-d{int(seconds)}s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}{path}",
            "--",
            str(requests),
        ]
    )


def summary(outcome: open_loop.Outcome) -> str:
    others = {status: n for status, n in sorted(outcome.statuses.items()) if status not in (200, 503)}
    return (
        f"offered {outcome.sent_per_s:,.0f}/s: p50 {percentile(outcome.latencies_ms, 0.5):.1f} ms"
        f" p99 {percentile(outcome.latencies_ms, 0.99):.1f} ms"
        f" (from the write: {percentile(outcome.written_ms, 0.99):.1f} ms)"
        f" over {outcome.statuses[200]:,} 200s;"
        f" {outcome.statuses[503]:,} 503s" + (f"; other {others}" if others else "")
    )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--overload-seconds", type=float, default=4.0)
    parser.add_argument(
        "--repeats", type=int, default=3, help="throughput pairs (bare, gateway); the median ratio counts"
    )
    args = parser.parse_args()
    ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="gw-sms-bench-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        cluster = EmbeddedPostgres(work / "pg")
        dsn = await asyncio.to_thread(cluster.start)
        bare_port = free_tcp_port()
        bare = subprocess.Popen([sys.executable, __file__, "--bare-server", str(bare_port)])
        gw = GatewayProcess(
            {
                "GATEWAY_DATABASE_URL": dsn,
                "GATEWAY_TWILIO_AUTH_TOKEN": TOKEN,
                "GATEWAY_TELNYX_PUBLIC_KEY": TELNYX_PUBLIC,
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
            # Enough that no thread wraps into another's share below 8,000 texts/s.
            count = int(max(args.rate * args.seconds, 8_000 * args.seconds, 60_000))
            extra_levels = CAPACITY_CONNECTIONS[1:]
            print(f"signing {(2 + 2 * args.repeats + len(extra_levels)) * count:,} requests...", flush=True)
            bare_files = {
                "twilio": write_for_wrk(work / "bare_twilio.tsv", signed("wrkbare", count)),
                "telnyx": write_for_wrk(work / "bare_telnyx.tsv", signed_telnyx("wrkbare", count)),
            }
            # The gateway gets fresh message ids in every repeat: a redelivery is cheaper.
            gw_files = [
                {
                    "twilio": write_for_wrk(work / f"gw_twilio{k}.tsv", signed(f"wrk{k}_", count)),
                    "telnyx": write_for_wrk(work / f"gw_telnyx{k}.tsv", signed_telnyx(f"wrk{k}_", count)),
                }
                for k in range(args.repeats)
            ]
            capacity_files = [
                write_for_wrk(work / f"gw_capacity{c}.tsv", signed(f"wrkcap{c}_", count))
                for c in extra_levels
            ]
            pairs: dict[str, list[tuple[float, float]]] = {"twilio": [], "telnyx": []}
            for k in range(args.repeats):
                for provider, path in (("twilio", PATH), ("telnyx", TELNYX_PATH)):
                    runs = [(bare_port, bare_files[provider]), (gw.http_port, gw_files[k][provider])]
                    # Alternate who goes first: the machine's slow spells then fall on both.
                    order = runs if k % 2 == 0 else runs[::-1]
                    measured = {port: run_wrk(port, path, file, args.seconds) for port, file in order}
                    pairs[provider].append((measured[gw.http_port], measured[bare_port]))
                    ours, bare_k = pairs[provider][-1]
                    print(
                        f"{provider} throughput, run {k + 1}: gateway {ours:,.0f}/s,"
                        f" bare aiohttp {bare_k:,.0f}/s (ratio {ours / bare_k:.2f})",
                        flush=True,
                    )
            ours_rps, bare_rps = median_pair(pairs["twilio"])
            ours_telnyx, bare_telnyx = median_pair(pairs["telnyx"])
            print(f"Twilio (median ratio): gateway {ours_rps:,.0f}/s, bare aiohttp {bare_rps:,.0f}/s")
            print(
                f"Telnyx (median ratio): gateway {ours_telnyx:,.0f}/s, bare aiohttp {bare_telnyx:,.0f}/s"
                f" (ratio {ours_telnyx / bare_telnyx:.2f})",
                flush=True,
            )
            # 32 connections: the median pair above.
            capacity = {bare_port: bare_rps, gw.http_port: ours_rps}
            for n, connections in enumerate(extra_levels):
                runs = [(bare_port, bare_files["twilio"]), (gw.http_port, capacity_files[n])]
                for port, file in runs if n % 2 == 0 else runs[::-1]:
                    rps = run_wrk(port, PATH, file, args.seconds, connections)
                    capacity[port] = max(capacity[port], rps)
                    side = "gateway" if port == gw.http_port else "bare aiohttp"
                    print(f"capacity, {connections} connections: {side} {rps:,.0f}/s", flush=True)
            ours_capacity, bare_capacity = capacity[gw.http_port], capacity[bare_port]
            print(
                f"Twilio capacity (best over {', '.join(map(str, CAPACITY_CONNECTIONS))} connections):"
                f" gateway {ours_capacity:,.0f}/s, bare aiohttp {bare_capacity:,.0f}/s"
                f" (ratio {ours_capacity / bare_capacity:.2f})",
                flush=True,
            )
            paced = int(args.rate * args.seconds)
            bare_lat = await open_loop.run(
                bare_port, raw_http(PATH, signed("SMp", paced)), args.rate, args.seconds
            )
            ours_lat = await open_loop.run(
                gw.http_port, raw_http(PATH, signed("SMq", paced)), args.rate, args.seconds
            )
            print(f"Twilio at {args.rate:,.0f}/s: gateway {summary(ours_lat)}", flush=True)
            print(f"Twilio at {args.rate:,.0f}/s: bare {summary(bare_lat)}", flush=True)
            telnyx_lat = await open_loop.run(
                gw.http_port, raw_http(TELNYX_PATH, signed_telnyx("tq", paced)), args.rate, args.seconds
            )
            print(f"Telnyx at {args.rate:,.0f}/s: gateway {summary(telnyx_lat)}", flush=True)
            overload = {}
            for times in (2, 4):
                rate = times * ours_capacity
                load = raw_http(PATH, signed(f"SMo{times}x", int(rate * args.overload_seconds)))
                await asyncio.sleep(2)  # let the previous run's tail drain
                # As many connections as a carrier-scale aggregator opens: enough that
                # the queue forms in the gateway, where max_pending can see it.
                overload[times] = await open_loop.run(
                    gw.http_port, load, rate, args.overload_seconds, connections=4096
                )
                print(f"Twilio at {times}x capacity: gateway {summary(overload[times])}", flush=True)
            conn = await asyncpg.connect(dsn)
            stored = await conn.fetchval("SELECT count(*) FROM messages")
            await conn.close()
        finally:
            bare.terminate()
            await gw.close()
            await asyncio.to_thread(cluster.stop)
    acknowledged = sum(o.statuses[200] for o in (ours_lat, telnyx_lat, *overload.values()))
    print(f"{stored:,} messages stored (>= {acknowledged:,} acknowledged by the open-loop runs)", flush=True)
    print(
        result_line(
            "sms_webhook",
            ours_rps,
            bare_rps,
            p50_ms=percentile(ours_lat.latencies_ms, 0.5),
            p99_ms=percentile(ours_lat.latencies_ms, 0.99),
            bare_p50_ms=percentile(bare_lat.latencies_ms, 0.5),
            bare_p99_ms=percentile(bare_lat.latencies_ms, 0.99),
            rate=int(args.rate),
            telnyx_ratio=ours_telnyx / bare_telnyx,
            telnyx_p99_ms=percentile(telnyx_lat.latencies_ms, 0.99),
            capacity=ours_capacity,
            bare_capacity=bare_capacity,
            capacity_ratio=ours_capacity / bare_capacity,
            p99_2x_ms=percentile(overload[2].latencies_ms, 0.99),
            p99_2x_written_ms=percentile(overload[2].written_ms, 0.99),
            refused_2x=overload[2].statuses[503],
            p99_4x_ms=percentile(overload[4].latencies_ms, 0.99),
            p99_4x_written_ms=percentile(overload[4].written_ms, 0.99),
            refused_4x=overload[4].statuses[503],
        ),
        flush=True,
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--bare-server":
        bare_server(int(sys.argv[2]))
    else:
        uvloop.run(main())
