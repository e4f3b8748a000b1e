"""Declared operations: one registry mounts the handlers, validates their input
with pydantic models, and generates the OpenAPI 3.1 document from those same
models, so the documentation cannot drift from the code.

pydantic (v2) is used because its JSON Schema output is draft 2020-12, which
is what OpenAPI 3.1 embeds, and its errors carry each field's location.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from gateway import __version__
from gateway.http.validation import InvalidInput, json_object

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)
_PARAM = re.compile(r"{([a-z_]+)}")


@dataclass
class Operation:
    method: str
    path: str
    summary: str
    handler: Handler
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    ok: int = 200
    public: bool = False
    errors: tuple[int, ...] = ()
    produces: str = "application/json"
    consumes: tuple[str, ...] = ()  # a body that is not a model's JSON: these media types


@dataclass
class Api:
    """The gateway's HTTP API, operation by operation."""

    operations: list[Operation] = field(default_factory=list)

    def op(
        self,
        method: str,
        path: str,
        summary: str,
        *,
        body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        ok: int = 200,
        public: bool = False,
        errors: tuple[int, ...] = (),
        produces: str = "application/json",
        consumes: tuple[str, ...] = (),
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.operations.append(
                Operation(method, path, summary, handler, body, query, ok, public, errors, produces, consumes)
            )
            return handler

        return register

    def mount(self, app: web.Application) -> None:
        literal = {op.path for op in self.operations}
        for operation in self.operations:
            app.router.add_route(operation.method, _route(operation.path, literal), operation.handler)

    def document(self) -> dict[str, Any]:
        """The OpenAPI 3.1 document. Costs a schema build per model (cache it)."""
        schemas: dict[str, Any] = {"Problem": _PROBLEM}
        paths: dict[str, Any] = {}
        for op in self.operations:
            entry: dict[str, Any] = {
                "summary": op.summary,
                "operationId": op.handler.__name__,
                "responses": {str(op.ok): {"description": "success", "content": {op.produces: {}}}},
            }
            if op.ok == 204:  # No Content: documenting a media type would promise a body
                entry["responses"]["204"] = {"description": "done; no body"}
            params = [
                {
                    "name": name,
                    "in": "path",
                    "required": True,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
                }
                for name in _PARAM.findall(op.path)
            ]
            if op.query is not None:
                for name, prop in _schema(op.query, schemas).get("properties", {}).items():
                    required = name in _schema(op.query, schemas).get("required", [])
                    params.append({"name": name, "in": "query", "required": required, "schema": prop})
            if params:
                entry["parameters"] = params
            if op.body is not None:
                _schema(op.body, schemas)
                entry["requestBody"] = {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": f"#/components/schemas/{op.body.__name__}"}}
                    },
                }
            statuses = set(op.errors) | ({400, 422} if op.body or op.query else set())
            statuses |= {400, 404} if _PARAM.search(op.path) else set()  # a malformed or unknown id
            statuses |= {415} if op.body else set()
            statuses |= set() if op.public else {401}
            statuses |= {429} if op.path.startswith("/v1/") else set()  # failures throttled per source
            for status in sorted(statuses):
                entry["responses"][str(status)] = {
                    "description": "problem",
                    "content": {
                        "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
                    },
                }
            if not op.public:
                entry["security"] = [{"apiKey": []}]
            paths.setdefault(op.path, {})[op.method.lower()] = entry
        return {
            "openapi": "3.1.0",
            "info": {"title": "gateway", "version": __version__},
            "paths": paths,
            "components": {
                "schemas": schemas,
                "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer", "bearerFormat": "gk_…"}},
            },
        }

    def docs_html(self) -> str:
        """A self-contained page listing every operation (no CDN assets to fetch)."""
        rows = "".join(
            f"<tr><td><code>{op.method}</code></td><td><code>{html.escape(op.path)}</code></td>"
            f"<td>{html.escape(op.summary)}</td>"
            f"<td>{html.escape(op.body.__name__) if op.body else ''}</td></tr>"
            for op in self.operations
        )
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>gateway API</title>"
            "<style>body{font-family:sans-serif;margin:2em}td{padding:.3em 1em;border-bottom:1px solid #ddd}"
            "</style></head><body><h1>gateway API</h1><p>Machine-readable: "
            "<a href='/openapi.json'>/openapi.json</a> (OpenAPI 3.1). Authenticate with "
            "<code>Authorization: Bearer gk_…</code>.</p><table><tr><th>method</th><th>path</th>"
            f"<th>what</th><th>body</th></tr>{rows}</table></body></html>"
        )


def _route(path: str, paths: set[str]) -> str:
    """``path`` for aiohttp's router, each ``{id}`` refusing the literal
    segments its siblings use. Otherwise ``GET /v1/numbers/purchase`` would be
    ``GET /v1/numbers/{number_id}`` with a bad id (400), not the 405 its
    method deserves; any other bad id still reaches the handler's 400."""
    segments = path.split("/")
    for i, segment in enumerate(segments):
        if not (match := _PARAM.fullmatch(segment)):
            continue
        siblings = sorted(
            other[i]
            for other in (p.split("/") for p in paths)
            if len(other) > i and other[:i] == segments[:i] and not _PARAM.fullmatch(other[i])
        )
        if siblings:
            words = "|".join(re.escape(word) for word in siblings)
            segments[i] = f"{{{match[1]}:(?!(?:{words})(?:/|$))[^/]+}}"
    return "/".join(segments)


def _schema(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, Any]:
    generated = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(generated.pop("$defs", {}))
    schemas[model.__name__] = generated
    return generated


async def body(request: web.Request, model: type[M]) -> M:
    """The JSON body validated as ``model``: 415/400 as in ``json_object``, 422
    naming each bad field."""
    data = await json_object(request)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc) from None


def query(request: web.Request, model: type[M]) -> M:
    """The query string validated as ``model``; 400 naming each bad parameter."""
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as exc:
        raise _invalid(exc, status=400) from None


def _invalid(exc: ValidationError, status: int = 422) -> InvalidInput:
    errors = [
        {"field": ".".join(str(part) for part in error["loc"]) or "body", "message": error["msg"]}
        for error in exc.errors(include_url=False, include_input=False)
    ]
    return InvalidInput(status, "Invalid request", errors)


_RAW_BODY: dict[str, dict[str, Any]] = {
    "application/json": {"type": "object"},
    "application/x-www-form-urlencoded": {"type": "object", "additionalProperties": {"type": "string"}},
    "text/csv": {"type": "string"},
    "application/x-ndjson": {"type": "string"},
}

_PROBLEM = {
    "type": "object",
    "description": "RFC 9457 problem document",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
    "required": ["title", "status"],
}


def json_text(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=None, separators=(",", ":"))
