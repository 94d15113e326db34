"""``/v1/reports``: the sweep reports (``mrsa report``'s tables and plots) of the run folders under
``MRSA_REPORTS_DIR``, for the web console and any client.

Reports belong to the server, not to a key: with auth on, every valid key sees them (they hold
no job of anyone's, only the sweep's aggregate numbers). The routes are plain ``def``: FastAPI
runs them in its thread pool, so reading files never blocks the event loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, BinaryIO

from fastapi import APIRouter, Depends, Path
from fastapi.responses import StreamingResponse

from mrsa.api.auth import Principal, authenticate
from mrsa.api.deps import ApiDeps, get_deps
from mrsa.api.errors import responses
from mrsa.api.reports.folders import NAME_PATTERN, ReportsDir
from mrsa.api.reports.schemas import ReportList, ReportView

router = APIRouter(prefix="/v1/reports", tags=["reports"], responses=responses(401))

Auth = Annotated[Principal, Depends(authenticate)]
Deps = Annotated[ApiDeps, Depends(get_deps)]
RunName = Annotated[
    str, Path(min_length=1, max_length=128, pattern=NAME_PATTERN, description="A run folder's name.")
]
FileName = Annotated[
    str, Path(min_length=1, max_length=128, pattern=NAME_PATTERN, description="A file of the run folder.")
]

# A downloaded report file is data: never sniffed into HTML, never run as a page if opened directly.
FILE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "Cache-Control": "no-cache",
}


@router.get("", response_model=ReportList, summary="List the sweep reports")
def list_reports(_: Auth, deps: Deps) -> ReportList:
    """The run folders directly under the server's reports folder, newest first (empty, with
    ``configured: false``, when the server has none)."""
    return ReportsDir(deps.config.reports_dir).listing()


@router.get("/{name}", response_model=ReportView, summary="One sweep report", responses=responses(404, 422))
def get_report(name: RunName, _: Auth, deps: Deps) -> ReportView:
    """The run folder's files (report.md, metrics.json, the plots, manifest.json) and report.md's text."""
    return ReportsDir(deps.config.reports_dir).view(name)


@router.get(
    "/{name}/files/{file_name}",
    response_class=StreamingResponse,
    summary="A file of a sweep report",
    responses={
        **responses(404, 422),
        200: {
            "description": "The file (Markdown, JSON, PNG, CSV or text).",
            "content": {
                "image/png": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": {}},
                "text/markdown": {"schema": {"type": "string"}},
            },
        },
    },
)
def get_report_file(name: RunName, file_name: FileName, _: Auth, deps: Deps) -> StreamingResponse:
    """A file directly inside the run folder (no sub-folders, no links)."""
    opened = ReportsDir(deps.config.reports_dir).file(name, file_name)
    # Sent from the descriptor opened without following links, never reopened by its path (a link
    # put in its place meanwhile would be followed). Starlette runs this iterator in its threads.
    return StreamingResponse(
        _chunks(opened.file, opened.size),
        media_type=opened.media_type,
        headers={**FILE_HEADERS, "Content-Length": str(opened.size)},
    )


CHUNK_BYTES = 64 * 1024


def _chunks(file: BinaryIO, size: int) -> Iterator[bytes]:
    """The file's first ``size`` bytes (its size when opened: the Content-Length sent), then close it."""
    with file:
        left = size
        while left > 0:
            chunk = file.read(min(CHUNK_BYTES, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk
