"""The aiohttp application: routes and middleware, no I/O of its own."""

from __future__ import annotations

from aiohttp import web

from gateway.http import ops
from gateway.http.problems import problem_middleware
from gateway.metrics import Metrics


def build_app(metrics: Metrics, readiness: ops.Readiness, max_body_bytes: int) -> web.Application:
    app = web.Application(middlewares=[problem_middleware], client_max_size=max_body_bytes)
    app[ops.METRICS] = metrics
    app[ops.READINESS] = readiness
    ops.add_routes(app)
    return app
