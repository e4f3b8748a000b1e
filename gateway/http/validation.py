"""Turning request input into typed values, or a 4xx problem naming the field."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from gateway.http.problems import PROBLEM_JSON

MAX_ID = 2**63 - 1


class InvalidInput(web.HTTPException):
    """A 400/415/422 whose body is a problem document listing each bad field."""

    def __init__(self, status: int, title: str, errors: list[dict[str, str]]) -> None:
        self.status_code = status
        body = {"type": "about:blank", "title": title, "status": status, "errors": errors}
        if errors:
            body["detail"] = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        super().__init__(text=json.dumps(body), content_type=PROBLEM_JSON)


def field_error(field: str, message: str, status: int = 422) -> InvalidInput:
    return InvalidInput(status, "Invalid request", [{"field": field, "message": message}])


def path_id(request: web.Request, name: str) -> int:
    """A positive 64-bit id from the path, else 400 naming it."""
    raw = request.match_info[name]
    # The length first: int() of thousands of digits raises (a 500 before).
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or not 0 < int(raw) <= MAX_ID:
        raise field_error(name, "must be a positive integer", status=400)
    return int(raw)


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object: 415 for another content type, 400 for
    malformed JSON or a non-object (the size limit is aiohttp's: 413)."""
    if request.content_type != "application/json":
        raise field_error("Content-Type", "must be application/json", status=415)
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        # ValueError: malformed JSON, bad UTF-8, or an integer past Python's
        # digit limit; RecursionError: nesting deeper than the parser goes.
        raise field_error("body", f"is not usable JSON ({exc.__class__.__name__})", status=400) from None
    if not isinstance(body, dict):
        raise field_error("body", "must be a JSON object", status=400)
    return body


def optional_id(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_ID:
        raise field_error(name, "must be a positive integer")
    return value


def optional_text(body: dict[str, Any], name: str, max_length: int) -> str:
    value = body.get(name, "")
    if not isinstance(value, str) or len(value) > max_length:
        raise field_error(name, f"must be a string of at most {max_length} characters")
    return value
