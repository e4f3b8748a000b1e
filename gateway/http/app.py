"""The aiohttp application: routes and middleware, no I/O of its own."""

from __future__ import annotations

import time

from aiohttp import web

from gateway.http import (
    account_api,
    admin_api,
    console,
    crm_api,
    event_webhooks_api,
    events_api,
    leads_api,
    live_calls_api,
    messages_api,
    numbers_api,
    ops,
    stats_api,
    webhooks,
)
from gateway.http.auth import auth_middleware
from gateway.http.deps import DEPS, Deps
from gateway.http.limits import limit_failures, refuse_oversized
from gateway.http.problems import Handler, problem_middleware
from gateway.http.routes import API

# Imported for their @API.op registrations.
_REGISTERED = (
    account_api,
    admin_api,
    crm_api,
    event_webhooks_api,
    events_api,
    leads_api,
    live_calls_api,
    messages_api,
    numbers_api,
    stats_api,
    ops,
    webhooks,
)


# Any token is a method to the parser: a label per stranger's invention would grow the registry for ever.
_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))


def _method_label(method: str) -> str:
    return method if method in _METHODS else "other"


def build_app(deps: Deps) -> web.Application:
    """The aiohttp application over ``deps`` (built by the composition root)."""
    metrics = deps.metrics

    @web.middleware
    async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Label by route template, never by raw path: ids must not explode cardinality.
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        started = time.perf_counter()
        try:
            response = await handler(request)
        finally:
            metrics.http_timed(_method_label(request.method), route).observe(time.perf_counter() - started)
        metrics.http_answered(route, str(response.status)).inc()
        return response

    app = web.Application(
        middlewares=[count_requests, refuse_oversized, limit_failures, problem_middleware, auth_middleware],
        client_max_size=deps.max_body_bytes,
    )
    app[DEPS] = deps
    API.mount(app)
    console.mount(app)
    return app
