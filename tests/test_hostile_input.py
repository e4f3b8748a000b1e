"""Hostile input (issue 7): mutated SIP through the real UDP listener, raw
malformed HTTP, and per-source throttling of failed unauthenticated attempts."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import config
from gateway.config import TelnyxSettings, TwilioSettings
from gateway.domain.rate_limit import FailureLimiter
from gateway.server import Gateway
from gateway.sip.codec import parse
from gateway.sip.wire import cseq_number, problems, tag_of, top_branch, user_e164
from tests import factories
from tests.conftest import sip_settings
from tests.sipp_tools import CARRIER_IP, udp_exchange
from tests.test_texts_inbound import PUBLIC_KEY, TOKEN

pytestmark = pytest.mark.timeout(120)
NUMBER = "+15550170000"
TEMPLATES = [
    (
        "INVITE sip:{n}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bK-{i}\r\n"
        "From: <sip:+15557770000@127.0.0.2>;tag=f{i}\r\nTo: <sip:{n}@127.0.0.1>\r\nCall-ID: fz-{i}\r\n"
        "CSeq: 1 INVITE\r\nContact: <sip:c@127.0.0.2:5070>\r\nMax-Forwards: 70\r\n"
        "Content-Type: application/sdp\r\n"
        "Content-Length: 26\r\n\r\nv=0\r\nc=IN IP4 127.0.0.2\r\n"
    ),
    (
        "MESSAGE sip:{n}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bK-{i}\r\n"
        "From: <sip:+15557770000@127.0.0.2>;tag=f{i}\r\nTo: <sip:{n}@127.0.0.1>\r\nCall-ID: fz-{i}\r\n"
        "CSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
    ),
    (
        "BYE sip:gateway@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bK-{i}\r\n"
        "From: <sip:+15557770000@127.0.0.2>;tag=f{i}\r\nTo: <sip:{n}@127.0.0.1>;tag=t{i}\r\n"
        "Call-ID: fz-{i}\r\n"
        "CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    ),
    (
        "CANCEL sip:{n}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bK-{i}\r\n"
        "From: <sip:+15557770000@127.0.0.2>;tag=f{i}\r\nTo: <sip:{n}@127.0.0.1>\r\nCall-ID: fz-{i}\r\n"
        "CSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"
    ),
]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One of: flip bytes, cut, duplicate a line, drop a line, splice garbage, inflate a header."""
    if not data:
        return b"\x00"
    kind = rng.randrange(6)
    buf = bytearray(data)
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        return bytes(buf)
    if kind == 1:
        return data[: rng.randrange(len(data))]
    lines = data.split(b"\r\n")
    i = rng.randrange(len(lines))
    if kind == 2:
        lines.insert(i, lines[i])
    elif kind == 3:
        del lines[i]
    elif kind == 4:
        lines.insert(i, bytes(rng.randrange(256) for _ in range(rng.randint(1, 40))))
    else:
        lines[i] = lines[i] + b"x" * rng.randint(100, 3000)
    return b"\r\n".join(lines)


@settings(max_examples=400)
@given(st.integers(0, 3), st.integers(0, 2**32), st.integers(1, 4))
def test_parser_and_header_helpers_never_raise_on_mutations(template: int, seed: int, rounds: int) -> None:
    rng = random.Random(seed)
    data = TEMPLATES[template].format(n=NUMBER, i=seed).encode()
    for _ in range(rounds):
        data = mutate(data, rng)
    try:
        message = parse(data)
    except ValueError:
        return
    for helper in (top_branch, cseq_number):
        helper(message)
    tag_of(message.headers.get_first("to"))
    user_e164(message.headers.get_first("from"))
    if hasattr(message, "method"):
        problems(message)  # type: ignore[arg-type]


@pytest.fixture
async def gw(db_dsn: str, trunk_port: int) -> AsyncIterator[Gateway]:
    s = sip_settings(db_dsn, trunk_port)
    s = config.replace(
        s, twilio=TwilioSettings(auth_token=TOKEN), telnyx=TelnyxSettings(public_key=PUBLIC_KEY)
    )
    gateway = Gateway(s)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


async def test_mutated_sip_burst_leaves_the_server_answering(gw: Gateway, conn: asyncpg.Connection) -> None:
    acct = await factories.account(conn)
    await factories.number(conn, acct.id, NUMBER)  # routes to nobody reachable: 480 at once
    assert gw.keeper is not None and gw.sip is not None
    await gw.keeper.wait_until(lambda index: index.number(NUMBER) is not None)
    target = ("127.0.0.1", gw.sip.port)
    rng = random.Random(4475)
    loop = asyncio.get_running_loop()
    for source in (CARRIER_IP, "127.0.0.9"):  # a trunk, and a stranger
        transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=(source, 0))
        for i in range(1500):
            data = TEMPLATES[i % len(TEMPLATES)].format(n=NUMBER, i=i).encode()
            transport.sendto(mutate(data, rng) if i % 5 else data, target)
            if i % 50 == 0:
                await asyncio.sleep(0.005)
        transport.close()
    await asyncio.sleep(0.5)
    options = (
        "OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bK-alive\r\n"
        "From: <sip:p@127.0.0.2>;tag=p\r\nTo: <sip:127.0.0.1>\r\nCall-ID: alive\r\nCSeq: 1 OPTIONS\r\n\r\n"
    )
    (pong,) = await udp_exchange(options.encode(), target, wait_s=3)
    assert pong.startswith(b"SIP/2.0 200")
    assert gw.metrics.registry.get_sample_value("gateway_sip_handler_errors_total") == 0
    assert gw.recorder is not None and await gw.recorder.drain(10)
    assert gw.slots.total() == 0 and not gw.sip.core.calls


