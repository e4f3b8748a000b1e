"""Response shapes shared by the API modules."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.http.problems import problem


def json_row(row: Any) -> dict[str, Any]:
    """A database row as JSON-ready data: times become ISO 8601 strings."""
    return {
        key: (value.isoformat() if hasattr(value, "isoformat") else value) for key, value in dict(row).items()
    }


def not_found(what: str) -> web.Response:
    """404, the same for a missing resource and another account's."""
    return problem(404, "Not Found", f"no such {what}")


def forbidden(reason: str) -> web.Response:
    return problem(403, "Forbidden", reason)
