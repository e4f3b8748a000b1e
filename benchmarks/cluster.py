"""What the cluster-wide R7 counter costs (issue 14): calls per second at zero
failures through two gateways with ``cluster.slots = postgres``, beside one
gateway with ``local`` slots, in the same run on the same Postgres.

Same traffic as benchmarks/sip_cps.py (SIPp carrier -> gateway -> SIPp agent,
short calls over 1,000 numbers); for the cluster the rate is split between
the two gateways (one carrier SIPp each). The latency step (a fixed rate,
``--latency-rate``) and the burst run on fresh gateways, before each ramp.
One gateway is one event loop on one core; two may use both cores of a
2-core machine (shared with Postgres and SIPp), so the rate ratio mixes the
counter's cost with a second core's gain: the latency at one fixed rate is
the cleaner view of what the admission round trip adds. Reported: each side's highest passing rate and their
ratio; the INVITE->200 round trip p50/p99 at the same rate through each (the
added latency is the admission round trip); and exactness: a burst of 500
long calls to ONE number, split across the two gateways at once, must admit
exactly 50 (the rest 486).

    .venv/bin/python benchmarks/cluster.py             # ~8 min
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

import asyncpg
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import result_line
from benchmarks.sip_cps import AGENT_IP, CARRIER_IP, ramp, seed, sipp, sipp_kill, start_gateway, step
from gateway.store.embedded import EmbeddedPostgres
from tests.sipp_tools import SCENARIOS, free_port

A_IP, B_IP = "127.0.0.5", "127.0.0.6"
CLUSTER = {"GATEWAY_CLUSTER_SLOTS": "postgres", "GATEWAY_SIP_NONCE_SECRET": "benchmark-cluster-secret"}
BURST = 500


async def stop(*processes: asyncio.subprocess.Process) -> None:
    for proc in processes:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


async def burst(dsn: str, targets: list[str], agent_port: int, work: Path) -> tuple[int, int]:
    """500 long calls to one number, half to each gateway, all at once:
    (answered, refused with 486) as the call records say."""
    conn = await asyncpg.connect(dsn)
    try:
        number = await conn.fetchval("SELECT e164 FROM numbers ORDER BY id LIMIT 1")
        before = await conn.fetchval("SELECT max(id) FROM call_records") or 0
    finally:
        await conn.close()
    run = work / "burst"
    run.mkdir()
    agent = asyncio.create_task(
        sipp(
            [
                "-sf",
                str(SCENARIOS / "uas_agent.xml"),
                "-i",
                AGENT_IP,
                "-p",
                str(agent_port),
                "-m",
                str(BURST),
                "-nostdin",
                "-timeout",
                "60s",
            ],
            run,
            70,
        )
    )
    await asyncio.sleep(0.3)
    carriers = []
    for n, target in enumerate(targets):
        cwd = run / f"carrier{n}"
        cwd.mkdir()
        carriers.append(
            sipp(
                [
                    target,
                    "-sf",
                    str(SCENARIOS / "uac_dialog.xml"),
                    "-s",
                    number[1:],
                    "-i",
                    CARRIER_IP,
                    "-p",
                    str(free_port(CARRIER_IP)),
                    "-m",
                    str(BURST // len(targets)),
                    "-r",
                    "1000",
                    "-l",
                    str(BURST),
                    "-d",
                    "5000",
                    "-nostdin",
                    "-timeout",
                    "40s",
                ],
                cwd,
                50,
            )
        )
    await asyncio.gather(*carriers)
    await asyncio.sleep(3)  # call records reach the database
    agent.cancel()
    await sipp_kill(run)
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT disposition, count(*) FROM call_records WHERE id > $1 GROUP BY disposition", before
        )
    finally:
        await conn.close()
    counts = {r["disposition"]: r["count"] for r in rows}
    return counts.get("answered", 0), counts.get("busy_limit", 0)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--step-seconds", type=float, default=4.0)
    parser.add_argument("--latency-rate", type=int, default=400, help="calls/s of the latency step")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gw-cluster-bench-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        cluster = EmbeddedPostgres(work / "pg")
        dsn = cluster.start()
        agent_port = free_port(AGENT_IP)
        rate = args.latency_rate
        try:
            inf = await seed(dsn, agent_port, work)
            port = free_port("127.0.0.1")
            local = await start_gateway(dsn, port, work)
            try:
                # Latency first, on a fresh gateway: after the ramp's failing step the
                # machine needs longer than a step's pause to recover.
                local_lat = await step(f"127.0.0.1:{port}", rate, args.step_seconds, agent_port, inf, work)
                print(f"latency at {rate} calls/s, one gateway, local slots: {local_lat}", flush=True)
                await asyncio.sleep(4.5)
                local_best = await ramp(
                    "local", f"127.0.0.1:{port}", args.step_seconds, agent_port, inf, work
                )
            finally:
                await stop(local)
            ports = free_port(A_IP), free_port(B_IP)
            pair = [
                await start_gateway(dsn, ports[0], work, host=A_IP, **CLUSTER),
                await start_gateway(dsn, ports[1], work, host=B_IP, **CLUSTER),
            ]
            targets = [f"{A_IP}:{ports[0]}", f"{B_IP}:{ports[1]}"]
            try:
                await asyncio.sleep(2)  # both heartbeats have seen each other
                pair_lat = await step(targets, rate, args.step_seconds, agent_port, inf, work)
                print(f"latency at {rate} calls/s, two gateways, postgres slots: {pair_lat}", flush=True)
                await asyncio.sleep(4.5)
                answered, refused = await burst(dsn, targets, agent_port, work)
                await asyncio.sleep(6)  # the burst's calls have ended
                pair_best = await ramp("cluster", targets, args.step_seconds, agent_port, inf, work)
                print(f"burst of {BURST} to one number over two gateways: {answered} answered, "
                      f"{refused} x 486", flush=True)  # fmt: skip
            finally:
                await stop(*pair)
        finally:
            await asyncio.to_thread(cluster.stop)
    print(
        result_line(
            "cluster_cps",
            pair_best,
            local_best,
            latency_rate=rate,
            local_p50_ms=local_lat["p50"],
            local_p99_ms=local_lat["p99"],
            cluster_p50_ms=pair_lat["p50"],
            cluster_p99_ms=pair_lat["p99"],
            added_p50_ms=pair_lat["p50"] - local_lat["p50"],
            added_p99_ms=pair_lat["p99"] - local_lat["p99"],
            burst_admitted=answered,
            burst_refused=refused,
            burst_exact=int(answered == 50 and answered + refused == BURST),
        ),
        flush=True,
    )


if __name__ == "__main__":
    uvloop.run(main())
