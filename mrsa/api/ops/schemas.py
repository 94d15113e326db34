"""The wire models of the operations endpoints (``/healthz``, ``/readyz``)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ReadyResponse(BaseModel):
    ready: bool
    checks: dict[str, str] = Field(
        description="Each dependency's state: 'ok', 'not configured' or the error."
    )


class HealthResponse(BaseModel):
    status: str = "ok"
