"""``/v1/jobs``: submit, list, status, result, cancel, events and candidate inspection (the routes:
they validate, call :mod:`mrsa.api.submission` or :mod:`mrsa.api.jobs.operations`, and return)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from sse_starlette import EventSourceResponse

from mrsa.api.auth import Principal, authenticate
from mrsa.api.deps import ApiDeps, get_deps
from mrsa.api.errors import ApiError, invalid, responses
from mrsa.api.jobs import operations as jobs
from mrsa.api.jobs.events import EVENT_ID_PART_MAX, EVENT_ID_PATTERN, event_id_fits, job_events
from mrsa.api.jobs.schemas import JobList, JobRequest, JobView, SubmitResponse
from mrsa.api.streams import SlotEventSourceResponse
from mrsa.api.submission import Submission, prepare, submit
from mrsa.domain import Candidate, JobResult, RoundSummary

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=responses(401, 503))

JobId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$", description="Job id.")]
Auth = Annotated[Principal, Depends(authenticate)]
Deps = Annotated[ApiDeps, Depends(get_deps)]


@router.post(
    "",
    status_code=202,
    response_model=SubmitResponse,
    responses={**responses(400, 413, 422, 429), 200: {"model": SubmitResponse, "description": "Replay."}},
    summary="Submit a job",
)
async def submit_job(
    body: JobRequest,
    response: Response,
    principal: Auth,
    deps: Deps,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=200,
            pattern=r"^[\x21-\x7e]+$",
            description="Replaying a request with the same key (within 24 h) returns the same job.",
        ),
    ] = None,
) -> SubmitResponse:
    """Validate the job, check it fits the backend's context, and enqueue its round 0.

    202 with the job id and a ``Location`` header. With an ``Idempotency-Key`` seen before for the
    same request, the earlier job is returned instead (``replayed: true``)."""
    submission = Submission(body.problem, body.preset, body.params.as_dict(), body.model, endpoint="jobs")
    done = await submit(deps, principal, await prepare(deps, submission), idempotency_key)
    response.headers["Location"] = f"/v1/jobs/{done.job.id}"
    return SubmitResponse(
        id=done.job.id,
        status=done.job.status,
        replayed=done.replayed,
        warnings=done.job.warnings,
        links=jobs.links(done.job.id),
    )


def known_query(*names: str) -> Callable[[Request], None]:
    """A dependency refusing query parameters the route does not have (a typo is a 422, not ignored)."""

    def check(request: Request) -> None:
        unknown = sorted(set(request.query_params) - set(names))
        if unknown:
            raise invalid(("query", unknown[0]), f"{unknown[0]}: unknown query parameter", "extra_forbidden")

    return check


@router.get(
    "",
    response_model=JobList,
    summary="List your jobs",
    responses=responses(422),
    dependencies=[Depends(known_query("limit"))],
)
async def list_jobs(
    principal: Auth,
    deps: Deps,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many, newest first.")] = 100,
) -> JobList:
    owner = None if principal.sees_all else principal.owner
    found = await deps.store.list_jobs(owner=owner, limit=limit)
    return JobList(jobs=[await jobs.view(deps, j) for j in found])


@router.get("/{job_id}", response_model=JobView, summary="Status and progress", responses=responses(404, 422))
async def get_job(job_id: JobId, principal: Auth, deps: Deps) -> JobView:
    job = await jobs.owned_job(deps, principal, job_id)
    return await jobs.view(deps, job, with_progress=True)


@router.get(
    "/{job_id}/result",
    response_model=JobResult,
    summary="The result of a finished job",
    responses=responses(404, 409, 422),
)
async def get_result(job_id: JobId, principal: Auth, deps: Deps) -> JobResult:
    """The answer, votes, usage and per-round summaries; 409 while the job is still running."""
    job = await jobs.owned_job(deps, principal, job_id)
    return await jobs.result_of(deps, job)


@router.post(
    "/{job_id}/cancel",
    response_model=JobView,
    summary="Cancel a job",
    responses=responses(404, 409, 422),
)
async def cancel_job(job_id: JobId, principal: Auth, deps: Deps) -> JobView:
    """Stop a queued or running job: queued tasks are skipped, in-flight requests are cancelled by
    their workers. 409 when the job already succeeded or failed."""
    job = await jobs.owned_job(deps, principal, job_id)
    return await jobs.view(deps, await jobs.cancel(deps, job))


@router.get(
    "/{job_id}/events",
    summary="Progress as server-sent events",
    response_class=EventSourceResponse,
    responses={
        **responses(404, 422, 429),
        200: {
            "description": "`text/event-stream`: `id`, `event` (status, candidate, round, done) and "
            "`data` (an Event as JSON). Ends after the `done` event.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
    },
)
async def events(
    job_id: JobId,
    principal: Auth,
    deps: Deps,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            pattern=EVENT_ID_PATTERN,
            description="Resume after this event id (sent by EventSource clients on reconnect).",
        ),
    ] = None,
) -> EventSourceResponse:
    """Every event of the job from the start (or after ``Last-Event-ID``) until it is over.

    A key may hold ``MRSA_API_MAX_STREAMS_PER_KEY`` streams (and waiting chat completions) at once:
    429 above that; 503 when the whole API holds ``MRSA_API_MAX_STREAMS``."""
    if last_event_id is not None and not event_id_fits(last_event_id):
        raise invalid(
            ("header", "Last-Event-ID"),
            f"Last-Event-ID: each part of an event id is at most {EVENT_ID_PART_MAX}",
            "value_error",
        )
    await jobs.owned_job(deps, principal, job_id)
    slot = deps.slots.acquire(principal.owner)  # 429 over MRSA_API_MAX_STREAMS_PER_KEY
    stream = job_events(deps.store, job_id, last_event_id, deps.config.events_block_ms)
    return SlotEventSourceResponse(stream, ping=deps.config.ping_s, slot=slot)


RoundIndex = Annotated[int, Path(ge=0, le=1000, description="Round (0 … T; T+1: the final aggregation).")]


@router.get(
    "/{job_id}/rounds/{round_index}",
    response_model=RoundSummary,
    summary="One round: votes, usage and the lineage of its candidates",
    responses=responses(404, 422),
)
async def get_round(job_id: JobId, round_index: RoundIndex, principal: Auth, deps: Deps) -> RoundSummary:
    """The round's candidates stored so far (index, answer, finish reason, tokens and the
    ``parents`` in the previous round whose tails were in its prompt), their votes and usage.
    Readable while the job runs (a round in progress lists fewer than N candidates); 404 past the
    job's last round (T, or T+1 with selection ``aggregate``)."""
    job = await jobs.owned_job(deps, principal, job_id)
    return await jobs.round_of(deps, job, round_index)


@router.get(
    "/{job_id}/rounds/{round_index}/candidates/{index}",
    response_model=Candidate,
    summary="Inspect one candidate",
    responses=responses(404, 422),
)
async def get_candidate(
    job_id: JobId,
    round_index: RoundIndex,
    index: Annotated[int, Path(ge=0, le=100_000, description="Candidate index in the round (0 … N-1).")],
    principal: Auth,
    deps: Deps,
) -> Candidate:
    """A stored candidate with its prompt, reasoning, answer text, tail and usage."""
    job = await jobs.owned_job(deps, principal, job_id)
    found = await deps.store.get_candidates(job.id, round_index, [index])
    if not found:
        raise ApiError(404, f"job {job_id} has no candidate {index} in round {round_index} (yet)")
    return found[0]
