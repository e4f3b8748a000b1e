"""The aiohttp application: routes and middleware, no I/O of its own."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from gateway.config import trunk_networks
from gateway.domain.index import Index
from gateway.domain.rate_limit import FailureLimiter
from gateway.http import (
    account_api,
    admin_api,
    crm_api,
    events_api,
    leads_api,
    messages_api,
    numbers_api,
    ops,
    webhooks,
)
from gateway.http.auth import POOL, auth_middleware
from gateway.http.limits import LIMITER, MAX_BODY, TRUSTED_PROXIES, limit_failures, refuse_oversized
from gateway.http.load_shed import LoopLag
from gateway.http.problems import Handler, problem_middleware
from gateway.http.routes import API
from gateway.metrics import Metrics
from gateway.providers import Providers
from gateway.store import Pool, purchases
from gateway.store.events import EventHub
from gateway.store.outbox import Outbox
from gateway.store.status_batch import StatusBatcher
from gateway.store.text_batch import TextBatcher

# Imported for their @API.op registrations.
_REGISTERED = (
    account_api,
    admin_api,
    crm_api,
    events_api,
    leads_api,
    messages_api,
    numbers_api,
    ops,
    webhooks,
)


def build_app(
    metrics: Metrics,
    readiness: ops.Readiness,
    pool: Pool,
    *,
    max_body_bytes: int,
    max_import_bytes: int,
    sip_realm: str,
    index: Callable[[], Index],
    public_base_url: str,
    twilio_auth_token: str,
    telnyx_public_key: str,
    providers: Providers,
    event_hub: EventHub,
    outbox: Outbox,
    texts: TextBatcher,
    statuses: StatusBatcher,
    loop_lag: LoopLag,
    limiter: FailureLimiter,
    trusted_proxies: str = "",
) -> web.Application:
    @web.middleware
    async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Label by route template, never by raw path: ids must not explode cardinality.
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        response = await handler(request)
        metrics.http_requests.labels(route=route, status=str(response.status)).inc()
        return response

    app = web.Application(
        middlewares=[count_requests, refuse_oversized, limit_failures, problem_middleware, auth_middleware],
        client_max_size=max_body_bytes,
    )
    app[ops.METRICS] = metrics
    app[ops.READINESS] = readiness
    app[POOL] = pool
    app[admin_api.SIP_REALM] = sip_realm
    app[leads_api.MAX_IMPORT_BYTES] = max_import_bytes
    app[webhooks.INDEX] = index
    app[webhooks.PUBLIC_BASE_URL] = public_base_url
    app[webhooks.TWILIO_TOKEN] = twilio_auth_token
    app[webhooks.TELNYX_KEY] = telnyx_public_key
    app[messages_api.PROVIDERS] = providers
    app[events_api.HUB] = event_hub
    app[events_api.OPEN_STREAMS] = {}
    app[webhooks.OUTBOX] = outbox
    app[webhooks.TEXTS] = texts
    app[webhooks.STATUSES] = statuses
    app[webhooks.LOOP_LAG] = loop_lag
    app[LIMITER] = limiter
    app[TRUSTED_PROXIES] = tuple(trunk_networks(trusted_proxies))
    app[MAX_BODY] = max_body_bytes
    app[numbers_api.INVENTORY] = purchases.LocalInventory()
    API.mount(app)
    return app
