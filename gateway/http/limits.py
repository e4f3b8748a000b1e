"""Throttling of failed attempts (issues 7 and 12), and the early 413.

Failures are charged, never good traffic: a request that authenticates (a
valid API key, a correctly signed webhook) always passes, whatever its
address did before. Failures (401 under /v1/, 403 under /v1/webhooks/) are
counted per source address and per API-key prefix. Once a source or a
prefix has used up its failures, a request that fails again gets 429 with
Retry-After instead of its 401/403, and one carrying no credential at all
gets 429 before any work is done for it.

The source is the peer's address, or, when the peer is one of
``http.trusted_proxies``, the client it names in ``X-Forwarded-For`` (else
``Forwarded``): the right-most address that is not itself a trusted proxy.
Those headers are ignored from anyone else. CORS preflights (OPTIONS) are
never charged.
"""

from __future__ import annotations

import ipaddress
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.domain.rate_limit import FailureLimiter
from gateway.http.deps import Networks, deps
from gateway.http.problems import problem


@web.middleware
async def limit_failures(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/v1/") or request.method == "OPTIONS":
        return await handler(request)
    limiter = deps(request).limiter
    source = client_source(
        request.remote or "unknown",
        request.headers.get("X-Forwarded-For"),
        request.headers.get("Forwarded"),
        deps(request).trusted_proxies,
    )
    credential = _key_prefix(request.headers.get("Authorization", ""))
    now = time.monotonic()
    charged = [source] if credential is None else [source, credential]
    blocked = [name for name in charged if limiter.blocked(name, now)]
    if blocked and not _carries_credentials(request):
        return _too_many(limiter, blocked, now)  # it can only fail: spend nothing on it
    response = await handler(request)
    failed = response.status == 401 or (response.status == 403 and request.path.startswith("/v1/webhooks/"))
    if not failed:
        return response
    for name in charged:
        limiter.fail(name, now)
    return _too_many(limiter, blocked, now) if blocked else response


def client_source(remote: str, forwarded_for: str | None, forwarded: str | None, trusted: Networks) -> str:
    """The address failures are charged to (see the module doc)."""
    if not trusted or not _within(remote, trusted):
        return remote
    chain = _forwarded_for(forwarded_for) if forwarded_for else _forwarded(forwarded or "")
    for hop in reversed(chain):
        if not _within(hop, trusted):
            return hop
    return chain[0] if chain else remote


def _forwarded_for(value: str) -> list[str]:
    hops = []
    for part in value.split(","):
        hop = part.strip()
        if _is_address(hop):
            hops.append(hop)
        else:
            return []  # a malformed chain is not believed at all
    return hops


def _forwarded(value: str) -> list[str]:
    """RFC 7239 ``for=`` values, in order; ports and IPv6 brackets dropped."""
    hops = []
    for element in value.split(","):
        for pair in element.split(";"):
            name, _, raw = pair.strip().partition("=")
            if name.strip().lower() != "for":
                continue
            hop = raw.strip().strip('"')
            if hop.startswith("["):
                hop = hop[1:].split("]", 1)[0]
            elif hop.count(":") == 1:
                hop = hop.split(":", 1)[0]
            if not _is_address(hop):
                return []
            hops.append(hop)
    return hops


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _within(address: str, networks: Networks) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def _key_prefix(authorization: str) -> str | None:
    """``key:<prefix>`` for a ``Bearer gk_<prefix>_...`` header, else None."""
    scheme, _, key = authorization.partition(" ")
    parts = key.strip().split("_", 2)
    if scheme.lower() == "bearer" and len(parts) == 3 and parts[0] == "gk" and parts[1].isalnum():
        return "key:" + parts[1][:12]
    return None


def _carries_credentials(request: web.Request) -> bool:
    headers = request.headers
    return bool(
        headers.get("Authorization")
        or headers.get("X-Twilio-Signature")
        or headers.get("telnyx-signature-ed25519")
    )


def _too_many(limiter: FailureLimiter, blocked: list[str], now: float) -> web.Response:
    refused = problem(429, "Too Many Requests", "too many failed attempts; retry later")
    refused.headers["Retry-After"] = str(max(limiter.retry_after(name, now) for name in blocked))
    return refused


UNBOUNDED_PATHS = frozenset(("/v1/leads:import",))  # streams its upload against its own limit


@web.middleware
async def refuse_oversized(request: web.Request, handler: Handler) -> web.StreamResponse:
    """413 on the declared Content-Length alone, before a byte of the body is
    read (aiohttp would otherwise wait for the body up to its size cap)."""
    declared = request.content_length
    limit = deps(request).max_body_bytes
    if declared is not None and declared > limit and request.path not in UNBOUNDED_PATHS:
        return problem(413, "Payload Too Large", f"request bodies are limited to {limit} bytes")
    return await handler(request)
