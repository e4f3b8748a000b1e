"""Analytics benchmark (issue 16, item 2): ``GET /v1/numbers/{id}/stats`` and
``GET /v1/stats`` over a year of a busy account: N call records (default 10
million) across 100 numbers, and N/10 texts, on a running gateway.

Each case is timed over real HTTP (median of 5), beside the reference: raw
asyncpg counting the same period's rows with the same index (the least any
answer costs; the ratio is reference / ours). The plan of the calls query is
printed, so the index each case uses is visible.

Run: ``python benchmarks/number_stats.py [--phones N]`` (N = call records here).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import phones_argument, result_line
from gateway import config
from gateway.config import DatabaseSettings, HttpSettings, Settings
from gateway.server import Gateway
from gateway.store import stats
from gateway.store.api_keys import create_account

NUMBERS = 100
YEAR_START = datetime(2025, 12, 1, tzinfo=UTC)
CHUNK = 1_000_000

# One call every (a year / N); 1 in 20 outbound; of the inbound, 60% answered
# after 0-29 s and talking 0-599 s, the rest missed, over the limit, abandoned, failed.
_CALLS = """
INSERT INTO call_records (account_id, number_id, sip_call_id, direction, caller_e164, callee_e164,
                          answered_by, invited_at, answered_at, ended_at, disposition)
SELECT $1, $2 + i % $5, 'bench-' || i, CASE WHEN i % 20 = 0 THEN 'outbound' ELSE 'inbound' END,
       '+1555' || lpad((i % 10000000)::text, 7, '0'), '+15550000000',
       CASE WHEN i % 10 < 6 THEN $6::bigint END, at,
       CASE WHEN i % 10 < 6 THEN at + (i % 30) * interval '1 second' END,
       at + (i % 30 + i % 600) * interval '1 second',
       (ARRAY['answered','answered','answered','answered','answered','answered','no_answer','busy_limit',
              'canceled','failed'])[i % 10 + 1]
  FROM generate_series($3::bigint, $4::bigint) AS i,
       LATERAL (SELECT $7::timestamptz + i * $8::float8 * interval '1 second') AS t(at)
"""

_TEXTS = """
INSERT INTO messages (account_id, number_id, direction, provider, provider_message_id, from_e164, to_e164,
                      status, created_at)
SELECT $1, $2 + i % $5, CASE WHEN i % 3 = 0 THEN 'outbound' ELSE 'inbound' END, 'twilio', 'SMbench' || i,
       '+15551234567', '+15550000000', CASE WHEN i % 3 = 0 THEN 'sent' ELSE 'received' END,
       $6::timestamptz + i * $7::float8 * interval '1 second'
  FROM generate_series($3::bigint, $4::bigint) AS i
