"""The wire models of ``/v1/jobs``: the job request, the job as shown to its owner, the submit answer.

The request's ``params`` are the parameter overrides every endpoint shares
(:data:`mrsa.api.schemas.ParamOverrides`).
"""

from __future__ import annotations

import copy
from typing import cast

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.config import JsonDict

from mrsa.api.schemas import PRESET_DESCRIPTION, ParamOverrides
from mrsa.domain import JobStatus
from mrsa.params import PRESETS, RSAParams

PROBLEM_PREVIEW_CHARS = 160


class JobRequest(BaseModel):
    """A Markovian RSA job to run: the problem, a preset, parameter overrides and a model id."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"problem": "What is 7*6?", "preset": "smoke", "params": {"population": 4}}]
        },
    )

    problem: str = Field(
        min_length=1,
        description="The problem statement (LaTeX allowed). Its size is limited (MRSA_API_MAX_PROBLEM_BYTES).",
    )
    preset: str | None = Field(
        None,
        description=PRESET_DESCRIPTION,
        # x-presets: each preset's values (nested like ``params``), for forms that show them.
        json_schema_extra={"enum": [*PRESETS, None], "x-presets": cast(JsonDict, copy.deepcopy(PRESETS))},
    )
    params: ParamOverrides = Field(default_factory=ParamOverrides, description="Overrides of the preset.")
    model: str | None = Field(
        None, max_length=256, description="Model id recorded on the job and sent to the inference server."
    )

    @field_validator("problem")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("problem: must not be empty or only whitespace")
        return value.strip()


class JobProgress(BaseModel):
    """Where a job is: its current round and how many of that round's candidates are stored."""

    round: int = Field(description="Current round (0 … T; T+1 while the final aggregation runs).")
    rounds: int = Field(description="T: aggregation rounds after round 0.")
    population: int = Field(
        description="Candidates of the current round (N; final_population in the last stage)."
    )
    done: int | None = Field(
        None, description="Candidates of the current round stored so far (in a job's own view only)."
    )


class JobLinks(BaseModel):
    """Where to follow a job."""

    job: str
    result: str
    events: str
    cancel: str


class JobView(BaseModel):
    """A job as the API shows it to its owner."""

    id: str
    status: JobStatus
    problem_preview: str = Field(description=f"The first {PROBLEM_PREVIEW_CHARS} characters of the problem.")
    model: str | None = None
    preset: str | None = Field(None, description="The preset the job's parameters were resolved from.")
    params: RSAParams
    progress: JobProgress
    answer: str | None = Field(None, description="The selected answer once the job succeeded.")
    error: str | None = Field(None, description="Why the job failed or was cancelled.")
    created_at: float
    updated_at: float
    finished_at: float | None = None
    warnings: list[str] = Field(
        default_factory=list,
        description="What could not be checked when the job was accepted (e.g. the context check).",
    )
    links: JobLinks


class JobList(BaseModel):
    jobs: list[JobView]


class SubmitResponse(BaseModel):
    """What ``POST /v1/jobs`` answers (202): the job's id and where to follow it."""

    id: str
    status: JobStatus
    replayed: bool = Field(
        False, description="True when an earlier request with this Idempotency-Key made it."
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="What could not be checked when the job was accepted (e.g. the context check).",
    )
    links: JobLinks
