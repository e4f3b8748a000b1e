"""RFC 9457 problem documents: every error the HTTP API returns is one.

A client's mistake is a 4xx that names what was wrong; a 5xx only ever means
the gateway itself failed, and then the body says nothing internal.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway.store import BadValue

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem(status: int, title: str, detail: str | None = None, **extra: Any) -> web.Response:
    """A ``status`` response whose body is a problem document."""
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return web.json_response(body, status=status, content_type=PROBLEM_JSON)


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn aiohttp's HTTP errors and anything unexpected into problem documents."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == PROBLEM_JSON:
            raise
        response = problem(
            exc.status, exc.reason, exc.text if exc.text != f"{exc.status}: {exc.reason}" else None
        )
        for name in ("Allow", "Retry-After", "WWW-Authenticate"):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
        return response
    except BadValue as exc:
        # Class 22: Postgres refused a value the request carried. Handlers check
        # their fields first; this is the net under them, never a 500.
        log.warning("value refused by the database in %s %s: %s", request.method, request.path, exc)
        return problem(
            400,
            "Bad Request",
            f"a value in the request cannot be stored ({type(exc).__name__})",
            errors=[{"field": "body", "message": "holds a value the database refuses"}],
        )
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return problem(500, "Internal Server Error", "the gateway failed; the error is logged")
