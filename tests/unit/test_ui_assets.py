"""The dashboard's files: vendored ones match the checksums their README records (and carry
their license), the page loads nothing from another origin and has no inline script, and
``/ui`` is served under a strict Content-Security-Policy."""

from __future__ import annotations

import asyncio
import hashlib
import re

import httpx
from fastapi import FastAPI

from api import ui

VENDOR = ui.STATIC_DIR / "vendor"
ROW = re.compile(r"^\| `(?P<path>[^`]+)` \| `(?P<sha>[0-9a-f]{64})` \|", re.MULTILINE)


def recorded() -> dict[str, str]:
    return {m["path"]: m["sha"] for m in ROW.finditer((VENDOR / "README.md").read_text())}


def test_every_vendored_file_matches_its_recorded_sha256() -> None:
    files = {
        str(p.relative_to(VENDOR))
        for p in VENDOR.rglob("*")
        if p.is_file() and p.name != "README.md"
    }
    sums = recorded()
    assert files == set(sums), "every vendored file is listed in vendor/README.md, and only those"
    for path, sha in sums.items():
        assert hashlib.sha256((VENDOR / path).read_bytes()).hexdigest() == sha, path


def test_each_vendored_package_ships_its_license() -> None:
    for package in (p for p in VENDOR.iterdir() if p.is_dir()):
        assert (package / "LICENSE").is_file(), package.name


def test_the_page_loads_only_its_own_files_and_no_inline_script() -> None:
    html = ui.SHELL.read_text()
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources, "the shell names its assets"
    for source in sources:
        assert source.startswith(("/ui/static/", "#", "/docs")), source
        if source.startswith("/ui/static/"):
            assert (ui.STATIC_DIR / source.removeprefix("/ui/static/")).is_file(), source
    assert re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html) is None, "an inline script"
    assert re.search(r"\son[a-z]+\s*=", html) is None, "an inline event handler"
    script = (ui.STATIC_DIR / "app.js").read_text()
    for forbidden in ("innerHTML", "eval(", "new Function", "document.write", "localStorage"):
        assert forbidden not in script, forbidden


def test_ui_is_served_with_a_strict_policy() -> None:
    app = FastAPI()
    ui.install(app)
    paths = ("/ui", "/ui/", "/ui/static/app.js", "/ui/static/vendor/uplot-1.6.32/uPlot.min.css")

    async def fetch(*urls: str) -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return [await client.get(url) for url in urls]

    *answers, missing = asyncio.run(fetch(*paths, "/ui/static/nothing-here.js"))
    for path, response in zip(paths, answers, strict=True):
        assert response.status_code == 200, path
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp
        assert "script-src 'self'" in csp
        assert "unsafe" not in csp
        assert "frame-ancestors 'none'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
    shell = answers[0]
    assert shell.headers["content-type"].startswith("text/html")
    assert shell.headers["cache-control"] == "no-store"
    assert "immutable" in answers[3].headers["cache-control"]  # a vendored, versioned file
    assert answers[2].headers["cache-control"] == "no-cache"  # ours: revalidated
    assert missing.status_code == 404
