"""The event-driven job engine (docs/design.md#rounds-without-a-coordinator): no coordinator process.

A job is stored and its round-0 tasks enqueued. Whoever runs a task generates that candidate and
stores it; the same atomic store write enqueues every next-round task whose K parents are now all
stored. Parent subsets are planned from the job's seed, not from results, so a round-t+1 candidate
starts as soon as its own parents exist instead of waiting for the slowest candidate of round t:
the prompts and results are exactly those of a round-by-round run, only sooner. An adaptive job
(``stop_agreement``, ``token_budget``) is the exception: it plans round t+1 only once round t is
complete and :func:`mrsa.engine.adaptive.decide` has said to go on, so a stop saves the whole round. The worker that
completes a round moves the job's round pointer (over every complete round: they can finish out
of order) and, after round T, selects the answer and finishes the job (through the
:class:`~mrsa.engine.job_service.JobService`). Releases are recorded in the store, so a redelivered
completion never enqueues a task twice.
"""

from __future__ import annotations

from mrsa import telemetry
from mrsa.backends.base import Backend
from mrsa.domain import Candidate, Event, Job, JobStatus, Task
from mrsa.engine.adaptive import decide
from mrsa.engine.generation import generate_candidate, ordered_parents
from mrsa.engine.job_service import JobService
from mrsa.engine.planning import release_tasks, round_tasks, selection_task
from mrsa.store.base import JobStore


class TaskRunner:
    """Runs tasks of Markovian RSA jobs against one backend; ends their jobs through ``jobs``."""

    def __init__(self, jobs: JobService, backend: Backend) -> None:
        self.jobs = jobs
        self.backend = backend

    @property
    def store(self) -> JobStore:
        return self.jobs.store

    async def run_task(self, task: Task) -> None:
        """Run one task to completion (idempotent: a redelivered task finds its result stored)."""
        ctx = await self.store.load_task(task)  # job, stored result or parents: one round trip
        if ctx is None or ctx.job.status.terminal:
            return
        job = ctx.job
        if job.status == JobStatus.queued and await self.store.mark_running(job.id):
            await self.store.add_event(job.id, Event(type="status", job_id=job.id, status=JobStatus.running))
        if task.kind == "select":
            # Selection ``aggregate``: one more aggregation call at a lower temperature, then the end.
            if ctx.stored is None:
                cand = await generate_candidate(
                    self.backend, self.store, job, task, ordered_parents(task, ctx.parents)
                )
                await self.store.save_candidate(job.id, cand)
            await self.jobs.tally(job.id, task.round)
            await self.jobs.finish(job.id)
            return
        params = job.spec.params
        children = release_tasks(job.id, params, task)
        if ctx.stored is not None:  # redelivered after its result was stored: release its children
            cand = ctx.stored
            count = await self.store.save_candidate(job.id, cand, children)
            await self.jobs.tally(job.id, task.round)
        else:
            parents = ordered_parents(task, ctx.parents)
            cand = await generate_candidate(
                self.backend, self.store, job, task, parents, self._priority(task)
            )
            count = await self.store.save_candidate(job.id, cand, children)
            telemetry.CANDIDATES.labels(cand.finish_reason).inc()
            telemetry.DECODE_TOKENS.inc(cand.usage.decode_tokens)
            telemetry.PROMPT_TOKENS.inc(cand.usage.prompt_tokens)
            # Votes before the event: a reader the event sends to the round finds them counting this
            # candidate (the API never clusters: mrsa.engine.round_votes). One store call for both.
            await self.jobs.tally(
                job.id,
                task.round,
                Event(
                    type="candidate",
                    job_id=job.id,
                    round=task.round,
                    index=task.index,
                    answer=cand.answer,
                    finish_reason=cand.finish_reason,
                    decode_tokens=cand.usage.decode_tokens,
                    parents=cand.parents,
                    done=count,
                ),
            )
        if count >= params.stage_population(task.round):
            await self._complete_rounds(job, cand)

    @staticmethod
    def _priority(task: Task) -> int:
        """Later rounds first: they unblock a job's progress (used where the server enables it)."""
        return -task.round

    async def _complete_rounds(self, job: Job, last: Candidate) -> None:
        """A round is complete (``last`` is the candidate that completed it, or its redelivery): move the
        job's round pointer over every complete round (rounds can finish out of order), emit their
        events, and after the last one select or finish. An adaptive job plans its next round here."""
        params = job.spec.params
        final = [selection_task(job.id, params)] if params.selection == "aggregate" else []
        before, after = await self.store.complete_rounds(
            job.id,
            params.population,
            params.rounds,
            final,
            last_population=params.stage_population(params.rounds),
        )
        adaptive = params.adaptive and last.round == after - 1 and after <= params.rounds
        for done in range(max(before, 0), after):
            telemetry.ROUNDS_COMPLETED.inc()
            if done < params.rounds and not adaptive:  # an adaptive job announces a round once it plans it
                await self.store.add_event(job.id, Event(type="round", job_id=job.id, round=done + 1))
        if adaptive:
            await self._stop_or_plan(job, last, after, announce=before < after)
        elif after > params.rounds and params.selection != "aggregate":
            await self.jobs.finish(job.id)  # also when a redelivered task finds the pointer moved: once

    async def _stop_or_plan(self, job: Job, last: Candidate, next_round: int, announce: bool) -> None:
        """Adaptive compute after round ``next_round - 1``: finish the job early (converged, or its
        token budget) or enqueue the next round. The enqueue rides on re-saving ``last`` (a no-op
        write) so it is the store's release-once step: a redelivered completion that decides again
        never enqueues the round twice. Only the caller that moved the round pointer (``announce``)
        emits the round's event."""
        stop = decide(job.spec.params, await self.jobs.round_summaries(job))
        if stop is not None:
            telemetry.EARLY_STOPS.labels(stop.reason).inc()
            await self.jobs.finish(job.id, early_stop=stop)
            return
        await self.store.save_candidate(job.id, last, round_tasks(job.id, job.spec.params, next_round))
        if announce:
            await self.store.add_event(job.id, Event(type="round", job_id=job.id, round=next_round))
