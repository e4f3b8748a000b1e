"""An open-loop HTTP load generator: requests leave on a fixed schedule
whatever the server's speed, and each latency counts from the request's
scheduled time (no coordinated omission: a request that waited for a free
connection waited on the server's account).

Raw HTTP/1.1 keep-alive on asyncio protocols, so the client spends a few tens
of microseconds per request and can offer several times what the gateway
takes on the same 2-core machine (aiohttp's client could not).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import cast


@dataclass
class Outcome:
    """Latencies (ms) of 2xx answers, and how many of each status came back
    (0: no answer before the end of the run). ``latencies_ms`` count from the
    request's scheduled time; ``written_ms`` from when it was written to its
    connection, so they leave out the time it waited in this client for a
    free connection or for this client's own loop (on a shared machine, the
    gateway's CPU use slows the client too)."""

    latencies_ms: list[float] = field(default_factory=list)
    written_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    sent_per_s: float = 0.0


class _Connection(asyncio.Protocol):
    def __init__(self, idle: asyncio.Queue[_Connection]) -> None:
        self._idle = idle
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._answer: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self._transport = cast(asyncio.Transport, transport)

    def send(self, request: bytes) -> asyncio.Future[int]:
        assert self._transport is not None
        self._answer = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        return self._answer

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        head_end = self._buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = self._buffer[:head_end].decode("latin-1")
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if len(self._buffer) < head_end + 4 + length:
            return
        self._buffer = self._buffer[head_end + 4 + length :]
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(int(head[9:12]))
        self._idle.put_nowait(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(0)


async def run(
    port: int, requests: list[bytes], rate: float, seconds: float, connections: int = 512
) -> Outcome:
    """Send ``requests`` (complete HTTP/1.1 messages) to 127.0.0.1:``port`` at
    ``rate``/s for ``seconds``; wait up to 10 s for the last answers."""
    loop = asyncio.get_running_loop()
    idle: asyncio.Queue[_Connection] = asyncio.Queue()
    for _ in range(connections):
        _, protocol = await loop.create_connection(lambda: _Connection(idle), "127.0.0.1", port)
        idle.put_nowait(protocol)
    outcome = Outcome()
    count = min(len(requests), int(rate * seconds))
    start = time.perf_counter() + 0.05
    pending: set[asyncio.Task[None]] = set()

    async def one(request: bytes, due: float) -> None:
        connection = await idle.get()
        written = time.perf_counter()
        status = await connection.send(request)
        outcome.statuses[status] += 1
        if 200 <= status < 300:
            answered = time.perf_counter()
            outcome.latencies_ms.append((answered - due) * 1000)
            outcome.written_ms.append((answered - written) * 1000)

    for i in range(count):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0.001:
            await asyncio.sleep(delay)
        task = loop.create_task(one(requests[i], due))
        pending.add(task)
        task.add_done_callback(pending.discard)
    outcome.sent_per_s = count / max(time.perf_counter() - start, 1e-9)
    _, late = await asyncio.wait(pending, timeout=10) if pending else (set(), set())
    for task in late:
        task.cancel()
    outcome.statuses[0] += len(late)
    return outcome
