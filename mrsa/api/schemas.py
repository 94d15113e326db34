"""The wire models every endpoint shares (the API's contract next to :mod:`mrsa.domain`): the error
body, and the parameter overrides a job request and a chat request both carry. Each endpoint's own
models are in its package (``jobs/schemas.py``, ``chat/schemas.py``, …).

Parameter overrides are derived from :class:`~mrsa.params.RSAParams` field by field
(:func:`overrides_model`): every field is optional and carries the same description and bounds (so
the OpenAPI schema shows them), and a preset fills in the rest. Cross-field rules (K ≤ N, τ ≤ β,
chunk/carry-over) are checked once the preset and the overrides are merged, by ``RSAParams`` itself.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, cast

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.fields import FieldInfo

from mrsa.params import DEFAULT_PRESET, PRESETS, RSAParams, group_model


def optional_field(field: FieldInfo) -> tuple[Any, FieldInfo]:
    """``field`` as an optional override, as a ``create_model`` definition: its type or None, the
    same description and bounds, default None."""
    override = copy.copy(field)
    override.default = None
    override.default_factory = None
    return cast(Any, field.annotation) | None, override


class Overrides(BaseModel):
    """Fields to change on top of a preset; :func:`overrides_model` derives the fields."""

    # strict: a JSON ``true`` is no integer (pydantic's lax mode would read it as 1); numbers
    # still fill float fields.
    model_config = ConfigDict(extra="forbid", strict=True)

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
