"""Sweep reports the API serves: the run folders (``mrsa bench --out``) under ``MRSA_REPORTS_DIR``
and the files ``mrsa report`` wrote into them.

Only what is directly inside the reports folder is visible: a *run* is a sub-folder holding a
``manifest.json``; its files are the regular files directly inside it whose names end in one of
:data:`MEDIA_TYPES`. Names from a request are checked against a strict pattern and looked up in
that listing, never joined onto a path, so ``..``, absolute paths, separators and symbolic links
out of the folder cannot reach anything else.
"""

from __future__ import annotations

import contextlib
import re
import stat
from pathlib import Path
from typing import NamedTuple

from pydantic import BaseModel, Field, ValidationError

from evals.rundir import MANIFEST, REPORT, Manifest
from mrsa.api.errors import ApiError

# The files of a run folder the API hands out, by suffix. records.jsonl is left out: it holds every
# candidate's full text and can be gigabytes; the report's tables and plots are what is shown.
MEDIA_TYPES = {
    ".md": "text/markdown; charset=utf-8",
    ".json": "application/json",
    ".png": "image/png",
    ".csv": "text/csv; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_NAME = re.compile(NAME_PATTERN)
# Markdown larger than this is not inlined into the report view (the file stays downloadable).
MAX_INLINE_MARKDOWN_BYTES = 2 * 2**20


class ReportFile(BaseModel):
    name: str
    size: int = Field(description="Bytes.")
    media_type: str
    url: str = Field(description="Where to download it (same auth as the rest of /v1).")


class ReportSummary(BaseModel):
    """One run folder as listed."""

    name: str = Field(description="The run folder's name (its id in the URLs).")
    modified_at: float = Field(description="Last change of the run folder's files, Unix seconds.")
    has_report: bool = Field(description="Whether `mrsa report` has written report.md into it.")
    model: str | None = Field(None, description="The model of the sweep, from its manifest.")
    configs: list[str] = Field(default_factory=list, description="Configuration ids of the sweep.")
    datasets: list[str] = Field(default_factory=list, description="Dataset names of the sweep.")
    error: str | None = Field(None, description="Why the manifest could not be read, if it could not.")


class ReportList(BaseModel):
    configured: bool = Field(
        description="Whether the server has a reports folder (MRSA_REPORTS_DIR / mrsa serve --reports-dir)."
    )
    reports: list[ReportSummary] = Field(description="Newest first.")


class ReportView(ReportSummary):
    """One run folder: its files and, when ``mrsa report`` wrote it, report.md's text."""

    files: list[ReportFile]
    markdown: str | None = Field(None, description="report.md (tables in Markdown), when present.")


class _Found(NamedTuple):
    path: Path
    size: int
    mtime: float


def _files(run: Path) -> dict[str, _Found]:
    """The servable files directly inside ``run`` by name (regular files, no links); a file that
    disappears while it is listed (``mrsa report`` rewriting the folder) is left out."""
    found: dict[str, _Found] = {}
    for entry in run.iterdir():
        if not _NAME.match(entry.name) or entry.suffix not in MEDIA_TYPES or entry.is_symlink():
            continue
        try:
            info = entry.stat()
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode):
            found[entry.name] = _Found(entry, info.st_size, info.st_mtime)
    return found


class ReportsDir:
    """The run folders under one folder (or none when the server has no reports folder)."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def _runs(self) -> dict[str, Path]:
        if self.root is None or not self.root.is_dir():
            return {}
        return {
            entry.name: entry
            for entry in self.root.iterdir()
            if _NAME.match(entry.name)
            and not entry.is_symlink()
            and entry.is_dir()
            and (entry / MANIFEST).is_file()
        }

    def listing(self) -> ReportList:
        summaries = [self._summary(name, path) for name, path in self._runs().items()]
        summaries.sort(key=lambda s: (-s.modified_at, s.name))
        return ReportList(configured=self.root is not None, reports=summaries)

    def _run(self, name: str) -> Path:
        run = self._runs().get(name) if _NAME.match(name) else None
        if run is None:
            raise ApiError(404, f"no report {name!r}")
        return run

    def view(self, name: str) -> ReportView:
        run = self._run(name)
        files = _files(run)
        markdown = None
        report = files.get(REPORT)
        if report is not None and report.size <= MAX_INLINE_MARKDOWN_BYTES:
            with contextlib.suppress(OSError):
                markdown = report.path.read_text(encoding="utf-8", errors="replace")
        return ReportView(
            **self._summary(name, run).model_dump(),
            files=[
                ReportFile(
                    name=file_name,
                    size=found.size,
                    media_type=MEDIA_TYPES[found.path.suffix],
                    url=f"/v1/reports/{name}/files/{file_name}",
                )
                for file_name, found in sorted(files.items())
            ],
            markdown=markdown,
        )

    def file(self, name: str, file_name: str) -> tuple[Path, str]:
        """The path of a run's file and its media type, or 404."""
        found = _files(self._run(name)).get(file_name) if _NAME.match(file_name) else None
        if found is None:
            raise ApiError(404, f"report {name!r} has no file {file_name!r}")
        return found.path, MEDIA_TYPES[found.path.suffix]

    @staticmethod
    def _summary(name: str, run: Path) -> ReportSummary:
        files = _files(run)
        modified = max([run.stat().st_mtime, *(f.mtime for f in files.values())])
        summary = ReportSummary(name=name, modified_at=modified, has_report=REPORT in files)
        try:
            manifest = Manifest.model_validate_json((run / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError, ValidationError) as exc:
            summary.error = f"{MANIFEST}: {str(exc).splitlines()[0]}"[:300]
            return summary
        summary.model = manifest.model
        summary.configs = [c.id for c in manifest.configs]
        summary.datasets = [d.name for d in manifest.datasets]
        return summary
