"""The container image and the compose deployment (issue 14, item 5), checked
without a container runtime: the Dockerfile's promises are read from it, and
the image's start-up is replayed as it runs there, as uid 10001 in a
directory root owns, with the HEALTHCHECK command itself."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

ROOT = Path(__file__).parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()
UID = 10001


def instruction(name: str) -> str:
    """The (continued) text of the Dockerfile's last ``name`` instruction."""
    joined = DOCKERFILE.replace("\\\n", " ")
    found = re.findall(rf"^{name} (.+)$", joined, flags=re.MULTILINE)
    assert found, f"no {name} in the Dockerfile"
    return str(found[-1])


def test_the_image_is_pinned_runs_unprivileged_and_keeps_the_outbox_on_a_volume() -> None:
    base = instruction("FROM")
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), base
    assert instruction("USER") == "gateway"
    assert f"--uid {UID}" in instruction("RUN")
    assert "chown -R gateway:gateway /app/var" in instruction("RUN")
    assert json.loads(instruction("VOLUME")) == ["/app/var/outbox"]
    outbox = tomllib.loads((ROOT / "config" / "gateway.toml").read_text())["outbox"]["dir"]
    assert "/app/" + outbox == "/app/var/outbox"  # the volume is where the gateway writes


@pytest.mark.skipif(os.geteuid() != 0, reason="replaying the image's uid needs root (CI runs as root)")
def test_the_image_start_up_as_uid_10001_and_its_healthcheck_on_another_port(db_dsn: str) -> None:
    """What `docker run` does: WORKDIR /app belongs to root, only var/ to the
    gateway user; the gateway starts, and the HEALTHCHECK follows
    GATEWAY_HTTP_PORT (here not 8080)."""
    app = Path(tempfile.mkdtemp(prefix="gw-image-"))
    with contextlib.ExitStack() as stack:
        dsn = stack.enter_context(tcp_to(db_dsn))
        stack.callback(shutil.rmtree, app, ignore_errors=True)
        _replay_the_image(app, dsn)


def _replay_the_image(app: Path, db_dsn: str) -> None:
    app.chmod(0o755)
    shutil.copytree(ROOT / "config", app / "config")
    (app / "var" / "outbox").mkdir(parents=True)
    for path in (app / "var", app / "var" / "outbox"):
        os.chown(path, UID, UID)
    port = _free_tcp_port()
    env = {
        **os.environ,
        "GATEWAY_DATABASE_URL": db_dsn,
        "GATEWAY_HTTP_PORT": str(port),
        "GATEWAY_HTTP_HOST": "127.0.0.1",
        "GATEWAY_SIP_HOST": "127.0.0.1",
        "GATEWAY_SIP_PORT": "0",
        "HOME": str(app),
    }
    as_gateway = ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups"]
    process = subprocess.Popen(
        [*as_gateway, sys.executable, "-m", "gateway", "serve"],
        cwd=app, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert b"gateway ready" in line, (line, process.stderr.read() if process.stderr else b"")
        check = json.loads(instruction("HEALTHCHECK").split("CMD", 1)[1])
        assert check[0] == "python"
        healthy = subprocess.run([*as_gateway, sys.executable, *check[1:]], env=env, timeout=10, check=False)
        assert healthy.returncode == 0
        assert (app / "var" / "outbox").stat().st_uid == UID
    finally:
        process.terminate()
        process.wait(15)


def test_the_compose_file_runs_two_gateways_behind_the_dispatcher() -> None:
    import yaml

    compose = yaml.safe_load((ROOT / "deploy" / "compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "gateway-1", "gateway-2", "dispatcher"} <= set(services)
    listed = (ROOT / "deploy" / "kamailio" / "dispatcher.list").read_text()
    secrets = set()
    for name in ("gateway-1", "gateway-2"):
        gw = services[name]
        env = gw["environment"]
        assert env["GATEWAY_CLUSTER_SLOTS"] == "postgres"
        secrets.add(env["GATEWAY_SIP_NONCE_SECRET"])
        address = gw["networks"]["sip"]["ipv4_address"]
        assert f"sip:{address}:5060" in listed
        assert env["GATEWAY_SIP_ADVERTISED_HOST"] == address
        dispatcher_ip = services["dispatcher"]["networks"]["sip"]["ipv4_address"]
        assert dispatcher_ip in env["GATEWAY_SIP_TRUNK_CIDRS"]
        assert any(str(v).endswith(":/app/var/outbox") for v in gw["volumes"])
    assert len(secrets) == 1  # one nonce secret for the cluster
    outboxes = {v for name in ("gateway-1", "gateway-2") for v in services[name]["volumes"]}
    assert len(outboxes) == 2  # each gateway its own outbox


@contextlib.contextmanager
def tcp_to(dsn: str) -> Iterator[str]:
    """The test cluster listens on a Unix socket only root and postgres may
    reach; a container reaches its database over TCP. A forwarder on a
    loopback port stands for that network, in a thread of its own."""
    query = parse_qs(urlsplit(dsn).query)
    socket_path = f"{query['host'][0]}/.s.PGSQL.5432"
    loop = asyncio.new_event_loop()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_unix_connection(socket_path)
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    server = loop.run_until_complete(asyncio.start_server(forward, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        parts = urlsplit(dsn)
        yield f"postgresql://{parts.username}@127.0.0.1:{port}{parts.path}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def _free_tcp_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
