"""Builders of the values tests submit: a job spec and a generation request.

Each test module binds its own defaults once (``spec = partial(job_spec, "What is 2+2?", PARAMS)``)
and overrides per call (``spec(rounds=0)``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mrsa.backends.base import GenerationRequest, Message
from mrsa.domain import JobSpec
from mrsa.params import RSAParams


def job_spec(problem: str, params: Mapping[str, Any], model: str | None = None, **overrides: Any) -> JobSpec:
    """A job solving ``problem`` with the RSA knobs ``params``, ``overrides`` laid over them."""
    return JobSpec(problem=problem, params=RSAParams.model_validate({**params, **overrides}), model=model)


def generation_request(
    content: str, fields: Mapping[str, Any] | None = None, **overrides: Any
) -> GenerationRequest:
    """A request whose one user message is ``content``, with ``fields`` and then ``overrides`` (any
    :class:`GenerationRequest` field; ``messages=`` replaces the message)."""
    values: dict[str, Any] = {
        "messages": [Message(role="user", content=content)],
        **(fields or {}),
        **overrides,
    }
    return GenerationRequest(**values)
