"""The admin console (issue 16, item 3): three static files served from
memory at ``/console``. The page holds no data and no secret; the script
in it signs in with an API key and uses the public API like any client,
so the console has exactly the API's permissions and errors.

No build step and no dependency: plain HTML, CSS and one script. A strict
Content-Security-Policy allows only this origin's own script and style,
so nothing in an API answer can run as code in the page."""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from gateway.http.problems import Handler

_FILES = {
    "/console": ("index.html", "text/html"),
    "/console/console.js": ("console.js", "text/javascript"),
    "/console/console.css": ("console.css", "text/css"),
}
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self';"
        " form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def mount(app: web.Application) -> None:
    """Serve the console's files, read once from the package."""
    folder = resources.files("gateway.http") / "console"
    for path, (name, content_type) in _FILES.items():
        body = (folder / name).read_bytes()
        app.router.add_get(path, _serve(body, content_type))
    app.router.add_get("/console/", _redirect)


def _serve(body: bytes, content_type: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type, charset="utf-8", headers=_HEADERS)

    return handler


async def _redirect(request: web.Request) -> web.Response:
    raise web.HTTPPermanentRedirect("/console")
