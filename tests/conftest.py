"""Shared fixtures: a real PostgreSQL cluster for the session, a migrated
template database, and a fresh database cloned from it for each test."""

from __future__ import annotations

import asyncio
import itertools
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import uvloop

from gateway import config
from gateway.config import (
    DatabaseSettings,
    HttpSettings,
    IndexSettings,
    OutboxSettings,
    Settings,
    SipSettings,
    WebhooksSettings,
)
from gateway.server import Gateway
from gateway.store.embedded import EmbeddedPostgres
from gateway.store.migrations import migrate
from tests.sipp_tools import CARRIER_IP, TRUNK_IP, free_port

# Durability off: tests never survive a crash of their own cluster.
FAST = ("-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off")
TEMPLATE = "gateway_template"
_db_numbers = itertools.count()


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, object]:
    return {"uvloop": uvloop.new_event_loop}  # production runs on uvloop; so do the tests


def make_cluster(root: Path) -> EmbeddedPostgres:
    """A new cluster under ``root``, started; the caller stops it."""
    root.chmod(0o755)  # the unprivileged postgres user must reach its data dir
    cluster = EmbeddedPostgres(root / "pg", extra_options=FAST)
    cluster.start()
    return cluster


def dsn_for(cluster: EmbeddedPostgres, database: str) -> str:
    return cluster.dsn.replace("/gateway?", f"/{database}?")


@pytest.fixture(scope="session")
def cluster() -> Iterator[EmbeddedPostgres]:
    with tempfile.TemporaryDirectory(prefix="gw-test-") as tmp:
        cluster = make_cluster(Path(tmp))
        try:
            asyncio.run(_make_template(cluster))
            yield cluster
        finally:
            cluster.stop()


async def _make_template(cluster: EmbeddedPostgres) -> None:
    admin = await asyncpg.connect(cluster.dsn)
    try:
        await admin.execute(f"CREATE DATABASE {TEMPLATE}")
    finally:
        await admin.close()
    conn = await asyncpg.connect(dsn_for(cluster, TEMPLATE))
    try:
        await migrate(conn)
    finally:
        await conn.close()


async def create_database(cluster: EmbeddedPostgres, template: str | None = TEMPLATE) -> str:
    name = f"t{os.getpid()}_{next(_db_numbers)}"
    admin = await asyncpg.connect(cluster.dsn)
    try:
        clause = f" TEMPLATE {template}" if template else ""
        await admin.execute(f"CREATE DATABASE {name}{clause}")
    finally:
        await admin.close()
    return dsn_for(cluster, name)


@pytest.fixture
async def db_dsn(cluster: EmbeddedPostgres) -> str:
    """A fresh, migrated database of its own."""
    return await create_database(cluster)


@pytest.fixture
async def empty_dsn(cluster: EmbeddedPostgres) -> str:
    """A fresh database with no schema at all."""
    return await create_database(cluster, template=None)


@pytest.fixture
async def conn(db_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(db_dsn)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
def private_cluster() -> Iterator[EmbeddedPostgres]:
    """A cluster of this test's own, for stopping and restarting it."""
    with tempfile.TemporaryDirectory(prefix="gw-fault-") as tmp:
        cluster = make_cluster(Path(tmp))
        try:
            yield cluster
        finally:
            cluster.stop()


# Every gateway a test starts gets an outbox of its own, under one directory
# that goes when the test run ends (a mkdtemp each left ~200 behind per run).
_OUTBOXES = tempfile.TemporaryDirectory(prefix="gw-outboxes-")


def settings_for(dsn: str) -> Settings:
    """A gateway on ``dsn`` with HTTP on a free loopback port."""
    return config.replace(
        Settings(),
        http=HttpSettings(host="127.0.0.1", port=0),
        sip=SipSettings(host="127.0.0.1", port=0),
        outbox=OutboxSettings(dir=tempfile.mkdtemp(prefix="outbox-", dir=_OUTBOXES.name)),
        database=DatabaseSettings(url=dsn, connect_timeout_s=2.0),
        index=IndexSettings(reconnect_max_backoff_s=0.5),
    )


@pytest.fixture
async def gateway(db_dsn: str) -> AsyncIterator[Gateway]:
    """A running gateway (pool, index, HTTP) on a fresh database."""
    gw = Gateway(settings_for(db_dsn))
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


# -- SIP: carrier SIPp on 127.0.0.2 (trusted trunk), phones on 127.0.0.1, trunk on 127.0.0.3 --


def sip_settings(dsn: str, trunk_port: int) -> Settings:
    s = settings_for(dsn)
    return config.replace(
        s,
        sip=SipSettings(
            host="127.0.0.1",
            port=0,
            trunk_cidrs=f"{CARRIER_IP}/32",
            outbound_trunk=f"{TRUNK_IP}:{trunk_port}",
        ),
    )


@pytest.fixture
def trunk_port() -> int:
    """A free port on the outbound trunk's address (a SIPp UAS may take it)."""
    return free_port(TRUNK_IP)


@pytest.fixture
async def sip_gw(db_dsn: str, trunk_port: int) -> AsyncIterator[Gateway]:
    """A gateway that trusts the carrier SIPp's address as a trunk."""
    gateway = Gateway(sip_settings(db_dsn, trunk_port))
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


async def _gateway_with_hooks(settings: Settings) -> AsyncIterator[Gateway]:
    """A gateway that may deliver event webhooks to loopback (a test's receiver), quickly."""
    hooks = WebhooksSettings(allow_private_targets=True, poll_interval_s=0.05, timeout_s=2.0)
    gw = Gateway(config.replace(settings, webhooks=hooks))
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


@pytest.fixture
async def hooks_gw(db_dsn: str) -> AsyncIterator[Gateway]:
    async for gw in _gateway_with_hooks(settings_for(db_dsn)):
        yield gw


@pytest.fixture
async def hooks_sip_gw(db_dsn: str, trunk_port: int) -> AsyncIterator[Gateway]:
    """SIP from the carrier SIPp too."""
    async for gw in _gateway_with_hooks(sip_settings(db_dsn, trunk_port)):
        yield gw
