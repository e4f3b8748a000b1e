"""Per-source throttling of failed unauthenticated HTTP requests (issue 7):
bad webhook signatures (403 under /v1/webhooks/) and bad API keys (401).
A source that keeps failing gets 429 with Retry-After before any work is
done for it (no body read, no signature computed, no key hashed)."""

from __future__ import annotations

import time

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.domain.rate_limit import FailureLimiter
from gateway.http.problems import problem

LIMITER: web.AppKey[FailureLimiter] = web.AppKey("failure_limiter")


@web.middleware
async def limit_failures(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/v1/"):
        return await handler(request)
    limiter = request.app[LIMITER]
    source = request.remote or "unknown"
    now = time.monotonic()
    if limiter.blocked(source, now):
        refused = problem(429, "Too Many Requests", "too many failed attempts from here; retry later")
        refused.headers["Retry-After"] = str(limiter.retry_after(source, now))
        return refused
    response = await handler(request)
    failed = response.status == 401 or (response.status == 403 and request.path.startswith("/v1/webhooks/"))
    if failed:
        limiter.fail(source, now)
    return response


MAX_BODY: web.AppKey[int] = web.AppKey("max_body_bytes", int)
UNBOUNDED_PATHS = frozenset(("/v1/leads:import",))  # streams its upload against its own limit


@web.middleware
async def refuse_oversized(request: web.Request, handler: Handler) -> web.StreamResponse:
    """413 on the declared Content-Length alone, before a byte of the body is
    read (aiohttp would otherwise wait for the body up to its size cap)."""
    declared = request.content_length
    limit = request.app[MAX_BODY]
    if declared is not None and declared > limit and request.path not in UNBOUNDED_PATHS:
        return problem(413, "Payload Too Large", f"request bodies are limited to {limit} bytes")
    return await handler(request)
