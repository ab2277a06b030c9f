"""The playground: a page to try the service from a browser, served by the ingress.

Plain HTML, CSS and JavaScript shipped as package data (``static/``): no
build step, and the page requests nothing but this service's own API. It
needs no API key to load; with keys on, it asks for one and keeps it in the
browser's localStorage.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"
PLAYGROUND_URL = "/playground"


def install_playground(app: FastAPI) -> None:
    """``/playground`` (and ``/``, which redirects there) with its files under ``/playground/assets``."""
    app.mount(f"{PLAYGROUND_URL}/assets", StaticFiles(directory=STATIC_DIR), name="playground-assets")

    @app.get("/", include_in_schema=False)
    async def root(request: Request) -> RedirectResponse:
        return RedirectResponse(request.scope.get("root_path", "") + PLAYGROUND_URL)

    @app.get(PLAYGROUND_URL, include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(
            STATIC_DIR / "playground.html", media_type="text/html", headers={"Cache-Control": "no-cache"}
        )
