"""Ops endpoints over real HTTP on a real gateway (issue 2)."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import asyncpg

from gateway.server import Gateway
from gateway.store.embedded import EmbeddedPostgres
from tests.conftest import settings_for


async def get(gw: Gateway, path: str) -> tuple[int, str, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{gw.http_port}{path}") as response,
    ):
        return response.status, response.headers["Content-Type"], await response.text()


async def test_healthz_readyz_metrics(gateway: Gateway) -> None:
    status, _, body = await get(gateway, "/healthz")
    assert status == 200 and '"ok"' in body
    status, _, body = await get(gateway, "/readyz")
    assert status == 200 and '"ready"' in body
    status, content_type, body = await get(gateway, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    for name in (
        "gateway_build_info",
        "gateway_index_entries",
        "gateway_index_age_seconds",
        "gateway_index_reload_duration_seconds_bucket",
        "gateway_index_notifications_applied",
        "gateway_db_pool_connections",
        "gateway_db_pool_in_use",
        "process_resident_memory_bytes",
    ):
        assert name in body, name


async def test_unknown_path_is_a_problem_document(gateway: Gateway) -> None:
    status, content_type, body = await get(gateway, "/no/such/thing")
    assert status == 404
    assert content_type.startswith("application/problem+json")
    assert '"status": 404' in body
    _, _, metrics = await get(gateway, "/metrics")
    assert 'gateway_http_requests_total{route="unmatched",status="404"} 1.0' in metrics
    # Latency by route template (issue 16, item 4): one observation for the 404.
    assert 'gateway_http_request_duration_seconds_count{method="GET",route="unmatched"} 1.0' in metrics


async def test_metrics_count_index_notifications(gateway: Gateway, db_dsn: str) -> None:
    conn = await asyncpg.connect(db_dsn)
    try:
        await conn.execute("INSERT INTO accounts (name) VALUES ('m')")
        account = await conn.fetchval("SELECT id FROM accounts WHERE name = 'm'")
        await conn.execute(
            "INSERT INTO users (account_id, email, role) VALUES ($1, 'a@b.test', 'owner')", account
        )
    finally:
        await conn.close()
    assert gateway.keeper is not None
    await gateway.keeper.wait_until(lambda idx: idx.size().users == 1)
    _, _, body = await get(gateway, "/metrics")
    assert 'gateway_index_notifications_applied_total{table="users"} 1.0' in body
    assert 'gateway_index_entries{kind="users"} 1.0' in body


async def test_readyz_is_degraded_while_the_database_is_down(private_cluster: EmbeddedPostgres) -> None:
    """Issue 7: without Postgres the gateway still routes from its snapshot, so
    it stays in rotation, saying why it is degraded."""
    gw = Gateway(settings_for(private_cluster.dsn))
    await gw.start()
    try:
        assert (await get(gw, "/readyz"))[0] == 200
        await asyncio.to_thread(private_cluster.stop_server)
        status, content_type, body = await get(gw, "/readyz")
        assert status == 200 and content_type.startswith("application/json")
        assert '"status": "degraded"' in body and "database unreachable" in body
        assert (await get(gw, "/healthz"))[0] == 200  # alive all the same
        await asyncio.to_thread(private_cluster.start_server)
        for _ in range(100):
            if '"status": "ready"' in (await get(gw, "/readyz"))[2]:
                break
            await asyncio.sleep(0.1)
        assert '"status": "ready"' in (await get(gw, "/readyz"))[2]
    finally:
        await gw.stop()


async def test_openapi_document_is_valid_and_matches_the_routes(gateway: Gateway) -> None:
    from openapi_spec_validator import validate

    status, content_type, body = await get(gateway, "/openapi.json")
    assert status == 200 and content_type.startswith("application/json")
    document = json.loads(body)
    validate(document)  # raises on an invalid OpenAPI 3.1 document
    assert document["openapi"].startswith("3.1")
    documented = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops}
    from gateway.http.routes import API

    mounted = {(op.method, op.path) for op in API.operations}
    assert documented == mounted
    action = document["paths"]["/v1/notifications/{notification_id}/actions"]["post"]
    assert action["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "NotificationAction"
    )
    assert "422" in action["responses"] and "401" in action["responses"]
    schema = document["components"]["schemas"]["NotificationAction"]
    assert schema["properties"]["action"]["enum"] == ["new_lead", "associate"]
    status, content_type, page = await get(gateway, "/docs")
    assert status == 200 and content_type.startswith("text/html") and "/v1/users/{user_id}/usage" in page
