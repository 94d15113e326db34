"""The one submission pipeline: every endpoint that creates a job goes validate → spec → budget →
submit through here (``POST /v1/jobs`` and ``POST /v1/chat/completions`` today).

An endpoint reads its request into a :class:`Submission` — the problem, preset, overrides and model,
and where its request carries each (:class:`FieldLocs`, so a 422 names the field as the client
sent it) — then calls :func:`prepare` (problem size, preset + overrides resolved and validated, the
job spec, the context check against the backend) and :func:`submit` (the idempotency key, the
in-flight limit, the job created, ``mrsa_api_jobs_submitted_total`` counted). The two are separate
steps so an endpoint can reserve what the job's answer will hold in between (the chat route takes
an event-stream slot there, so a refused slot creates no job).

The API enqueues only: jobs are created through the engine's
:class:`~mrsa.engine.job_service.JobService` (``deps.jobs``), and the API has no task runner.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from mrsa.api.auth import Principal
from mrsa.api.deps import ApiDeps
from mrsa.api.errors import ApiError, from_validation_errors, invalid
from mrsa.api.ops.prometheus import JOBS_SUBMITTED
from mrsa.backends.base import BackendError
from mrsa.domain import Job, JobSpec
from mrsa.engine.job_service import new_job_id
from mrsa.engine.limits import ContextBudgetError, check_context
from mrsa.engine.prompts import UnknownPromptSetError, check_prompt_set
from mrsa.params import DEFAULT_PRESET, RSAParams, UnknownPresetError, resolve_params
from mrsa.store.base import ActiveLimitReached

log = logging.getLogger("mrsa.api")

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class FieldLocs:
    """Where a request carries each part of a submission, as 422s name it (``detail[].loc``)."""

    problem: Loc = ("body", "problem")
    params: Loc = ("body", "params")
    preset: Loc = ("body", "preset")
    idempotency_key: Loc = ("header", "Idempotency-Key")


@dataclass(frozen=True)
class Submission:
    """A job as an endpoint read it from its request, not yet validated."""

    problem: str
    preset: str | None
    overrides: dict[str, Any]
    model: str | None
    # The endpoint's label on mrsa_api_jobs_submitted_total.
    endpoint: str
    locs: FieldLocs = field(default_factory=FieldLocs)


@dataclass(frozen=True)
class Prepared:
    """A validated submission: the job spec and what could not be checked (the job's warnings)."""

    submission: Submission
    spec: JobSpec
    warnings: list[str]


@dataclass
class Submitted:
    job: Job
    replayed: bool


async def prepare(deps: ApiDeps, submission: Submission) -> Prepared:
    """Validate → spec → budget: a 422 naming the field for a problem over the size limit, an
    unknown preset or prompt set, invalid parameters or a job that cannot fit the backend's
    context."""
    locs = submission.locs
    check_problem_size(deps, submission.problem, locs.problem)
    params = resolve(submission.preset, submission.overrides, loc=locs.params, preset_loc=locs.preset)
    spec = JobSpec(
        problem=submission.problem,
        params=params,
        model=submission.model,
        preset=preset_name(submission.preset),
    )
    warnings = await check_budget(deps, spec, loc=locs.params)
    return Prepared(submission, spec, warnings)


async def submit(
    deps: ApiDeps, principal: Principal, prepared: Prepared, idempotency_key: str | None = None
) -> Submitted:
    """Enqueue a prepared job for ``principal`` (:func:`create`) and count it when it is new."""
    done = await create(
        deps,
        principal,
        prepared.spec,
        idempotency_key,
        key_loc=prepared.submission.locs.idempotency_key,
        warnings=prepared.warnings,
    )
    if not done.replayed:
        JOBS_SUBMITTED.labels(prepared.submission.endpoint).inc()
    return done


# -- validation ----------------------------------------------------------------------------------


def resolve(
    preset: str | None,
    overrides: dict[str, Any],
    loc: Loc = ("body", "params"),
    preset_loc: Loc = ("body", "preset"),
) -> RSAParams:
    """Preset + overrides → validated parameters, or a 422 naming the field."""
    try:
        params = resolve_params(preset, overrides)
        check_prompt_set(params.prompts)
    except UnknownPresetError as exc:
        raise invalid(preset_loc, str(exc)) from None
    except UnknownPromptSetError as exc:
        raise invalid((*loc, "prompts"), str(exc)) from None
    except ValidationError as exc:
        raise from_validation_errors(exc.errors(), prefix=loc) from None
    return params


def preset_name(preset: str | None) -> str:
    """The preset a request's parameters are resolved from (the default when it names none)."""
    return preset or DEFAULT_PRESET


def check_problem_size(deps: ApiDeps, problem: str, loc: Loc = ("body", "problem")) -> None:
    size = len(problem.encode("utf-8"))
    limit = deps.config.max_problem_bytes
    if size > limit:
        raise invalid(loc, f"problem: {size} bytes is over the limit of {limit} bytes", "too_long")


async def check_budget(deps: ApiDeps, spec: JobSpec, loc: Loc = ("body", "params")) -> list[str]:
    """Refuse a job that cannot fit the backend's context (when the API has a backend to ask).

    Returns the job's warnings: why the check could not run, if it could not. A backend that is
    unreachable, slow, answers garbage or does not report its context does not block submission:
    the job is accepted (the warning says the check was skipped), waits in the queue like any
    other, and a worker reports a context overflow from the server if it happens."""
    if not deps.backend.configured:
        return []
    try:
        backend = await deps.backend.get()
        if backend is None:
            return []
        worst = await asyncio.wait_for(check_context(backend, spec), deps.config.context_check_timeout_s)
    except ContextBudgetError as exc:
        raise invalid((*loc, "budget"), str(exc)) from None
    except TimeoutError:
        reason = f"the backend did not answer within {deps.config.context_check_timeout_s:g} s"
    except BackendError as exc:
        reason = f"the backend is unavailable: {exc}"
    except Exception as exc:  # a reply the check cannot use (garbage tokens…) is not the client's fault
        reason = f"the backend's reply could not be used: {type(exc).__name__}: {exc}"
    else:
        if worst is not None:
            return []
        reason = (
            f"the backend {backend.url} did not report its context length "
            "(set MRSA_BACKEND_CONTEXT_LENGTH / --context-length on the API)"
        )
    warning = f"context check skipped: {reason}"[:500]
    log.warning("%s", warning)
    return [warning]


# -- creation ------------------------------------------------------------------------------------


async def create(
    deps: ApiDeps,
    principal: Principal,
    spec: JobSpec,
    idempotency_key: str | None = None,
    key_loc: Loc = ("header", "Idempotency-Key"),
    warnings: Sequence[str] = (),
) -> Submitted:
    """Enqueue ``spec`` for ``principal`` (already validated), honouring the idempotency key and the
    in-flight limit.

    With a key, the job id is claimed first, together with a fingerprint of the request, in one
    atomic step. Of concurrent requests with one key exactly one makes the job: a different
    request is a 422 as soon as it meets the claim (whether or not the job exists yet); the same
    request returns the claimed job (``replayed``), creating it under the claimed id when it is
    not stored — its first request was refused (429) or is creating it at this moment, and the
    store's create says which of the two creates made it.
    """
    job_id = new_job_id()
    if idempotency_key is not None:
        fingerprint = request_fingerprint(spec)
        claim = await deps.store.claim_idempotency_key(
            principal.owner, idempotency_key, job_id, fingerprint, deps.config.idempotency_ttl_s
        )
        if claim is not None:
            job_id = claim.job_id
            if claim.fingerprint is not None and claim.fingerprint != fingerprint:
                raise _key_conflict(key_loc, job_id)
            earlier = await deps.store.get_job(job_id)
            if earlier is not None:
                if earlier.spec != spec:  # a claim without a fingerprint, stored by an older release
                    raise _key_conflict(key_loc, job_id)
                return Submitted(earlier, replayed=True)
    try:
        # The store checks the key's in-flight count and adds the job in one atomic step: concurrent
        # submissions cannot overshoot the limit.
        job = Job(id=job_id, spec=spec, owner=principal.owner, warnings=list(warnings))
        created = await deps.jobs.create(job, max_active=deps.config.max_active_jobs)
    except ActiveLimitReached as exc:
        raise ApiError(
            429,
            f"too many jobs in flight for this key ({exc.active} of {exc.limit}); "
            "wait for one to finish or cancel one",
            headers={"Retry-After": str(deps.config.retry_after_s)},
        ) from None
    if created:
        return Submitted(job, replayed=False)
    # Another request with the same key and body created it between our claim and our create.
    existing = await deps.store.get_job(job_id)
    if existing is None or existing.spec != spec:
        raise _key_conflict(key_loc, job_id)
    return Submitted(existing, replayed=True)


def request_fingerprint(spec: JobSpec) -> str:
    """What identifies a submission for its Idempotency-Key: a digest of the resolved job spec."""
    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:32]


def _key_conflict(key_loc: Loc, job_id: str) -> ApiError:
    return invalid(key_loc, f"Idempotency-Key: already used for job {job_id} with a different request")
