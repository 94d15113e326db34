"""Serving the console: ``/`` and ``/ui`` redirect to ``/ui/``, which is ``index.html``; the other
files are under ``/ui/static/``. They are the package's own files (shipped in the wheel), need no
key (they hold no data) and every response carries :data:`SECURITY_HEADERS`.

The Content-Security-Policy allows scripts, styles, fetches and images from the API's own origin
only (images also as ``blob:``: report plots are fetched with the key, then shown), no inline
script or ``eval``, no plugins, no framing and no ``<base>``: even text that slipped into the
page as markup could not run.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, PlainTextResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).with_name("static")
INDEX = STATIC_DIR / "index.html"
UI_PATH = "/ui/"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Served from the package: a new version must not be mixed with cached old modules.
    "Cache-Control": "no-cache",
}


class ConsoleFiles(StaticFiles):
    """The console's static files, each response (a 404 too) with :data:`SECURITY_HEADERS`."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        try:
            response = await super().get_response(path, scope)
        except HTTPException as exc:
            response = PlainTextResponse(str(exc.detail), status_code=exc.status_code)
        response.headers.update(SECURITY_HEADERS)
        return response


def _redirect() -> RedirectResponse:
    return RedirectResponse(UI_PATH, status_code=307, headers=SECURITY_HEADERS)


def install(app: FastAPI) -> None:
    """Add the console's routes to ``app`` (left out of the OpenAPI schema: they are no API)."""

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return _redirect()

    @app.get("/ui", include_in_schema=False)
    async def ui_bare() -> RedirectResponse:
        return _redirect()

    @app.get(UI_PATH, include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(INDEX, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)

    app.mount("/ui/static", ConsoleFiles(directory=STATIC_DIR), name="console")
