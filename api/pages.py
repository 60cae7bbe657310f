"""The gateway's pages: the chat (`/`), the run viewer (`/runs`) and the icon both link. Static files with
no build step, public: everything they show they read from /api, which asks who is reading."""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

router = APIRouter(include_in_schema=False)
_STATIC = Path(__file__).parent / "static"


@router.get("/")
async def chat_page() -> FileResponse:
    return FileResponse(_STATIC / "index.html")


@router.get("/runs")
async def viewer_page() -> FileResponse:
    return FileResponse(_STATIC / "runs.html")


# Both pages link this icon; /favicon.ico answers too, for browsers and tools that ask for it unprompted.
@router.get("/favicon.svg")
@router.get("/favicon.ico")
async def favicon() -> FileResponse:
    return FileResponse(_STATIC / "favicon.svg", media_type="image/svg+xml")
