"""`gateway serve` as a real process for the reliability tests (issue 7)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp

READY = re.compile(rb"HTTP http://[^:]+:(\d+) .* SIP udp\+tcp [^:]+:(\d+)")


class GatewayProcess:
    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = {**os.environ, "GATEWAY_HTTP_HOST": "127.0.0.1", "GATEWAY_HTTP_PORT": "0",
                    "GATEWAY_SIP_HOST": "127.0.0.1", "GATEWAY_LOG_LEVEL": "warning", **env}  # fmt: skip
        self.workdir = workdir
        self.process: asyncio.subprocess.Process | None = None
        self.http_port = 0
        self.sip_port = 0

    async def start(self, limit_s: float = 60) -> None:
        log = (self.workdir / "gateway.log").open("ab")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", cwd=self.workdir, env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=log,
        )  # fmt: skip
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), limit_s)
        found = READY.search(line)
        if found is None:
            raise AssertionError(f"gateway did not start: {line!r}\n{self.log()[-3000:]}")
        self.http_port, self.sip_port = int(found.group(1)), int(found.group(2))

    def log(self) -> str:
        return (self.workdir / "gateway.log").read_text(errors="replace")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    async def wait(self, limit_s: float = 30) -> int:
        assert self.process is not None
        return await asyncio.wait_for(self.process.wait(), limit_s)

    async def ready(self) -> dict[str, object]:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{self.http_port}/readyz") as r:
            body: dict[str, object] = await r.json(content_type=None)
            return body

    async def until(self, check: Callable[[dict[str, object]], bool], what: str, limit_s: float = 15) -> None:
        """Wait until ``check`` holds for /readyz (no fixed sleeps: a slow
        machine waits longer, a fast one not at all)."""
        deadline = asyncio.get_running_loop().time() + limit_s
        while not check(state := await self.ready()):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"not within {limit_s}s: {what} ({state})")
            await asyncio.sleep(0.05)

    async def routable(self) -> None:
        """The index holds the seeded numbers (it follows the seed by NOTIFY)."""
        await self.until(lambda s: int(str(s.get("index_numbers", 0))) > 0, "numbers in the index")

    async def settled(self, limit_s: float = 30) -> dict[str, object]:
        """Wait until the outbox is empty and no call is in progress."""
        deadline = asyncio.get_running_loop().time() + limit_s
        while True:
            state = await self.ready()
            if (
                state.get("status") == "ready"
                and state.get("outbox_backlog") == 0
                and state.get("active_calls") == 0
            ):
                return state
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"gateway never settled: {state}")
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
