"""Schemathesis over /openapi.json against a live `gateway serve` process on
real Postgres, with every check: no generated request may get a 5xx (issues
4 and 7), and every answer must be one the document promises (issue 12:
status codes, content types, 405 with Allow, 401 without credentials).
Bounded: a fixed seed and example count. ``schemathesis.toml`` says why a
well-formed request may still be a 422."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg

from tests import factories

ROOT = Path(__file__).resolve().parent.parent
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


async def seed(dsn: str) -> None:
    """Real rows, so the fuzzer's ids sometimes hit something (id 1 of each)."""
    conn = await asyncpg.connect(dsn)
    try:
        acct = await factories.account(conn)
        await factories.number(conn, acct.id, "+15550990000")
        await factories.lead(conn, acct.id, acct.agent_id, "+15550990001")
        await conn.execute("INSERT INTO number_inventory (e164) VALUES ('+15550990002')")
    finally:
        await conn.close()


def test_no_generated_request_gets_a_server_error(db_dsn: str, tmp_path: Path) -> None:
    # CI: a fixed, deterministic budget. API_FUZZ_SECONDS=330 runs random
    # generation for that long instead (issue 12 asks for at least 5 minutes).
    long_run = os.environ.get("API_FUZZ_SECONDS")
    budget = (
        ["--max-time", long_run]
        if long_run
        else ["--generation-deterministic", "--max-examples", "25", "--seed", "7"]
    )
    asyncio.run(seed(db_dsn))
    env = {
        **os.environ,
        "GATEWAY_DATABASE_URL": db_dsn,
        "GATEWAY_HTTP_HOST": "127.0.0.1",
        "GATEWAY_HTTP_PORT": "0",
        "GATEWAY_SIP_PORT": "0",
        "GATEWAY_OUTBOX_DIR": str(tmp_path / "outbox"),
        "GATEWAY_LOG_LEVEL": "warning",
        # Configured as in production, so webhooks answer 403 to fuzzed signatures rather than 503.
        "GATEWAY_TWILIO_AUTH_TOKEN": "fuzz-token",
        "GATEWAY_TELNYX_PUBLIC_KEY": "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
        # The fuzzer fails thousands of times from one address; test_abuse.py
        # tests the throttle, here a 429 would only hide the 401 under it.
        "GATEWAY_LIMITS_FAILURE_BURST": "1000000",
    }
    created = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "account",
            "create",
            "--name",
            "Fuzz",
            "--plan",
            "enterprise",
            "--owner-email",
            "fuzz@example.test",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    key = re.search(r"gk_[A-Za-z0-9_-]+", created.stdout)
    assert key
    server = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = next(
            int(m[1]) for line in server.stdout if (m := re.search(r"HTTP http://127\.0\.0\.1:(\d+)", line))
        )
        run = subprocess.run(
            [
                str(SCHEMATHESIS),
                "--config-file",
                str(ROOT / "schemathesis.toml"),
                "run",
                f"http://127.0.0.1:{port}/openapi.json",
                "--checks",
                "all",
                "--header",
                f"Authorization: Bearer {key[0]}",
                *budget,
                "--request-timeout",
                "10",
                # Revoking the very key the run uses would turn the rest into 401s; tested directly elsewhere.
                "--exclude-operation-id",
                "revoke_api_key",
                # A never-ending event stream, not a request/response; tests/test_events.py covers it.
                "--exclude-operation-id",
                "stream_events",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600 + float(long_run or 0),
        )
        assert run.returncode == 0, run.stdout[-4000:]
        assert "passed" in run.stdout
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    errors = server.stderr.read() if server.stderr else ""
    assert "unhandled error" not in errors, errors[-4000:]
