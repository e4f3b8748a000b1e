"""`gateway serve` as a real process on its embedded cluster (issue 2: make run)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from gateway.store.embedded import EmbeddedPostgres


def test_serve_embedded_ready_then_sigterm_stops_everything() -> None:
    with tempfile.TemporaryDirectory(prefix="gw-serve-") as tmp:
        tmp_path = Path(tmp)
        tmp_path.chmod(0o755)
        _serve_and_stop(tmp_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root gateway hands its cluster to another user")
def test_unreachable_data_dir_is_one_clear_line(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    env = {**os.environ, "GATEWAY_DATABASE_EMBEDDED_DIR": str(locked / "pg")}
    env.pop("GATEWAY_DATABASE_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "migrate"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("gateway: embedded database: user 'postgres' cannot enter")
    )
    assert "Traceback" not in result.stderr


def _serve_and_stop(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "GATEWAY_HTTP_HOST": "127.0.0.1",
        "GATEWAY_HTTP_PORT": "0",
        "GATEWAY_SIP_PORT": "0",
        "GATEWAY_OUTBOX_DIR": str(tmp_path / "outbox"),
        "GATEWAY_DATABASE_EMBEDDED_DIR": str(tmp_path / "pg"),
    }
    env.pop("GATEWAY_DATABASE_URL", None)
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--seed-demo"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = None
        assert proc.stdout is not None
        for line in proc.stdout:
            match = re.search(r"gateway ready: HTTP http://127\.0\.0\.1:(\d+)", line)
            if match:
                port = int(match[1])
                break
        assert port, proc.stderr.read() if proc.stderr else ""
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            assert response.status == 200
            assert b'"index_numbers": 2' in response.read()  # the demo account's numbers
        assert time.monotonic() - started < 30
        # A CLI command beside the live server uses its cluster and must leave it running.
        side = subprocess.run(
            [sys.executable, "-m", "gateway", "migrate"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert side.returncode == 0, side.stderr
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            assert response.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    cluster = EmbeddedPostgres(tmp_path / "pg")
    assert not cluster._running(), "embedded cluster left running"


def test_no_postgres_binaries_says_what_to_install(tmp_path: Path) -> None:
    """With no URL and no initdb/pg_ctl anywhere, one line says what to install."""
    probe = (
        "import glob, shutil, sys\n"
        "shutil.which = lambda name, *a, **k: None\n"
        "glob.glob = lambda pattern, *a, **k: []\n"
        "from gateway.cli import main\n"
        "sys.exit(main(['migrate']))\n"
    )
    env = {**os.environ, "GATEWAY_DATABASE_EMBEDDED_DIR": str(tmp_path / "pg")}
    env.pop("GATEWAY_DATABASE_URL", None)
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "no PostgreSQL server binaries" in line and "apt-get install -y postgresql" in line
