"""Lead import benchmark (issue 4): POST /v1/leads:import of N leads (default
100,000; ~1.3 phones and 1 tag each) as CSV to a running gateway, timed from
request to 201, and until the routing index has the last lead; beside the
reference, raw asyncpg COPY of the same rows with no parsing or validation.

Target (reported, not asserted): 100,000 leads in under 10 s.
Run: ``python benchmarks/lead_import.py [--phones N]`` (N = leads here).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import phones_argument, result_line
from gateway import config
from gateway.config import DatabaseSettings, HttpSettings, Settings
from gateway.server import Gateway
from gateway.store.api_keys import create_account
from gateway.store.embedded import EmbeddedPostgres


def csv_body(n: int, agent: int, offset: int) -> bytes:
    lines = ["name,primary_agent_id,source,phones,tags"]
    for i in range(n):
        phones = f"+1{3_000_000_000 + offset + i}"
        if i % 3 == 0:
            phones += f";+1{4_000_000_000 + offset + i}"
        lines.append(f"Lead {i},{agent},Import,{phones},imported")
    return ("\n".join(lines) + "\n").encode()


async def reference_copy(conn: asyncpg.Connection, account: int, agent: int, n: int) -> float:
    started = time.perf_counter()
    async with conn.transaction():
        await conn.execute("SET LOCAL gateway.bulk = 'on'")
        ids = [
            r[0]
            for r in await conn.fetch(
                "SELECT nextval(pg_get_serial_sequence('leads', 'id')) FROM generate_series(1, $1)", n
            )
        ]
        await conn.copy_records_to_table(
            "leads",
            columns=["id", "account_id", "name", "primary_agent_id", "source"],
            records=[(lead_id, account, f"Lead {i}", agent, "Import") for i, lead_id in enumerate(ids)],
        )
        phones = [(account, lead_id, f"+1{5_000_000_000 + i}") for i, lead_id in enumerate(ids)]
        phones += [
            (account, lead_id, f"+1{6_000_000_000 + i}") for i, lead_id in enumerate(ids) if i % 3 == 0
        ]
        await conn.copy_records_to_table(
            "lead_phones", columns=["account_id", "lead_id", "e164"], records=phones
        )
        await conn.copy_records_to_table(
            "lead_tags",
            columns=["account_id", "lead_id", "tag"],
            records=[(account, lead_id, "imported") for lead_id in ids],
        )
    return time.perf_counter() - started


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory(prefix="gw-bench-") as tmp:
        Path(tmp).chmod(0o755)
        cluster = EmbeddedPostgres(
            Path(tmp) / "pg", extra_options=("-c fsync=off", "-c synchronous_commit=off")
        )
        dsn = cluster.start()
        settings = config.replace(
            Settings(),
            http=HttpSettings(host="127.0.0.1", port=0, max_import_bytes=256 << 20),
            database=DatabaseSettings(url=dsn),
        )
        gateway = Gateway(settings)
        await gateway.start()
        try:
            conn = await asyncpg.connect(dsn)
            account, owner, key = await create_account(conn, "Bench", "enterprise", "o@bench.test")
            ref_account, ref_owner, _ = await create_account(conn, "Ref", "enterprise", "o@ref.test")
            body = csv_body(n, owner, 0)
            print(f"CSV: {n:,} leads, {len(body) / 2**20:.1f} MiB", flush=True)
            url = f"http://127.0.0.1:{gateway.http_port}/v1/leads:import"
            headers = {"Authorization": f"Bearer {key}", "Content-Type": "text/csv"}
            started = time.perf_counter()
            async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers) as r:
                result = await r.json()
                assert r.status == 201, result
            imported_s = time.perf_counter() - started
            assert gateway.keeper is not None
            last_phone = f"+1{3_000_000_000 + n - 1}"
            await gateway.keeper.wait_until(lambda idx: bool(idx.leads_for(account, last_phone)), limit_s=60)
            routable_s = time.perf_counter() - started
            reference_s = await reference_copy(conn, ref_account, ref_owner, n)
            await conn.close()
        finally:
            await gateway.stop()
            cluster.stop()
    print(f"import: {imported_s:.2f}s to 201, {routable_s:.2f}s until routable; raw COPY {reference_s:.2f}s")
    print(
        result_line(
            "lead_import",
            imported_s,
            reference_s,
            leads=n,
            routable_s=routable_s,
            leads_per_s=round(n / imported_s),
        )
    )


if __name__ == "__main__":
    uvloop.run(main(phones_argument(__doc__, default=100_000)))
