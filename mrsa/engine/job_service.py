"""The job service: submit a job, build its result, record its end (finish, fail), and read the
result back. It needs only a :class:`JobStore` — the API runs on it alone, the workers' task runner
(:mod:`mrsa.engine.runner`) uses it to end the jobs whose tasks it runs.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

from mrsa import telemetry
from mrsa.backends.base import BackendError
from mrsa.domain import (
    Candidate,
    CandidateSummary,
    EarlyStop,
    Event,
    IslandSummary,
    Job,
    JobResult,
    JobSpec,
    JobStatus,
    RoundSummary,
    RoundVotes,
    Usage,
)
from mrsa.engine.equivalence import Equivalence, shared_equivalence
from mrsa.engine.islands import island_members
from mrsa.engine.planning import round_islands, round_tasks, select_round
from mrsa.engine.round_votes import VoteKeeper, voter_groups
from mrsa.engine.selection import majority, tally, votes_among
from mrsa.store.base import JobStore


def new_job_id() -> str:
    return uuid.uuid4().hex[:16]


def summarise_round(
    index: int, candidates: Sequence[Candidate], votes: RoundVotes | None, islands: int = 1
) -> RoundSummary:
    """One round's usage, votes and candidates, the votes from its stored classes (``votes``: no
    comparison here); with ``islands`` > 1 also each island's votes."""
    usage = summaries = Usage()
    for c in candidates:
        usage = usage + c.usage
        summaries = summaries + c.summary_usage
    groups = voter_groups(candidates, votes)
    return RoundSummary(
        index=index,
        usage=usage,
        summary_usage=summaries,
        truncated=sum(1 for c in candidates if c.finish_reason == "length"),
        votes=tally(candidates, lambda _answers: groups),
        equivalence_timeouts=votes.timeouts if votes else 0,
        oversized_answers=votes.oversized if votes else 0,
        tallied=min(votes.tallied, len(candidates)) if votes else 0,
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
        islands=island_summaries(candidates, groups, islands) if islands > 1 else [],
    )


def island_summaries(
    candidates: Sequence[Candidate], groups: Sequence[Sequence[int]], islands: int
) -> list[IslandSummary]:
    """Per-island truncation, decode tokens and votes of one round split into ``islands``."""
    population = len(candidates)
    if not population or population % islands:
        return []  # an incomplete round (a cancelled job): no layout to speak of
    out = []
    for island in range(islands):
        members = island_members(population, islands, island)
        mine = [c for c in candidates if c.index in members]
        out.append(
            IslandSummary(
                island=island,
                first=members.start,
                size=len(members),
                truncated=sum(1 for c in mine if c.finish_reason == "length"),
                decode_tokens=sum(c.usage.decode_tokens for c in mine),
                votes=votes_among(candidates, groups, members),
            )
        )
    return out


