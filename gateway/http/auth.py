"""Bearer API-key authentication for ``/v1/`` (webhooks verify their own signatures)."""

from __future__ import annotations

from aiohttp import web

from gateway.http.deps import deps
from gateway.http.problems import Handler, problem
from gateway.store.api_keys import Principal, authenticate

PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)


def principal(request: web.Request) -> Principal:
    """The authenticated caller (set by :func:`auth_middleware`)."""
    return request[PRINCIPAL]


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/v1/") or request.path.startswith("/v1/webhooks/"):
        return await handler(request)
    if request.method == "OPTIONS":  # a CORS preflight carries no credentials by design
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key:
        return _unauthorized("send Authorization: Bearer <API key>")
    async with deps(request).pool.acquire() as conn:
        who = await authenticate(conn, key.strip())
    if who is None:
        return _unauthorized("the API key is unknown or revoked")
    request[PRINCIPAL] = who
    return await handler(request)


def _unauthorized(detail: str) -> web.Response:
    response = problem(401, "Unauthorized", detail)
    response.headers["WWW-Authenticate"] = 'Bearer realm="gateway"'
    return response