async def test_failed_sip_attempts_from_one_source_are_silenced(gw: Gateway) -> None:
    """A stranger whose MESSAGEs keep failing (403) is silenced; a trunk is not."""
    assert gw.sip is not None
    target = ("127.0.0.1", gw.sip.port)
    message = (
        "MESSAGE sip:{n}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.8:5070;branch=z9hG4bK-s{i}\r\n"
        "From: <sip:+15557770000@127.0.0.8>;tag=s\r\nTo: <sip:{n}@127.0.0.1>\r\nCall-ID: s-{i}\r\n"
        "CSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
    )
    answers = []
    for i in range(32):
        answers += await udp_exchange(
            message.format(n=NUMBER, i=i).encode(), target, source_ip="127.0.0.8", wait_s=0.3
        )
    assert len(answers) == 30 and all(
        a.startswith(b"SIP/2.0 403") for a in answers
    )  # the burst, then silence
    options = message.replace("MESSAGE", "OPTIONS").format(n=NUMBER, i=99).encode()
    assert await udp_exchange(options, target, source_ip="127.0.0.8", wait_s=0.3) == []
    (trunk,) = await udp_exchange(options.replace(b"127.0.0.8", CARRIER_IP.encode()), target)
    assert trunk.startswith(b"SIP/2.0 200")


async def test_bad_webhook_signatures_are_throttled_per_source(gw: Gateway) -> None:
    url = f"http://127.0.0.1:{gw.http_port}/v1/webhooks/telnyx/messages"
    statuses = []
    async with aiohttp.ClientSession() as s:
        for _ in range(32):
            async with s.post(url, data=b"{}", headers={"Content-Type": "application/json"}) as r:
                statuses.append(r.status)
                retry_after = r.headers.get("Retry-After")
    assert statuses == [403] * 30 + [429] * 2 and retry_after is not None
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.4", 0))
    async with aiohttp.ClientSession(connector=connector) as s:
        for _ in range(31):
            async with s.get(
                f"http://127.0.0.1:{gw.http_port}/v1/me", headers={"Authorization": "Bearer gk_bad"}
            ) as r:
                last, retry_after = r.status, r.headers.get("Retry-After")
    assert last == 429 and retry_after is not None and int(retry_after) >= 1
    other = aiohttp.TCPConnector(local_addr=("127.0.0.5", 0))
    async with (
        aiohttp.ClientSession(connector=other) as s,
        s.get(f"http://127.0.0.1:{gw.http_port}/v1/me") as r,
    ):
        assert r.status == 401  # another source is not affected


RAW = [
    b"POST /v1/webhooks/twilio/messages HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
    b"Content-Length: 3\r\n\r\n<a>",
    b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer gk_x\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: 4\r\n\r\n\xff\xfe\xfd\xfc",
    b"GET /v1/leads/..%2F..%2Fetc%2Fpasswd HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v1/numbers/1%0d%0aX-Injected:%201 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\rb\r\n\r\n",
    b"GARBAGE\r\n\r\n",
    b"POST /v1/webhooks/telnyx/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 10485760\r\n\r\n" + b"{" * 65536,
]


async def test_raw_malformed_http_never_gets_a_5xx(gw: Gateway) -> None:
    for raw in RAW:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.http_port)
        writer.write(raw)
        await writer.drain()
        head = await asyncio.wait_for(reader.read(200), 10)
        writer.close()
        status = re.match(rb"HTTP/1\.[01] (\d{3})", head)
        assert status is not None, (raw[:60], head)
        code = int(status.group(1))
        assert code < 500, (raw[:60], head)
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{gw.http_port}/healthz") as r:
        assert r.status == 200


def test_failure_limiter_refills_and_is_bounded() -> None:
    limiter = FailureLimiter(per_second=2.0, burst=3, max_sources=2)
    for _ in range(3):
        assert not limiter.blocked("a", 0.0)
        limiter.fail("a", 0.0)
    assert limiter.blocked("a", 0.0) and limiter.retry_after("a", 0.0) == 1
    assert not limiter.blocked("a", 0.5)  # one token back after half a second at 2/s
    limiter.fail("b", 1.0)
    limiter.fail("c", 1.0)
    assert not limiter.blocked("a", 1.0)  # evicted: the least recently seen source goes first
