"""deploy/kamailio/kamailio.cfg in front of two gateways (issue 14, item 5):
the carrier sends every call to the dispatcher, calls are spread over both
gateways, in-dialog requests reach the gateway that owns the call, and a
gateway killed with -9 is taken out of rotation by the OPTIONS probes."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.gateway_process import GatewayProcess
from tests.sipp_tools import CARRIER_IP, PHONE_IP, free_port, start_sipp, udp_exchange
from tests.test_cluster import NUMBER, agent_number, routable, two_gateways

pytestmark = pytest.mark.timeout(180)
CONFIG = Path(__file__).parent.parent / "deploy" / "kamailio" / "kamailio.cfg"
DISPATCHER_IP = "127.0.0.7"


@contextlib.asynccontextmanager
async def dispatcher(workdir: Path, gateways: tuple[GatewayProcess, ...]) -> AsyncIterator[int]:
    """Kamailio with the deployment's config, dispatching to ``gateways``."""
    port = free_port(DISPATCHER_IP)
    listing = workdir / "dispatcher.list"
    listing.write_text("".join(f"1 sip:{gw.env['GATEWAY_SIP_HOST']}:{gw.sip_port} 0 0\n" for gw in gateways))
    if shutil.which("kamailio") is None:
        raise RuntimeError("kamailio is missing: apt-get install -y kamailio (.ci/run does)")
    (modules,) = Path("/usr/lib").glob("*/kamailio/modules")
    log = (workdir / "kamailio.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        "kamailio", "-DD", "-E", "-f", str(CONFIG), "-A", f"LISTEN_ADDR=udp:{DISPATCHER_IP}:{port}",
        "-A", f'DISPATCHER_LIST="{listing}"', "-A", "PING_INTERVAL=1", "-A", "CHILDREN=2",
        "-A", f'MODULES="{modules}/"',
        "-Y", str(workdir), stdout=log, stderr=log,
    )  # fmt: skip
    try:
        for _ in range(100):  # up when it answers a keepalive OPTIONS
            assert process.returncode is None, (workdir / "kamailio.log").read_text()[-2000:]
            options = (
                f"OPTIONS sip:{DISPATCHER_IP}:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {CARRIER_IP}:5998;branch=z9hG4bK-up{_}\r\n"
                f"From: <sip:probe@{CARRIER_IP}>;tag=p\r\nTo: <sip:{DISPATCHER_IP}>\r\nCall-ID: up-{_}\r\n"
                "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            )
            replies = await udp_exchange(options.encode(), (DISPATCHER_IP, port), wait_s=0.2)
            if replies and replies[0].startswith(b"SIP/2.0 200"):
                break
        yield port
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()


async def answered(gw: GatewayProcess) -> float:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{gw.http_port}/metrics") as r:
        text = await r.text()
    found = re.search(r'gateway_sip_calls_total\{direction="inbound",disposition="answered"\} (\S+)', text)
    return float(found.group(1)) if found else 0.0


async def test_the_dispatcher_spreads_calls_and_routes_around_a_dead_gateway(
    db_dsn: str, tmp_path: Path
) -> None:
    agent_port = free_port(PHONE_IP)
    await agent_number(db_dsn, [agent_port])
    async with two_gateways(db_dsn, tmp_path, GATEWAY_SIP_TRUNK_CIDRS=f"{DISPATCHER_IP}/32") as (a, b):
        await routable(a, b)
        async with dispatcher(tmp_path, (a, b)) as port:
            agent = await start_sipp(
                "agent", "uas_agent.xml", tmp_path, ip=PHONE_IP, port=agent_port, calls=10
            )
            first = await start_sipp(
                "first", "uac_dialog.xml", tmp_path, ip=CARRIER_IP, remote=f"{DISPATCHER_IP}:{port}",
                service=NUMBER, calls=6, rate=10, pause_ms=300,
            )  # fmt: skip
            assert await first.wait(30) == 0, first.errors()
            await a.settled()
            await b.settled()
            assert (await answered(a), await answered(b)) == (3.0, 3.0)  # round robin, ACK and BYE included

            a.kill()
            await a.wait()
            # OPTIONS probes every second; one unanswered takes A out of the rotation.
            # Kamailio shows that only on its RPC interface, which this config leaves
            # out: wait three probe intervals.
            await asyncio.sleep(3.0)
            later = await start_sipp(
                "later", "uac_dialog.xml", tmp_path, ip=CARRIER_IP, remote=f"{DISPATCHER_IP}:{port}",
                service=NUMBER, calls=4, rate=10, pause_ms=300,
            )  # fmt: skip
            assert await later.wait(30) == 0, later.errors()
            assert await agent.wait(20) == 0, agent.errors()
            await b.settled()
            assert await answered(b) == 7.0
