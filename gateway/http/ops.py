"""Operational endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.http.deps import deps
from gateway.http.openapi import json_text
from gateway.http.problems import problem
from gateway.http.routes import API


@API.op("GET", "/healthz", "The process is alive", public=True)
async def healthz(request: web.Request) -> web.Response:
    """The process is alive and its loop answers. Costs nothing."""
    return web.json_response({"status": "ok"})


@API.op("GET", "/readyz", "Database reachable and routing index loaded", public=True, errors=(503,))
async def readyz(request: web.Request) -> web.Response:
    """200 ``ready`` when the database answers and the index is loaded and
    following changes; 200 ``degraded`` with the reason while the database is
    away but calls still route from the index snapshot and writes wait in the
    outbox (so a load balancer keeps sending traffic); else 503 with the reason.
    Costs one ``SELECT 1``."""
    ok, detail = await deps(request).readiness()
    if ok:
        return web.json_response({"status": detail.pop("status", "ready"), **detail})
    return problem(503, "Service Unavailable", str(detail.get("reason", "not ready")), **detail)


@API.op("GET", "/metrics", "Prometheus exposition", public=True, produces="text/plain")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of this gateway's registry."""
    body = generate_latest(deps(request).metrics.registry)
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


_DOCUMENT: dict[str, str] = {}


@API.op("GET", "/openapi.json", "This API as OpenAPI 3.1", public=True)
async def openapi_json(request: web.Request) -> web.Response:
    """Generated once from the operations' own models, then served from memory."""
    if "json" not in _DOCUMENT:
        _DOCUMENT["json"] = json_text(API.document())
    return web.Response(text=_DOCUMENT["json"], content_type="application/json")


@API.op("GET", "/docs", "Human-readable API documentation", public=True, produces="text/html")
async def docs(request: web.Request) -> web.Response:
    return web.Response(text=API.docs_html(), content_type="text/html")
