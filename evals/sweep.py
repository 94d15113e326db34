"""Running a sweep: every unit (configuration × problem × seed) is one Markovian RSA job on one
in-process runner, so the worker keeps ``capacity`` requests in flight across problems and the
backend stays full. Candidates are graded and appended to the record log as they finish.

Resuming: units whose N·(T+1) candidates are all recorded are skipped. An unfinished unit's job
is created with its recorded candidates already stored (``create_job(..., stored=...)``: the
tails the next round needs, written before any task is enqueued); the engine finds them and
generates only the missing ones. The job's seed, subsets and request seeds are deterministic, so
the rebuilt job makes the same choices.

The store is memory, or Redis (``mrsa bench --redis``): then this process is one worker among any
``mrsa worker`` processes on the same Redis, and they share the sweep's tasks. A unit's candidates
are dropped from the store (:meth:`~mrsa.store.base.Store.forget`) once they are recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from evals.configs import SweepConfig
from evals.datasets import Problem
from evals.failures import FailureLog
from evals.grading import Grader, boxed_answer
from evals.records import CandidateRecord, RecordKey, RecordLog, UnitKey
from mrsa.backends.base import Backend
from mrsa.domain import Candidate, Event, Job, JobSpec, JobStatus
from mrsa.engine.limits import check_context
from mrsa.engine.planning import round_tasks
from mrsa.store.base import Store
from workers.inprocess import InProcessRunner


@dataclass(frozen=True)
class Unit:
    key: UnitKey
    config: SweepConfig
    problem: Problem

    @property
    def total(self) -> int:
        """Candidates of a finished unit: N per generation stage (final_population in the last)."""
        return self.config.params.total_candidates

    def job_id(self, namespace: str) -> str:
        """Deterministic within a sweep session (``namespace``: run id and session number), so
        sessions and run folders sharing one Redis never collide."""
        digest = hashlib.blake2b(repr(tuple(self.key)).encode(), digest_size=8).hexdigest()
        return f"bench-{namespace}-{digest}" if namespace else f"bench-{digest}"

    def spec(self, model: str | None) -> JobSpec:
        params = self.config.params.model_copy(update={"seed": self.key.seed})
        return JobSpec(problem=self.problem.problem, params=params, model=model)


def plan_units(
    configs: Sequence[SweepConfig], problems: dict[str, list[Problem]], seeds: Sequence[int]
) -> list[Unit]:
    """Seeds outermost, so a sweep cut short has every problem at its first seeds."""
    return [
        Unit(UnitKey(config.id, dataset, problem.id, seed), config, problem)
        for seed in seeds
        for dataset, items in problems.items()
        for problem in items
        for config in configs
    ]


async def check_contexts(backend: Backend, units: Sequence[Unit]) -> None:
    """Refuse (``ContextBudgetError``) before generating when some configuration cannot fit the
    model's context with the longest problem of a dataset."""
    longest: dict[tuple[str, str], Unit] = {}
    for unit in units:
        k = (unit.config.id, unit.key.dataset)
        if k not in longest or len(unit.problem.problem) > len(longest[k].problem.problem):
            longest[k] = unit
    for unit in longest.values():
        await check_context(backend, unit.spec(None))


@dataclass
class SweepStats:
    """Live counters for the progress display."""

    units_total: int = 0
    units_done: int = 0
    units_failed: int = 0
    candidates_total: int = 0
    candidates_done: int = 0
    candidates_new: int = 0
    correct_new: int = 0
    decode_tokens_new: int = 0
    started: float = field(default_factory=time.monotonic)
    errors: list[str] = field(default_factory=list)
    session_started_at: float | None = None  # the manifest session this process opened

    @property
    def elapsed(self) -> float:
        return max(1e-6, time.monotonic() - self.started)

    @property
    def tokens_per_s(self) -> float:
        return self.decode_tokens_new / self.elapsed

    @property
    def eta_s(self) -> float | None:
        """Remaining candidates at this session's candidate rate (``None`` before the first)."""
        if self.candidates_new == 0:
            return None
        remaining = max(0, self.candidates_total - self.candidates_done)
        return remaining * self.elapsed / self.candidates_new


