"""Operational endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.http.problems import problem
from gateway.metrics import Metrics

Readiness = Callable[[], Awaitable[tuple[bool, dict[str, object]]]]

METRICS = web.AppKey("metrics", Metrics)
READINESS: web.AppKey[Readiness] = web.AppKey("readiness")


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and its loop answers. Costs nothing."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 when the database answers and the index is loaded and following
    changes; else 503 with the reason. Costs one ``SELECT 1``."""
    ok, detail = await request.app[READINESS]()
    if ok:
        return web.json_response({"status": "ready", **detail})
    return problem(503, "Service Unavailable", str(detail.get("reason", "not ready")), **detail)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of this gateway's registry."""
    body = generate_latest(request.app[METRICS].registry)
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
