"""The web playground (``frontend/playground/``): one static page, same origin, and the security headers
of every answer. The page is public; every call it makes carries the API key the user types."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from ..app_keys import SETTINGS

PAGE_DIR = Path(__file__).resolve().parent.parent / "playground"
PAGE_PATHS = ("/", "/playground")
# Media types said, not guessed (mimetypes varies by platform; RFC 9239 names text/javascript).
ASSETS = {"/playground/playground.js": "text/javascript", "/playground/playground.css": "text/css"}
PUBLIC_PATHS = frozenset({*PAGE_PATHS, *ASSETS})
# The page's own script and style only (no inline script, nothing from elsewhere); images may be data:
# (results) or blob: (previews); it talks only to this origin and is never framed.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
# Everything else is data, never a document to render.
API_CSP = "default-src 'none'; frame-ancestors 'none'"


def setup_playground(app: web.Application) -> None:
    for path in PAGE_PATHS:
        app.router.add_get(path, _page)
    for path in ASSETS:
        app.router.add_get(path, _asset)


async def _page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(
        PAGE_DIR / "index.html", headers={"Cache-Control": "no-cache", "Content-Type": "text/html; charset=utf-8"}
    )


async def _asset(request: web.Request) -> web.FileResponse:
    # revalidated each load (ETag): a new release's script never meets the old page
    media_type = ASSETS[request.path] + "; charset=utf-8"
    return web.FileResponse(
        PAGE_DIR / request.path.rsplit("/", 1)[1], headers={"Cache-Control": "no-cache", "Content-Type": media_type}
    )


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: on every answer, streams and errors included."""
    # by path, not by content type: a 304 has none, and its headers replace the cached page's
    is_page = request.path in PAGE_PATHS and request.app[SETTINGS].playground
    response.headers["Content-Security-Policy"] = PAGE_CSP if is_page else API_CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"  # frame-ancestors for browsers without CSP 2
