"""Job operations behind the ``/v1/jobs`` routes (and the chat route, whose completions are jobs):
look up with ownership, view, result, round, cancel. Creating a job is
:mod:`mrsa.api.submission`'s, the one pipeline every endpoint submits through.

The API reads jobs through the engine's :class:`~mrsa.engine.job_service.JobService` (``deps.jobs``),
the same one the workers end jobs with; it has no task runner, so the API process can never start a
generation.
"""

from __future__ import annotations

from mrsa.api.auth import Principal
from mrsa.api.deps import ApiDeps
from mrsa.api.errors import ApiError
from mrsa.api.jobs.schemas import PROBLEM_PREVIEW_CHARS, JobLinks, JobProgress, JobView
from mrsa.domain import Event, Job, JobResult, JobStatus, RoundSummary
from mrsa.prices import priced

CANCEL_REASON = "cancelled through the API"


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
