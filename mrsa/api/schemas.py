"""The REST API's request and response models (its wire contract next to :mod:`mrsa.domain`).

Parameter overrides are derived from :class:`~mrsa.params.RSAParams` field by field
(:func:`overrides_model`): every field is optional and carries the same description and bounds (so
the OpenAPI schema shows them), and a preset fills in the rest. Cross-field rules (K ≤ N, τ ≤ β,
chunk/carry-over) are checked once the preset and the overrides are merged, by ``RSAParams`` itself.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, cast

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator
from pydantic.config import JsonDict
from pydantic.fields import FieldInfo

from mrsa.domain import JobStatus
from mrsa.params import DEFAULT_PRESET, PRESETS, RSAParams, group_model

PROBLEM_PREVIEW_CHARS = 160


def optional_field(field: FieldInfo) -> tuple[Any, FieldInfo]:
    """``field`` as an optional override, as a ``create_model`` definition: its type or None, the
    same description and bounds, default None."""
    override = copy.copy(field)
    override.default = None
    override.default_factory = None
    return cast(Any, field.annotation) | None, override


class Overrides(BaseModel):
    """Fields to change on top of a preset; :func:`overrides_model` derives the fields."""

    model_config = ConfigDict(extra="forbid")

    def as_dict(self) -> dict[str, Any]:
        """The overrides that are set, for :func:`mrsa.params.resolve_params`."""
        return self.model_dump(exclude_none=True)


def overrides_model(model: type[BaseModel], name: str, doc: str) -> type[Overrides]:
    """A model of ``model``'s fields, each optional (:func:`optional_field`); a group of fields
    (``sampling``) becomes a nested overrides model of its own, named after the group."""
    fields: dict[str, Any] = {}
    for field_name, field in model.model_fields.items():
        group = group_model(field)
        if group is None:
            fields[field_name] = optional_field(field)
            continue
        title = field_name.capitalize()
        nested = overrides_model(
            group, f"{title}Overrides", f"{title} settings to change (unset fields keep the preset's value)."
        )
        fields[field_name] = (nested | None, Field(None, description=f"{title} settings to change."))
    return create_model(name, __base__=Overrides, __doc__=doc, **fields)


if TYPE_CHECKING:  # a model built at run time is no type to mypy: it checks the base's methods
    ParamOverrides = Overrides
else:
    ParamOverrides = overrides_model(
        RSAParams,
        "ParamOverrides",
        "Markovian RSA parameters to change on top of the preset (unset fields keep the preset's value).",
    )

PRESET_DESCRIPTION = (
    f"Named parameter set the overrides apply to: {', '.join(PRESETS)} (default {DEFAULT_PRESET})."
)


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
    population: int = Field(description="N: candidates per round.")
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


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="Where the invalid value is, e.g. ['body', 'params', 'subset'].")
    msg: str
    type: str


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error the API returns (4xx/5xx): one line for humans, the fields for programs."""

    message: str = Field(description="One line naming the field (for 422) and the reason.")
    detail: list[FieldError] = Field(default_factory=list, description="The invalid fields (422).")
    error_id: str | None = Field(None, description="Id of an unexpected error, as logged by the server.")
    error: OpenAIErrorDetail | None = Field(
        None, description="The same error in OpenAI's shape (on /v1/chat/completions only)."
    )


class ReadyResponse(BaseModel):
    ready: bool
    checks: dict[str, str] = Field(
        description="Each dependency's state: 'ok', 'not configured' or the error."
    )


class HealthResponse(BaseModel):
    status: str = "ok"
