"""Job operations behind the routes: validate and enqueue, look up with ownership, view, cancel.

The API enqueues only. It submits and reads jobs through the engine's
:class:`~mrsa.engine.job_service.JobService` (``deps.jobs``), the same one the workers end jobs with;
it has no task runner, so the API process can never start a generation.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from mrsa.api.auth import Principal
from mrsa.api.deps import ApiDeps
from mrsa.api.errors import ApiError, from_validation_errors, invalid
from mrsa.api.schemas import PROBLEM_PREVIEW_CHARS, JobLinks, JobProgress, JobView
from mrsa.backends.base import BackendError
from mrsa.domain import Event, Job, JobResult, JobSpec, JobStatus, RoundSummary
from mrsa.engine.job_service import new_job_id
from mrsa.engine.limits import ContextBudgetError, check_context
from mrsa.engine.prompts import UnknownPromptSetError, check_prompt_set
from mrsa.params import DEFAULT_PRESET, RSAParams, UnknownPresetError, resolve_params
from mrsa.prices import priced
from mrsa.store.base import ActiveLimitReached

log = logging.getLogger("mrsa.api")

CANCEL_REASON = "cancelled through the API"


# -- validation ----------------------------------------------------------------------------------


def resolve(
    preset: str | None,
    overrides: dict[str, Any],
    loc: tuple[str, ...] = ("body", "params"),
    preset_loc: tuple[str, ...] = ("body", "preset"),
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


def check_problem_size(deps: ApiDeps, problem: str, loc: tuple[str | int, ...] = ("body", "problem")) -> None:
    size = len(problem.encode("utf-8"))
    limit = deps.config.max_problem_bytes
    if size > limit:
        raise invalid(loc, f"problem: {size} bytes is over the limit of {limit} bytes", "too_long")


async def check_budget(deps: ApiDeps, spec: JobSpec, loc: tuple[str, ...] = ("body", "params")) -> list[str]:
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


# -- submission ----------------------------------------------------------------------------------


@dataclass
class Submitted:
    job: Job
    replayed: bool


async def submit(
    deps: ApiDeps,
    principal: Principal,
    spec: JobSpec,
    idempotency_key: str | None = None,
    key_loc: tuple[str, ...] = ("header", "Idempotency-Key"),
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


def _key_conflict(key_loc: tuple[str, ...], job_id: str) -> ApiError:
    return invalid(key_loc, f"Idempotency-Key: already used for job {job_id} with a different request")


# -- lookup and views ----------------------------------------------------------------------------


async def owned_job(deps: ApiDeps, principal: Principal, job_id: str) -> Job:
    """The job, or 404 — also for another key's job, so ids cannot be probed."""
    job = await deps.store.get_job(job_id)
    if job is None or not principal.may_see(job.owner):
        raise ApiError(404, f"no job {job_id!r}")
    return job


def links(job_id: str) -> JobLinks:
    base = f"/v1/jobs/{job_id}"
    return JobLinks(job=base, result=f"{base}/result", events=f"{base}/events", cancel=f"{base}/cancel")


async def view(deps: ApiDeps, job: Job, *, with_progress: bool = False) -> JobView:
    params = job.spec.params
    done: int | None = None
    if with_progress and not job.status.terminal:
        done = len(await deps.store.get_candidates(job.id, job.round))
    problem = job.spec.problem
    return JobView(
        id=job.id,
        status=job.status,
        problem_preview=problem
        if len(problem) <= PROBLEM_PREVIEW_CHARS
        else problem[:PROBLEM_PREVIEW_CHARS] + "…",
        model=job.spec.model,
        preset=job.spec.preset,
        params=params,
        progress=JobProgress(
            round=job.round,
            rounds=params.rounds,
            population=params.stage_population(job.round),
            done=done,
        ),
        answer=job.answer,
        error=job.error,
        created_at=job.created_at,
        updated_at=job.updated_at,
        finished_at=job.finished_at,
        warnings=job.warnings,
        links=links(job.id),
    )


async def result_of(deps: ApiDeps, job: Job) -> JobResult:
    """The result of a terminal job (:meth:`~mrsa.engine.job_service.JobService.result`), priced when the
    API has a price table; 409 for one still running."""
    if not job.status.terminal:
        raise ApiError(
            409,
            f"job {job.id} is {job.status.value} (round {job.round}/{job.spec.params.rounds}); "
            "its result is not ready: follow its events or retry later",
        )
    return priced(await deps.jobs.result(job), deps.config.prices)


async def round_of(deps: ApiDeps, job: Job, round_index: int) -> RoundSummary:
    """One round's summary (:meth:`~mrsa.engine.job_service.JobService.round_summary`); 404 past the
    job's last round."""
    last = deps.jobs.last_round(job)
    if round_index > last:
        raise ApiError(404, f"job {job.id} has no round {round_index}: its rounds are 0 … {last}")
    return await deps.jobs.round_summary(job, round_index)


async def cancel(deps: ApiDeps, job: Job, reason: str = CANCEL_REASON) -> Job:
    """Cancel a job that is not finished; cancelling a cancelled job again is a no-op."""
    if not job.status.terminal and await deps.store.cancel_job(job.id, reason):
        await deps.store.add_event(
            job.id, Event(type="done", job_id=job.id, status=JobStatus.cancelled, error=reason)
        )
    current = await deps.store.get_job(job.id) or job
    if current.status != JobStatus.cancelled:
        raise ApiError(409, f"job {job.id} already {current.status.value}; it cannot be cancelled")
    return current