class RecordWriter:
    """Grades finished candidates in batches (whatever has queued up) and appends their records."""

    def __init__(self, log: RecordLog, grader: Grader, golds: dict[tuple[str, str], str], stats: SweepStats):
        self.log = log
        self.grader = grader
        self.golds = golds
        self.stats = stats
        self.written: set[RecordKey] = set()
        self._queue: asyncio.Queue[tuple[UnitKey, Candidate, float | None] | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def put(self, unit: UnitKey, cand: Candidate, job_started_at: float | None = None) -> None:
        """Queue ``cand`` of ``unit``; ``job_started_at``: when this session created its job."""
        if self._task is not None and self._task.done():
            self._task.result()  # surface a crashed writer
        self._queue.put_nowait((unit, cand, job_started_at))

    async def close(self) -> None:
        self._queue.put_nowait(None)
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            items = [b for b in batch if b is not None]
            if items:
                await self._write(items)
            if None in batch:
                return

    async def _write(self, items: list[tuple[UnitKey, Candidate, float | None]]) -> None:
        fresh: list[tuple[UnitKey, Candidate, str | None, float | None]] = []
        for unit, cand, started in items:
            key: RecordKey = (*unit, cand.round, cand.index)
            if key not in self.written:
                self.written.add(key)
                fresh.append((unit, cand, boxed_answer(cand.content, cand.trace), started))
        if not fresh:
            return
        pairs = [(self.golds[(u.dataset, u.problem)], boxed) for u, _, boxed, _ in fresh]
        grades = await asyncio.to_thread(self.grader.grade_many, pairs)
        records = [
            CandidateRecord.build(u, c, boxed, g, started)
            for (u, c, boxed, started), g in zip(fresh, grades, strict=True)
        ]
        await asyncio.to_thread(self.log.append, records)
        self.stats.candidates_done += len(records)
        self.stats.candidates_new += len(records)
        self.stats.correct_new += sum(1 for r in records if r.correct)
        self.stats.decode_tokens_new += sum(r.decode_tokens for r in records)


async def _run_unit(
    runner: InProcessRunner,
    store: Store,
    unit: Unit,
    job_id: str,
    seeded: list[CandidateRecord],
    writer: RecordWriter,
    model: str | None,
    stats: SweepStats,
    failures: FailureLog | None,
) -> None:
    spec = unit.spec(model)
    started = time.time()
    # The job starts with what is already recorded: the engine skips stored candidates and plans
    # later rounds as usual.
    await store.create_job(
        Job(id=job_id, spec=spec, owner="bench"),
        round_tasks(job_id, spec.params, 0),
        stored=[record.to_candidate() for record in seeded],
    )

    async def on_event(event: Event) -> None:
        if event.type == "candidate" and event.round is not None and event.index is not None:
            for cand in await store.get_candidates(job_id, event.round, [event.index]):
                writer.put(unit.key, cand, started)

    try:
        result = await runner.wait(job_id, on_event)
        seen = {(r.round, r.index) for r in seeded}
        for r in range(spec.params.stages):
            for cand in await store.get_candidates(job_id, r):
                if (cand.round, cand.index) not in seen:
                    writer.put(unit.key, cand, started)  # the writer drops what it already has
        if result.status == JobStatus.succeeded:
            stats.units_done += 1
        else:
            stats.units_failed += 1
            stats.errors.append(f"{unit.key.config} {unit.key.problem} seed {unit.key.seed}: {result.error}")
            if failures is not None:
                await asyncio.to_thread(failures.append, unit.key, str(result.error))
    finally:
        await store.forget(job_id)  # recorded (or the sweep is interrupted): the log has them


async def run_sweep(
    backend: Backend,
    units: Sequence[Unit],
    log: RecordLog,
    grader: Grader,
    golds: dict[tuple[str, str], str],
    stats: SweepStats,
    *,
    store: Store,
    capacity: int,
    max_jobs: int | None = None,
    model: str | None = None,
    namespace: str = "",
    stale_namespaces: Sequence[str] = (),
    failures: FailureLog | None = None,
) -> None:
    """Run every unit not yet complete in ``log``; records are appended as candidates finish.

    ``stale_namespaces``: earlier sessions of this sweep on the same (persistent) store, whose
    unfinished jobs are cancelled so workers drop them. ``failures``: where units whose job failed
    are logged (the report flags them)."""
    log.repair()
    existing = log.load()
    by_unit: dict[UnitKey, list[CandidateRecord]] = {}
    for record in existing.values():
        by_unit.setdefault(record.unit, []).append(record)
    todo = [u for u in units if len(by_unit.get(u.key, [])) < u.total]
    stats.units_total = len(units)
    stats.units_done = len(units) - len(todo)
    stats.candidates_total = sum(u.total for u in units)
    stats.candidates_done = sum(min(u.total, len(by_unit.get(u.key, []))) for u in units)
    stats.started = time.monotonic()
    if not todo:
        return
    if max_jobs is None:
        # A job has at most N candidates in flight, fewer while its last ones finish (there is no
        # round barrier): jobs enough for twice the capacity keep the backend busy as jobs end.
        population = min(u.config.params.population for u in todo)
        max_jobs = max(2, -(-2 * capacity // population) + 1)
    for unit in todo:
        for old in stale_namespaces:
            with contextlib.suppress(KeyError):
                await store.cancel_job(unit.job_id(old), "superseded by a resumed sweep")
    writer = RecordWriter(log, grader, golds, stats)
    writer.written.update(existing)
    slots = asyncio.Semaphore(max_jobs)
    active: set[str] = set()
    async with InProcessRunner(backend, store, capacity=capacity) as runner:
        writer.start()

        async def one(unit: Unit) -> None:
            job_id = unit.job_id(namespace)
            async with slots:
                active.add(job_id)
                try:
                    await _run_unit(
                        runner, store, unit, job_id, by_unit.get(unit.key, []), writer, model, stats, failures
                    )
                finally:
                    active.discard(job_id)

        try:
            async with asyncio.TaskGroup() as group:  # one unit crashing cancels the others
                for unit in todo:
                    group.create_task(one(unit))
        finally:
            # Interrupted: cancel the unfinished jobs, so the worker drops their requests at once
            # instead of draining them, and keep (grade and append) what already finished.
            for job_id in list(active):
                await store.cancel_job(job_id, "sweep interrupted")
            await writer.close()
