"""The /ui dashboard: one HTML page and its static files (app/ui/), plus the pinned JavaScript libraries.

Nothing here needs a key, like /docs: the page and its scripts hold no data. Every data call the page makes goes
to the public JSON API with the key the user signs in with (kept in the tab's sessionStorage). The libraries
come from npm at install time (app/ui/package.json + package-lock.json, `npm ci` by `make install`); only the
files named in VENDOR are served from app/ui/node_modules, nothing else of it. When one is missing the page
says how to install it instead of loading a script that is not there.
"""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from app.api.middleware import HTML_CSP
from app.errors import NotFound

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
STATIC_DIR = UI_DIR / "static"
# URL name under /ui/vendor/ -> the one file of the installed npm package it stands for.
VENDOR = {"chart.umd.min.js": UI_DIR / "node_modules" / "chart.js" / "dist" / "chart.umd.min.js"}
INSTALL_HINT = "make install (or: npm ci --prefix app/ui)"

# The app-wide HTML policy (app/api/middleware.py) plus blob: images: thumbnails are fetched with the bearer
# header and shown as blob: URLs. Still no inline script or style, no other origin.
UI_CSP = (
    HTML_CSP.replace("img-src 'self' data:", "img-src 'self' data: blob:") + "; connect-src 'self'; form-action 'none'"
)

router = APIRouter(include_in_schema=False)


def _page(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "").rstrip("/")
    missing = [name for name, path in VENDOR.items() if not path.is_file()]
    vendor_tags = "".join(
        f'<script src="{html.escape(root)}/ui/vendor/{name}"></script>\n' for name in VENDOR if name not in missing
    )
    page = (STATIC_DIR.parent / "index.html").read_text(encoding="utf-8")
    page = (
        page.replace("{{root}}", html.escape(root))
        .replace("{{vendor_scripts}}", vendor_tags)
        .replace("{{vendor_missing}}", html.escape(" ".join(missing)))
        .replace("{{install_hint}}", html.escape(INSTALL_HINT))
    )
    return HTMLResponse(page, headers={"Content-Security-Policy": UI_CSP, "Cache-Control": "no-cache"})


@router.get("/ui")
def ui_root(request: Request) -> Response:
    root = request.scope.get("root_path", "").rstrip("/")
    return RedirectResponse(f"{root}/ui/", status_code=307)


@router.get("/ui/")
def ui_page(request: Request) -> HTMLResponse:
    return _page(request)


@router.get("/ui/vendor/{name}")
def ui_vendor(name: str) -> FileResponse:
    path = VENDOR.get(name)
    if path is None:
        raise NotFound(f"no vendored file {name!r}")
    if not path.is_file():
        raise NotFound(f"{name} is not installed: run `{INSTALL_HINT}`")
    return FileResponse(path, media_type="text/javascript", headers={"Cache-Control": "public, max-age=3600"})


def install_ui(app: FastAPI) -> None:
    """Serve the dashboard at /ui/ and its files under /ui/static/ and /ui/vendor/."""
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="ui-static")
