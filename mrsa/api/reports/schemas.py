"""The wire models of ``/v1/reports``: the listing of run folders and one run folder's view."""

from __future__ import annotations

from pydantic import BaseModel, Field


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
