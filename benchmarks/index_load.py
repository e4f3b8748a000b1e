"""Index load benchmark (issue 2): how fast and how small the routing index is.

Bulk-loads N lead phones (default 1,000,000) with COPY across 1,000 accounts
into a private Postgres cluster, then measures, each beside a reference in
the same run:

* full index load seconds   vs raw asyncpg streaming the same rows (no index);
* resident memory per 1M phones (RSS growth while the loaded index is alive);
* lookups per second         vs a bare dict.get on prebuilt tuple keys;
* commit -> index propagation p50/p99 over 1,000 updates
                             vs a bare asyncpg LISTEN receiving a NOTIFY.

Targets (reported, not asserted): load <= 3 s, <= 200 MB, >= 2M lookups/s,
p99 propagation <= 50 ms. Run: ``python benchmarks/index_load.py [--phones N]``.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import percentile as pct
from benchmarks.common import phones_argument, result_line
from gateway.domain.index import Index
from gateway.metrics import Metrics
from gateway.store.embedded import EmbeddedPostgres
from gateway.store.index_keeper import IndexKeeper
from gateway.store.index_queries import _LEAD_PHONES, BATCH_ACCOUNTS, load_snapshot
from gateway.store.migrations import migrate

ACCOUNTS = 1_000
AGENTS_PER_ACCOUNT = 5
UPDATES = 1_000
RUNS = 3


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def populate(conn: asyncpg.Connection, phones: int) -> list[tuple[int, str]]:
    """COPY accounts' users, leads and lead phones; ~2% of phones are duplicates
    (R2/R3) and ~5% of leads have a second phone. Returns sample (account, phone)."""
    await conn.execute("SET session_replication_role = replica")  # bulk load: no triggers
    await conn.copy_records_to_table(
        "accounts", columns=["name", "plan"], records=[(f"Bench {a}", "enterprise") for a in range(ACCOUNTS)]
    )
    account_ids = [r[0] for r in await conn.fetch("SELECT id FROM accounts ORDER BY id")]
    await conn.copy_records_to_table(
        "users",
        columns=["account_id", "email", "role", "package"],
        records=[
            (a, f"u{i}@a{a}.test", "owner" if i == 0 else "agent", "standard")
            for a in account_ids
            for i in range(AGENTS_PER_ACCOUNT)
        ],
    )
    agents: dict[int, list[int]] = {}
    for account_id, user_id in await conn.fetch("SELECT account_id, id FROM users"):
        agents.setdefault(account_id, []).append(user_id)

    rng = random.Random(7)
    leads_n = int(phones / 1.05)
    lead_ids = [
        r[0]
        for r in await conn.fetch(
            "SELECT nextval(pg_get_serial_sequence('leads', 'id')) FROM generate_series(1, $1)", leads_n
        )
    ]
    epoch = datetime(2020, 1, 1, tzinfo=UTC)
    lead_rows = []
    lead_account: list[int] = []
    for i, lead_id in enumerate(lead_ids):
        account_id = account_ids[i % ACCOUNTS]
        lead_account.append(account_id)
        created = epoch + timedelta(seconds=rng.randrange(200_000_000))
        lead_rows.append((lead_id, account_id, rng.choice(agents[account_id]), "Bench", created))
    await conn.copy_records_to_table(
        "leads", columns=["id", "account_id", "primary_agent_id", "source", "created_at"], records=lead_rows
    )
    phone_rows = []
    for i, lead_id in enumerate(lead_ids):
        phone_rows.append((lead_account[i], lead_id, f"+1{2_000_000_000 + i}"))
    i = 0
    while len(phone_rows) < phones:
        j = rng.randrange(leads_n)
        if i % 3 == 0:  # a duplicate: another lead of the same account shares this phone
            other = (j + ACCOUNTS) % leads_n
            phone = f"+1{2_000_000_000 + other}"
        else:
            phone = f"+1{5_000_000_000 + i}"
        phone_rows.append((lead_account[j], lead_ids[j], phone))
        i += 1
    phone_rows = list({(r[1], r[2]): r for r in phone_rows}.values())
    await conn.copy_records_to_table(
        "lead_phones", columns=["account_id", "lead_id", "e164"], records=phone_rows
    )
    await conn.execute("SET session_replication_role = origin")
    await conn.execute("ANALYZE")
    return [(a, p) for a, _, p in rng.sample(phone_rows, min(100_000, len(phone_rows)))]


async def raw_stream(conn: asyncpg.Connection) -> int:
    rows = 0
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        cursor = await conn.cursor(_LEAD_PHONES)
        while batch := await cursor.fetch(BATCH_ACCOUNTS):
            rows += sum(len(row[1]) for row in batch)
    return rows


def lookups_per_s(index: Index, sample: list[tuple[int, str]]) -> tuple[float, float]:
    probes = sample * 10
    leads_for = index.leads_for
    started = time.perf_counter()
    for account_id, phone in probes:
        leads_for(account_id, phone)
    ours = len(probes) / (time.perf_counter() - started)
    plain = {(a, p): (1, 2, 3.0) for a, p in sample}
    get = plain.get
    started = time.perf_counter()
    for key in probes:
        get(key)
    reference = len(probes) / (time.perf_counter() - started)
    return ours, reference


async def propagation_ms(dsn: str, sample: list[tuple[int, str]]) -> list[float]:
    keeper = IndexKeeper(dsn, Metrics())
    await keeper.start()
    writer = await asyncpg.connect(dsn)
    latencies = []
    try:
        for account_id, phone in sample[:UPDATES]:
            ref = keeper.index.leads_for(account_id, phone)[0]
            new_agent = await writer.fetchval(
                "SELECT id FROM users WHERE account_id = $1 AND id <> $2 LIMIT 1", account_id, ref.agent_id
            )
            await writer.execute(
                "UPDATE leads SET primary_agent_id = $1 WHERE id = $2", new_agent, ref.lead_id
            )
            committed = time.perf_counter()
            await keeper.wait_until(
                lambda idx, a=account_id, p=phone, lead=ref.lead_id, g=new_agent: any(
                    r.lead_id == lead and r.agent_id == g for r in idx.leads_for(a, p)
                )
            )
            latencies.append((time.perf_counter() - committed) * 1000)
    finally:
        await writer.close()
        await keeper.stop()
    return latencies


async def notify_reference_ms(dsn: str) -> list[float]:
    listener = await asyncpg.connect(dsn)
    writer = await asyncpg.connect(dsn)
    arrived: asyncio.Queue[float] = asyncio.Queue()
    await listener.add_listener("bench", lambda *_: arrived.put_nowait(time.perf_counter()))
    latencies = []
    try:
        for i in range(UPDATES):
            await writer.execute(f"NOTIFY bench, '{i}'")
            committed = time.perf_counter()
            latencies.append(max(0.0, (await arrived.get()) - committed) * 1000)
    finally:
        await listener.close()
        await writer.close()
    return latencies


async def main(phones: int) -> None:
    with tempfile.TemporaryDirectory(prefix="gw-bench-") as tmp:
        Path(tmp).chmod(0o755)
        cluster = EmbeddedPostgres(
            Path(tmp) / "pg",
            extra_options=("-c fsync=off", "-c synchronous_commit=off", "-c shared_buffers=512MB"),
        )
        dsn = cluster.start()
        try:
            conn = await asyncpg.connect(dsn)
            await migrate(conn)
            started = time.perf_counter()
            sample = await populate(conn, phones)
            total = await conn.fetchval("SELECT count(*) FROM lead_phones")
            print(f"populated {total:,} lead phones in {time.perf_counter() - started:.1f}s", flush=True)

            gc.collect()
            rss_before = rss_bytes()
            index = await load_snapshot(conn)
            gc.collect()
            mem_per_1m = (rss_bytes() - rss_before) / index.size().lead_phones * 1_000_000 / 2**20
            ours_load, ref_load = [], []
            for _ in range(RUNS):
                t = time.perf_counter()
                await raw_stream(conn)
                ref_load.append(time.perf_counter() - t)
                t = time.perf_counter()
                await load_snapshot(conn)
                ours_load.append(time.perf_counter() - t)
            load_s, ref_s = statistics.median(ours_load), statistics.median(ref_load)
            print(
                f"index load: {load_s:.2f}s (raw asyncpg stream {ref_s:.2f}s), "
                f"{index.size().lead_phones:,} phones, {mem_per_1m:.0f} MB per 1M phones",
                flush=True,
            )

            ours_lps, ref_lps = lookups_per_s(index, sample)
            print(f"lookups: {ours_lps / 1e6:.2f}M/s (bare dict.get {ref_lps / 1e6:.2f}M/s)", flush=True)
            del index
            gc.collect()

            ref_lat = await notify_reference_ms(dsn)
            lat = await propagation_ms(dsn, sample)
            print(
                f"propagation: p50 {pct(lat, 0.5):.2f} ms, p99 {pct(lat, 0.99):.2f} ms "
                f"(bare LISTEN/NOTIFY p50 {pct(ref_lat, 0.5):.2f} ms, p99 {pct(ref_lat, 0.99):.2f} ms)"
            )
            await conn.close()
        finally:
            cluster.stop()
    print(
        result_line(
            "index_load",
            load_s,
            ref_s,
            phones=int(total),
            mem_mb_per_1m=round(mem_per_1m),
            lookups_per_s=round(ours_lps),
            lookup_ratio=ours_lps / ref_lps,
            propagation_p50_ms=pct(lat, 0.5),
            propagation_p99_ms=pct(lat, 0.99),
            notify_ref_p99_ms=pct(ref_lat, 0.99),
            propagation_ratio_p99=pct(lat, 0.99) / max(pct(ref_lat, 0.99), 1e-6),
        )
    )


if __name__ == "__main__":
    uvloop.run(main(phones_argument(__doc__)))
