"""The dashboard: one HTML page and its static files (no CDN: it works offline)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).resolve().parent.parent.parent / "static"

router = APIRouter(tags=["dashboard"])


@router.get("/", response_class=FileResponse, include_in_schema=False)
def dashboard() -> FileResponse:
    """The dashboard: jobs, live loss curves, and a pad to draw digits on."""
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


class Static(StaticFiles):
    """Static files that the browser revalidates (a cheap 304) so an upgrade shows at once."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Cache-Control"] = "no-cache"
        return response


def static_files() -> Static:
    """The app mounts this at /static."""
    return Static(directory=STATIC_DIR)
