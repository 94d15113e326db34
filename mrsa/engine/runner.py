"""The event-driven job engine (DESIGN §2): no coordinator process.

A job is stored and its round-0 tasks enqueued. Whoever runs a task generates that candidate and
stores it; the same atomic store write enqueues every next-round task whose K parents are now all
stored. Parent subsets are planned from the job's seed, not from results, so a round-t+1 candidate
starts as soon as its own parents exist instead of waiting for the slowest candidate of round t:
the prompts and results are exactly those of a round-by-round run, only sooner. The worker that
completes a round moves the job's round pointer (over every complete round: they can finish out
of order) and, after round T, selects the answer and finishes the job. Releases are recorded in
the store, so a redelivered completion never enqueues a task twice.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

from mrsa import metrics
from mrsa.backends.base import Backend, BackendError, Message
from mrsa.domain import (
    Candidate,
    CandidateSummary,
    Event,
    Job,
    JobResult,
    JobSpec,
    JobStatus,
    RoundSummary,
    Task,
    Usage,
)
from mrsa.engine import prompts
from mrsa.engine.answers import extract_answer
from mrsa.engine.equivalence import Equivalence, shared_equivalence
from mrsa.engine.generation import _request, generate_candidate, ordered_parents
from mrsa.engine.planning import release_tasks, request_seed, round_tasks, selection_subset
from mrsa.engine.selection import majority, tally_bounded
from mrsa.store.base import JobStore, TaskContext


def new_job_id() -> str:
    return uuid.uuid4().hex[:16]


async def summarise_round(
    index: int, candidates: Sequence[Candidate], equivalence: Equivalence
) -> RoundSummary:
    usage = Usage()
    for c in candidates:
        usage = usage + c.usage
    votes, clustering = await tally_bounded(candidates, equivalence)
    return RoundSummary(
        index=index,
        usage=usage,
        truncated=sum(1 for c in candidates if c.finish_reason == "length"),
        votes=votes,
        equivalence_timeouts=clustering.timeouts,
        oversized_answers=clustering.oversized,
        candidates=[
            CandidateSummary(
                index=c.index,
                answer=c.answer,
                finish_reason=c.finish_reason,
                decode_tokens=c.usage.decode_tokens,
                prompt_tokens=c.usage.prompt_tokens,
                tail_tokens=c.tail_tokens,
                source_tokens=c.source_tokens,
                parents=c.parents,
            )
            for c in candidates
        ],
    )


class Engine:
    """Runs tasks of Markovian RSA jobs against one backend, with state in a :class:`JobStore`."""

    def __init__(self, store: JobStore, backend: Backend, equivalence: Equivalence | None = None) -> None:
        self.store = store
        self.backend = backend
        self._equivalence = equivalence

    @property
    def equivalence(self) -> Equivalence:
        """Answer clustering under a time limit (default: the process's shared one)."""
        if self._equivalence is None:
            self._equivalence = shared_equivalence()
        return self._equivalence

    # -- submission --------------------------------------------------------------------------------

    async def submit(
        self,
        spec: JobSpec,
        owner: str = "local",
        job_id: str | None = None,
        warnings: Sequence[str] = (),
        max_active: int | None = None,
    ) -> Job:
        """Store a job and enqueue its round-0 tasks (raises ActiveLimitReached when ``owner``
        already has ``max_active`` jobs in flight)."""
        job = Job(id=job_id or new_job_id(), spec=spec, owner=owner, warnings=list(warnings))
        await self.store.create_job(job, round_tasks(job.id, spec.params, 0), max_active=max_active)
        await self.store.add_event(job.id, Event(type="status", job_id=job.id, status=JobStatus.queued))
        return job

    # -- tasks -------------------------------------------------------------------------------------

    async def run_task(self, task: Task) -> None:
        """Run one task to completion (idempotent: a redelivered task finds its result stored)."""
        ctx = await self.store.load_task(task)  # job, stored result or parents: one round trip
        if ctx is None or ctx.job.status.terminal:
            return
        job = ctx.job
        if job.status == JobStatus.queued and await self.store.mark_running(job.id):
            await self.store.add_event(job.id, Event(type="status", job_id=job.id, status=JobStatus.running))
        if task.kind == "select":
            await self._run_select(job, task, ctx)
            return
        params = job.spec.params
        children = release_tasks(job.id, params, task)
        if ctx.stored is not None:  # redelivered after its result was stored: release its children
            count = await self.store.save_candidate(job.id, ctx.stored, children)
        else:
            parents = ordered_parents(task, ctx.parents)
            priority = self._priority(task)
            cand = await generate_candidate(
                self.backend,
                self.store,
                job.id,
                job.spec.problem,
                params,
                task,
                parents,
                priority,
                model=job.spec.model,
            )
            count = await self.store.save_candidate(job.id, cand, children)
            metrics.CANDIDATES.labels(cand.finish_reason).inc()
            metrics.DECODE_TOKENS.inc(cand.usage.decode_tokens)
            metrics.PROMPT_TOKENS.inc(cand.usage.prompt_tokens)
            await self.store.add_event(
                job.id,
                Event(
                    type="candidate",
                    job_id=job.id,
                    round=task.round,
                    index=task.index,
                    answer=cand.answer,
                    finish_reason=cand.finish_reason,
                    decode_tokens=cand.usage.decode_tokens,
                    done=count,
                ),
            )
        if count >= params.population:
            await self._complete_rounds(job)

    @staticmethod
    def _priority(task: Task) -> int:
        """Later rounds first: they unblock a job's progress (used where the server enables it)."""
        return -task.round

    async def _complete_rounds(self, job: Job) -> None:
        """A round is complete: move the job's round pointer over every complete round (rounds can
        finish out of order), emit their events, and after the last one select or finish."""
        params = job.spec.params
        final: list[Task] = []
        if params.selection == "aggregate":
            final = [
                Task(
                    job_id=job.id,
                    kind="select",
                    round=params.rounds + 1,
                    index=0,
                    parents=selection_subset(params),
                )
            ]
        before, after = await self.store.complete_rounds(job.id, params.population, params.rounds, final)
        for done in range(max(before, 0), after):
            metrics.ROUNDS_COMPLETED.inc()
            if done < params.rounds:
                await self.store.add_event(job.id, Event(type="round", job_id=job.id, round=done + 1))
        if after > params.rounds and params.selection != "aggregate":
            await self.finish(job.id)  # also when a redelivered task finds the pointer moved: once

    async def _run_select(self, job: Job, task: Task, ctx: TaskContext) -> None:
        """Selection ``aggregate``: one more aggregation call at a lower temperature."""
        params = job.spec.params
        if ctx.stored is None:
            parents = ordered_parents(task, ctx.parents)
            prompt = prompts.aggregation_prompt(params.prompts, job.spec.problem, [p.tail for p in parents])
            tag: dict[str, str | int] = {
                "job": job.id,
                "round": task.round,
                "index": 0,
                "chunk": 0,
                "kind": "select",
            }
            req = _request(
                params,
                [Message(role="user", content=prompt)],
                params.budget,
                request_seed(params.seed, task.round, 0),
                tag,
                temperature=params.aggregate_temperature,
                model=job.spec.model,
            )
            result = (await self.backend.generate(req))[0]
            cand = Candidate(
                round=task.round,
                index=0,
                parents=list(task.parents),
                prompt=prompt,
                reasoning=result.reasoning,
                content=result.content,
                trace=result.trace,
                finish_reason=result.finish_reason,
                answer=extract_answer(result.content, result.trace, result.finish_reason == "stop"),
                usage=Usage(
                    decode_tokens=result.completion_tokens, prompt_tokens=result.prompt_tokens, requests=1
                ),
            )
            await self.store.save_candidate(job.id, cand)
        await self.finish(job.id)

    # -- results -----------------------------------------------------------------------------------

    async def build_result(self, job: Job, status: JobStatus, error: str | None = None) -> JobResult:
        params = job.spec.params
        rounds = []
        warnings: list[str] = []
        usage = Usage()
        for r in range(params.rounds + 1):
            cands = await self.store.get_candidates(job.id, r)
            if not cands:
                break
            summary = await summarise_round(r, cands, self.equivalence)
            usage = usage + summary.usage
            rounds.append(summary)
            if summary.equivalence_timeouts:
                warnings.append(
                    f"round {r}: {summary.equivalence_timeouts} distinct answer(s) could not be compared "
                    f"with math-verify within {self.equivalence.timeout_s:g}s; each is its own class "
                    "in the votes"
                )
        final = rounds[-1] if rounds and len(rounds[-1].candidates) == params.population else None
        votes = final.votes if final else []
        answer = majority(votes)
        if params.selection == "aggregate":
            chosen = await self.store.get_candidates(job.id, params.rounds + 1, [0])
            if chosen:
                usage = usage + chosen[0].usage
                answer = chosen[0].answer or answer
        return JobResult(
            job_id=job.id,
            status=status,
            answer=answer if status == JobStatus.succeeded else None,
            selection=params.selection,
            error=error,
            params=params,
            model=job.spec.model,
            usage=usage,
            votes=votes,
            answers=[c.answer for c in final.candidates] if final else [],
            warnings=warnings,
            rounds=rounds,
            elapsed_s=round(time.time() - job.created_at, 3),
        )

    async def finish(
        self, job_id: str, status: JobStatus = JobStatus.succeeded, error: str | None = None
    ) -> bool:
        """Build the result and record the terminal state once."""
        job = await self.store.get_job(job_id)
        if job is None or job.status.terminal:
            return False
        result = await self.build_result(job, status, error)
        won = await self.store.finish_job(job_id, result)
        if won:
            metrics.JOBS_FINISHED.labels(status.value).inc()
            await self.store.add_event(
                job_id, Event(type="done", job_id=job_id, status=status, answer=result.answer, error=error)
            )
        return won

    async def fail(self, job_id: str, error: BaseException | str) -> bool:
        reason = str(error) if isinstance(error, str | BackendError) else f"{type(error).__name__}: {error}"
        return await self.finish(job_id, JobStatus.failed, reason)