class JobService:
    """Markovian RSA jobs in a :class:`JobStore`: everything about a job but running its tasks."""

    def __init__(
        self, store: JobStore, equivalence: Equivalence | None = None, *, clusters: bool = True
    ) -> None:
        """``clusters``: whether this process may compare answers (workers, the CLI). The API's
        does not: it reads the votes workers stored with each round, even when they lag."""
        self.store = store
        self.clusters = clusters
        self._equivalence = equivalence
        self._keeper: VoteKeeper | None = None

    @property
    def equivalence(self) -> Equivalence:
        """Answer clustering under a time limit (default: the process's shared one)."""
        if self._equivalence is None:
            self._equivalence = shared_equivalence()
        return self._equivalence

    async def tally(self, job_id: str, round_index: int, event: Event | None = None) -> RoundVotes:
        """Cluster the round's stored answers and store the classes with it (coalesced per round
        in this process), then ``event``: the worker that saves a candidate announces it so, the
        votes counting it stored first."""
        if self._keeper is None:
            self._keeper = VoteKeeper(self.store, self.equivalence)
        return await self._keeper.refresh(job_id, round_index, event)

    async def round_votes(
        self, job: Job, round_index: int, candidates: Sequence[Candidate]
    ) -> RoundVotes | None:
        """The round's stored classes; a process that clusters brings them up to ``candidates``
        first when they lag (a worker that died between saving a candidate and storing the votes,
        or two rounds completing at once)."""
        mine = self._keeper.stored(job.id, round_index) if self._keeper is not None else None
        if mine is not None and mine.tallied >= len(candidates):
            return mine  # this process stored them: no read
        stored = await self.store.get_round_votes(job.id, round_index)
        if not self.clusters or (stored is not None and stored.tallied >= len(candidates)):
            return stored
        return await self.tally(job.id, round_index)

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
        await self.create(job, max_active)
        return job

    async def create(self, job: Job, max_active: int | None = None) -> bool:
        """Store ``job`` and enqueue its round-0 tasks, as :meth:`submit`; ``True`` when this call
        created it, ``False`` when a job of its id already existed (then nothing was stored,
        enqueued or announced)."""
        created = await self.store.create_job(
            job, round_tasks(job.id, job.spec.params, 0), max_active=max_active
        )
        if created:
            await self.store.add_event(job.id, Event(type="status", job_id=job.id, status=JobStatus.queued))
        return created

    async def round_summaries(self, job: Job) -> list[RoundSummary]:
        """Summaries of the job's stored rounds, from round 0 up to the first one with nothing stored."""
        params = job.spec.params
        rounds = []
        for r in range(params.stages):  # round 0, then rounds 1..T
            cands = await self.store.get_candidates(job.id, r)
            if not cands:
                break
            votes = await self.round_votes(job, r, cands)
            rounds.append(summarise_round(r, cands, votes, round_islands(params, r)))
        return rounds

    async def build_result(
        self, job: Job, status: JobStatus, error: str | None = None, early_stop: EarlyStop | None = None
    ) -> JobResult:
        """The result of ``job`` from what is stored of it, as if it ended with ``status`` (after
        ``early_stop``'s round, when adaptive compute stopped it)."""
        params = job.spec.params
        warnings: list[str] = []
        usage = Usage()
        rounds = await self.round_summaries(job)
        for summary in rounds:
            usage = usage + summary.usage
            if summary.equivalence_timeouts:
                warnings.append(
                    f"round {summary.index}: {summary.equivalence_timeouts} distinct answer(s) could not be "
                    f"compared with math-verify within {self.equivalence.timeout_s:g}s; each is its own class "
                    "in the votes"
                )
        final = (
            rounds[-1]
            if rounds and len(rounds[-1].candidates) == params.stage_population(rounds[-1].index)
            else None
        )
        votes = final.votes if final else []
        answer = majority(votes)
        if params.selection == "aggregate" and early_stop is None:  # a stopped job answers by majority
            chosen = await self.store.get_candidates(job.id, select_round(params), [0])
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
            early_stop=early_stop,
            elapsed_s=round(time.time() - job.created_at, 3),
        )

    def last_round(self, job: Job) -> int:
        """The highest round number ``job`` stores candidates under: T, or T+1 for the final
        aggregation call of selection ``aggregate``."""
        params = job.spec.params
        return select_round(params) if params.selection == "aggregate" else params.rounds

    async def round_summary(self, job: Job, round_index: int) -> RoundSummary:
        """Usage, votes and candidates of one round as stored so far (a round still running has
        fewer than N); for an ended job, the round as its stored result has it."""
        if job.status.terminal:
            stored = await self.store.get_result(job.id)
            if stored is not None:
                for summary in stored.rounds:
                    if summary.index == round_index:
                        return summary
        candidates = await self.store.get_candidates(job.id, round_index)
        votes = await self.round_votes(job, round_index, candidates)
        return summarise_round(round_index, candidates, votes)

    async def result(self, job: Job) -> JobResult:
        """The stored result of a terminal ``job``; for one without (a cancelled job: only jobs that
        finish or fail record theirs) one built from what is stored."""
        stored = await self.store.get_result(job.id)
        return stored if stored is not None else await self.build_result(job, job.status, job.error)

    async def finish(
        self,
        job_id: str,
        status: JobStatus = JobStatus.succeeded,
        error: str | None = None,
        early_stop: EarlyStop | None = None,
    ) -> bool:
        """Build the result and record the terminal state once."""
        job = await self.store.get_job(job_id)
        if job is None or job.status.terminal:
            return False
        result = await self.build_result(job, status, error, early_stop)
        won = await self.store.finish_job(job_id, result)
        if won:
            telemetry.JOBS_FINISHED.labels(status.value).inc()
            await self.store.add_event(
                job_id, Event(type="done", job_id=job_id, status=status, answer=result.answer, error=error)
            )
        return won

    async def fail(self, job_id: str, error: BaseException | str) -> bool:
        reason = str(error) if isinstance(error, str | BackendError) else f"{type(error).__name__}: {error}"
        return await self.finish(job_id, JobStatus.failed, reason)