"""


async def load(conn: asyncpg.Connection, account: int, owner: int, n: int) -> int:
    await conn.execute(
        "INSERT INTO numbers (account_id, e164, kind)"
        " SELECT $1, '+1555100' || lpad(g::text, 4, '0'), 'company' FROM generate_series(1, $2) g",
        account,
        NUMBERS,
    )
    first = await conn.fetchval("SELECT min(id) FROM numbers WHERE account_id = $1", account)
    spacing = 365 * 86400 / n
    started = time.perf_counter()
    for low in range(0, n, CHUNK):
        high = min(low + CHUNK, n) - 1
        await conn.execute(_CALLS, account, first, low, high, NUMBERS, owner, YEAR_START, spacing)
        print(f"  {high + 1:,} call records ({time.perf_counter() - started:.0f} s)", flush=True)
    await conn.execute(_TEXTS, account, first, 0, n // 10 - 1, NUMBERS, YEAR_START, spacing * 10)
    await conn.execute("VACUUM ANALYZE call_records")
    await conn.execute("VACUUM ANALYZE messages")
    print(f"loaded in {time.perf_counter() - started:.0f} s", flush=True)
    return int(first)


async def timed_http(session: aiohttp.ClientSession, url: str, params: dict[str, str]) -> tuple[float, dict]:  # type: ignore[type-arg]
    times, body = [], {}
    for _ in range(5):
        started = time.perf_counter()
        async with session.get(url, params=params) as r:
            body = await r.json()
            assert r.status == 200, body
        times.append(time.perf_counter() - started)
    return statistics.median(times), body


async def timed_reference(
    conn: asyncpg.Connection, account: int, number: int | None, start: datetime, end: datetime
) -> float:
    scope = "number_id = $2" if number is not None else "$2::bigint IS NULL"
    sql = (
        f"SELECT count(*) FROM call_records WHERE account_id = $1 AND {scope}"
        " AND invited_at >= $3 AND invited_at < $4"
    )
    times = []
    for _ in range(5):
        started = time.perf_counter()
        await conn.fetchval(sql, account, number, start, end)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def plan(
    conn: asyncpg.Connection, account: int, number: int | None, start: datetime, end: datetime, bucket: str
) -> str:
    """The scan the calls statement uses: the daily rollup, or the records' index by hour."""
    if bucket == "day":
        rows = await conn.fetch("EXPLAIN " + stats._DAYS, account, number or 0, start, end)
    else:
        scope = "account_id = $1 AND " + ("number_id = $2" if number is not None else "$2::bigint IS NULL")
        rows = await conn.fetch(
            "EXPLAIN " + stats._HOURS.format(scope=scope), account, number, start, end, timedelta(hours=1)
        )
    scans = [r[0].strip().removeprefix("->").strip() for r in rows if "Scan" in r[0]]
    return scans[0] if scans else "?"


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory(prefix="gw-bench-") as tmp:
        Path(tmp).chmod(0o755)
        from gateway.store.embedded import EmbeddedPostgres

        cluster = EmbeddedPostgres(
            Path(tmp) / "pg",
            extra_options=("-c fsync=off", "-c synchronous_commit=off", "-c max_wal_size=4GB"),
        )
        dsn = cluster.start()
        settings = config.replace(
            Settings(), http=HttpSettings(host="127.0.0.1", port=0), database=DatabaseSettings(url=dsn)
        )
        gateway = Gateway(settings)
        await gateway.start()
        try:
            conn = await asyncpg.connect(dsn)
            account, owner, key = await create_account(conn, "Bench", "enterprise", "o@bench.test")
            print(
                f"loading {n:,} call records and {n // 10:,} texts over a year, {NUMBERS} numbers", flush=True
            )
            first = await load(conn, account, owner, n)
            base = f"http://127.0.0.1:{gateway.http_port}"
            month = (YEAR_START + timedelta(days=180), YEAR_START + timedelta(days=211))
            year = (YEAR_START, YEAR_START + timedelta(days=365))
            cases = [
                ("number_year_by_day", first, year, "day"),
                ("number_month_by_hour", first, month, "hour"),
                ("account_year_by_day", None, year, "day"),
                ("account_month_by_hour", None, month, "hour"),
            ]
            figures: dict[str, float] = {}
            headers = {"Authorization": f"Bearer {key}"}
            async with aiohttp.ClientSession(headers=headers) as session:
                for name, number, (start, end), bucket in cases:
                    url = f"{base}/v1/numbers/{number}/stats" if number else f"{base}/v1/stats"
                    params = {"from": start.isoformat(), "to": end.isoformat(), "bucket": bucket}
                    ours, body = await timed_http(session, url, params)
                    reference = await timed_reference(conn, account, number, start, end)
                    scan = await plan(conn, account, number, start, end, bucket)
                    offered = body["totals"]["calls"]["offered"] + body["totals"]["calls"]["outbound"]
                    print(
                        f"{name}: {offered:,} calls, {len(body['buckets'])} buckets: {ours * 1000:.0f} ms"
                        f" (raw count {reference * 1000:.0f} ms, ratio {reference / ours:.2f}); {scan}",
                        flush=True,
                    )
                    figures[f"{name}_ms"] = round(ours * 1000, 1)
                    figures[f"{name}_ratio"] = round(reference / ours, 2)
            await conn.close()
        finally:
            await gateway.stop()
            cluster.stop()
    print(
        result_line(
            "number_stats",
            figures["number_year_by_day_ms"],
            figures["number_year_by_day_ms"] * figures["number_year_by_day_ratio"],
            records=n,
            **figures,
        )
    )


if __name__ == "__main__":
    uvloop.run(main(phones_argument(__doc__, default=10_000_000)))
