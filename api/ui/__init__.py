"""The dashboard at ``/ui``: one HTML shell and its static assets, nothing else.

The page is a client of the public API (it holds no endpoint of its own), so everything it
shows a person is also what ``curl`` gets. What this module adds is how the files are served:

* under a strict Content-Security-Policy (scripts and styles from this origin only, no inline
  script, no ``eval``; requests to this origin only; no framing), with ``nosniff`` and no
  referrer;
* the shell is never stored (it names the assets), the project's own assets are revalidated
  by ETag, the vendored ones (their folder names their version) are kept by the browser.

The browser-safety middleware (Host, Origin) applies to these paths as to every other.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC_DIR = Path(__file__).resolve().parent / "static"
SHELL = STATIC_DIR / "index.html"

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
)

IMMUTABLE = b"public, max-age=31536000, immutable"
REVALIDATE = b"no-cache"


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` and a caching rule to every answer of the static files."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A vendored file's path names its version: it never changes, so browsers keep it.
        # The project's own files are revalidated (ETag) on every load.
        vendored = scope.get("path", "").startswith("/ui/static/vendor/")
        caching = IMMUTABLE if vendored else REVALIDATE

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.setdefault("headers", [])
                headers.extend(SECURITY_HEADERS)
                headers.append((b"cache-control", caching))
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def shell(request: Request) -> FileResponse:
    """``GET /ui``: the page (the route after ``#`` is the client's); never cached."""
    headers = {name.decode(): value.decode() for name, value in SECURITY_HEADERS}
    headers["cache-control"] = "no-store"
    return FileResponse(SHELL, media_type="text/html; charset=utf-8", headers=headers)


def install(app: FastAPI) -> None:
    """Mount the dashboard: ``/ui`` (the shell) and ``/ui/static`` (its assets)."""
    app.mount("/ui/static", SecurityHeaders(StaticFiles(directory=STATIC_DIR)), name="ui-static")
    for path in ("/ui", "/ui/"):
        app.add_api_route(path, shell, methods=["GET", "HEAD"], include_in_schema=False)
