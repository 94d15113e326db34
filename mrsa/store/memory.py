"""The in-memory :class:`~mrsa.store.base.Store` for ``mrsa solve``, ``mrsa bench`` and tests.

Single event loop, no persistence. It keeps the same semantics as the Redis implementation
(idempotent writes, compare-and-set round advance, pending tasks, reclaim after idle, dead letters)
so the engine cannot tell them apart and the same contract tests run on both. The queue is a FIFO
of tasks with a pending list, like a Redis Stream with one consumer group.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter, deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from mrsa.domain import Candidate, ChunkCheckpoint, Event, Job, JobResult, JobStatus, RoundVotes, Task
from mrsa.store.base import (
    ActiveLimitReached,
    Delivery,
    IdempotencyClaim,
    QueueStats,
    ReclaimResult,
    TaskContext,
)


@dataclass
class _Pending:
    consumer: str
    delivery: Delivery
    last_seen: float


@dataclass
class _JobState:
    job: Job
    candidates: dict[tuple[int, int], Candidate] = field(default_factory=dict)
    checkpoints: dict[tuple[int, int], ChunkCheckpoint] = field(default_factory=dict)
    released: set[tuple[int, int]] = field(default_factory=set)  # (round, index) tasks enqueued
    result: JobResult | None = None
    votes: dict[int, RoundVotes] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)


def _round_size(st: _JobState, round_index: int) -> int:
    """How many candidates of ``round_index`` are stored."""
    return sum(1 for (r, _) in st.candidates if r == round_index)


class MemoryStore:
    """Job state in a dict and its task queue in a deque, in one object."""

    def __init__(self, max_deliveries: int = 5) -> None:
        self.max_deliveries = max_deliveries
        self._ids = itertools.count(1)
        self._ready: deque[Delivery] = deque()
        self._pending: dict[str, _Pending] = {}
        self._dead: list[Delivery] = []
        self._cond = asyncio.Condition()
        self._jobs: dict[str, _JobState] = {}
        self._idempotency: dict[tuple[str, str], tuple[IdempotencyClaim, float]] = {}
        self._events_changed = asyncio.Condition()

    # -- lifecycle --------------------------------------------------------------------------------

    async def ping(self) -> bool:
        return True  # in the process: it is there as long as the process is

    async def aclose(self) -> None:
        """Nothing to release: the state goes with the object."""

    async def dead_letters(self, limit: int = 1000) -> list[Delivery]:
        return [d.model_copy() for d in self._dead[:limit]]

    async def forget_consumer(self, consumer: str) -> bool:
        # Consumers exist only through their pending tasks here: one without any is forgotten.
        return not any(p.consumer == consumer for p in self._pending.values())

    async def forget(self, job_id: str) -> None:
        state = self._jobs.get(job_id)
        if state is not None:
            state.candidates.clear()
            state.checkpoints.clear()
            state.released.clear()
            state.votes.clear()
            state.result = None

    # -- tasks ------------------------------------------------------------------------------------

    async def enqueue(self, tasks: Sequence[Task]) -> None:
        """Append tasks to the queue (what the job methods call; Redis does it in their scripts)."""
        async with self._cond:
            for task in tasks:
                self._ready.append(Delivery(id=str(next(self._ids)), task=task, deliveries=0))
            self._cond.notify_all()

    async def take(self, consumer: str, count: int, block_ms: int) -> list[Delivery]:
        if count <= 0:
            return []
        async with self._cond:
            if not self._ready and block_ms > 0:
                try:
                    async with asyncio.timeout(block_ms / 1000):  # not wait_for: see read_events
                        await self._cond.wait_for(lambda: bool(self._ready))
                except TimeoutError:
                    return []
            out: list[Delivery] = []
            while self._ready and len(out) < count:
                d = self._ready.popleft()
                d = d.model_copy(update={"deliveries": d.deliveries + 1})
                self._pending[d.id] = _Pending(consumer, d, time.monotonic())
                out.append(d)
            return out

    async def ack(self, delivery: Delivery) -> None:
        self._pending.pop(delivery.id, None)

    async def heartbeat(self, consumer: str, deliveries: Sequence[Delivery]) -> None:
        now = time.monotonic()
        for d in deliveries:
            p = self._pending.get(d.id)
            if p is not None and p.consumer == consumer:
                p.last_seen = now

    async def reclaim(self, consumer: str, idle_ms: int, count: int) -> ReclaimResult:
        now = time.monotonic()
        out = ReclaimResult()
        for key, p in list(self._pending.items()):
            if len(out.deliveries) >= count:
                break
            if (now - p.last_seen) * 1000 < idle_ms:
                continue
            if p.delivery.deliveries >= self.max_deliveries:  # pending until moved to the dead letters
                self._pending[key] = _Pending(consumer, p.delivery, now)
                out.dead.append(p.delivery)
                continue
            d = p.delivery.model_copy(update={"deliveries": p.delivery.deliveries + 1})
            self._pending[key] = _Pending(consumer, d, now)
            out.deliveries.append(d)
        return out

    async def move_to_dead_letters(self, delivery: Delivery) -> bool:
        p = self._pending.pop(delivery.id, None)
        if p is None:
            return False
        self._dead.append(p.delivery)
        return True

    async def release(self, consumer: str, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            p = self._pending.get(d.id)
            if p is not None and p.consumer == consumer:
                p.last_seen = float("-inf")

    async def drop_job(self, job_id: str) -> int:
        """Remove a job's queued tasks (cancellation)."""
        async with self._cond:
            before = len(self._ready)
            self._ready = deque(d for d in self._ready if d.task.job_id != job_id)
            return before - len(self._ready)

    async def stats(self, idle_ms: int | None = None) -> QueueStats:
        now = time.monotonic()
        stale = (
            sum(1 for p in self._pending.values() if (now - p.last_seen) * 1000 >= idle_ms)
            if idle_ms is not None
            else 0
        )
        return QueueStats(
            queued=len(self._ready), in_flight=len(self._pending), dead=len(self._dead), reclaimable=stale
        )

    # -- jobs -------------------------------------------------------------------------------------
    def _state(self, job_id: str) -> _JobState:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise KeyError(f"unknown job {job_id!r}") from None

    async def create_job(
        self,
        job: Job,
        tasks: Sequence[Task],
        max_active: int | None = None,
        stored: Sequence[Candidate] = (),
    ) -> bool:
        if job.id in self._jobs:
            return False
        if max_active is not None:  # nothing awaited between the check and the insert: atomic
            active = sum(
                1 for s in self._jobs.values() if s.job.owner == job.owner and not s.job.status.terminal
            )
            if active >= max_active:
                raise ActiveLimitReached(active, max_active)
        state = _JobState(job=job.model_copy(deep=True))
        for cand in stored:
            state.candidates.setdefault((cand.round, cand.index), cand.model_copy(deep=True))
        self._jobs[job.id] = state
        await self.enqueue(tasks)
        return True

    async def get_job(self, job_id: str) -> Job | None:
        st = self._jobs.get(job_id)
        return st.job.model_copy(deep=True) if st else None

    async def load_task(self, task: Task) -> TaskContext | None:
        st = self._jobs.get(task.job_id)
        if st is None:
            return None
        stored = st.candidates.get((task.round, task.index))
        parents = (
            []
            if stored is not None or task.round == 0
            else [
                st.candidates[(task.round - 1, p)]
                for p in task.parents
                if (task.round - 1, p) in st.candidates
            ]
        )
        return TaskContext(
            job=st.job.model_copy(deep=True),
            stored=stored.model_copy(deep=True) if stored is not None else None,
            parents=[p.model_copy(deep=True) for p in parents],
        )

    async def get_statuses(self, job_ids: Sequence[str]) -> dict[str, JobStatus | None]:
        return {j: (st.job.status if (st := self._jobs.get(j)) else None) for j in job_ids}

    async def list_jobs(self, owner: str | None = None, limit: int = 100) -> list[Job]:
        jobs = [s.job for s in self._jobs.values() if owner is None or s.job.owner == owner]
        jobs.sort(key=lambda j: j.created_at, reverse=True)
        return [j.model_copy(deep=True) for j in jobs[:limit]]

    async def count_active(self, owner: str) -> int:
        return sum(1 for s in self._jobs.values() if s.job.owner == owner and not s.job.status.terminal)

    async def count_by_status(self) -> dict[JobStatus, int]:
        tally = Counter(s.job.status for s in self._jobs.values())
        return {status: tally.get(status, 0) for status in JobStatus}

    async def claim_idempotency_key(
        self, owner: str, key: str, job_id: str, fingerprint: str, ttl_s: int
    ) -> IdempotencyClaim | None:
        # Nothing is awaited between the read and the write: atomic in the event loop.
        now = time.monotonic()
        existing = self._idempotency.get((owner, key))
        if existing is not None and existing[1] > now:
            return existing[0]
        self._idempotency[(owner, key)] = (IdempotencyClaim(job_id, fingerprint), now + ttl_s)
        return None

    async def mark_running(self, job_id: str) -> bool:
        st = self._state(job_id)
        if st.job.status != JobStatus.queued:
            return False
        st.job.status = JobStatus.running
        st.job.updated_at = time.time()
        return True

    async def save_candidate(self, job_id: str, candidate: Candidate, release: Sequence[Task] = ()) -> int:
        st = self._state(job_id)
        st.candidates.setdefault((candidate.round, candidate.index), candidate.model_copy(deep=True))
        st.job.updated_at = time.time()
        ready = [
            t
            for t in release
            if (t.round, t.index) not in st.released
            and all((t.round - 1, p) in st.candidates for p in t.parents)
        ]
        if ready and not st.job.status.terminal:
            st.released.update((t.round, t.index) for t in ready)
            await self.enqueue(ready)
        return _round_size(st, candidate.round)

    async def get_candidates(
        self,
        job_id: str,
        round_index: int,
        indices: Sequence[int] | None = None,
        *,
        exclude: Collection[int] = (),
    ) -> list[Candidate]:
        st = self._state(job_id)
        if indices is None:
            skip = set(exclude)
            keys = sorted(i for (r, i) in st.candidates if r == round_index and i not in skip)
        else:
            keys = [i for i in indices if (round_index, i) in st.candidates]
        return [st.candidates[(round_index, i)].model_copy(deep=True) for i in keys]

    async def save_round_votes(self, job_id: str, votes: RoundVotes, event: Event | None = None) -> bool:
        st = self._state(job_id)
        stored = st.votes.get(votes.round)
        saved = stored is None or stored.tallied < votes.tallied
        if saved:
            st.votes[votes.round] = votes.model_copy(deep=True)
        if event is not None:
            await self.add_event(job_id, event)
        return saved

    async def get_round_votes(self, job_id: str, round_index: int) -> RoundVotes | None:
        stored = self._state(job_id).votes.get(round_index)
        return None if stored is None else stored.model_copy(deep=True)

    async def complete_rounds(
        self,
        job_id: str,
        population: int,
        last_round: int,
        final_tasks: Sequence[Task] = (),
        last_population: int | None = None,
    ) -> tuple[int, int]:
        st = self._state(job_id)
        old = pointer = st.job.round
        if st.job.status.terminal:
            return old, old
        last_size = population if last_population is None else last_population
        while 0 <= pointer <= last_round and _round_size(st, pointer) >= (
            last_size if pointer == last_round else population
        ):
            pointer += 1
        if pointer != old:
            st.job.round = pointer
            st.job.updated_at = time.time()
            if pointer > last_round:
                await self.enqueue(final_tasks)
        return old, pointer

    async def finish_job(self, job_id: str, result: JobResult) -> bool:
        st = self._state(job_id)
        if st.job.status.terminal:
            return False
        st.job.status = result.status
        st.job.error = result.error
        st.job.answer = result.answer
        st.job.finished_at = st.job.updated_at = time.time()
        st.result = result.model_copy(deep=True)
        return True

    async def get_result(self, job_id: str) -> JobResult | None:
        st = self._jobs.get(job_id)
        return st.result.model_copy(deep=True) if st and st.result else None

    async def cancel_job(self, job_id: str, reason: str = "cancelled") -> bool:
        st = self._state(job_id)
        if st.job.status.terminal:
            return False
        st.job.status = JobStatus.cancelled
        st.job.error = reason
        st.job.finished_at = st.job.updated_at = time.time()
        await self.drop_job(job_id)
        return True

    async def save_checkpoint(self, job_id: str, round_index: int, index: int, cp: ChunkCheckpoint) -> None:
        st = self._state(job_id)
        old = st.checkpoints.get((round_index, index))
        if old is None or old.chunks < cp.chunks:
            st.checkpoints[(round_index, index)] = cp.model_copy(deep=True)

    async def load_checkpoint(self, job_id: str, round_index: int, index: int) -> ChunkCheckpoint | None:
        cp = self._state(job_id).checkpoints.get((round_index, index))
        return cp.model_copy(deep=True) if cp else None

    async def add_event(self, job_id: str, event: Event) -> None:
        self._state(job_id).events.append(event)
        async with self._events_changed:
            self._events_changed.notify_all()

    async def read_events(
        self, job_id: str, after: str | None, block_ms: int, count: int = 100
    ) -> list[tuple[str, Event]]:
        st = self._state(job_id)
        start = int(after) if after else 0

        def ready() -> bool:
            return len(st.events) > start

        if not ready() and block_ms > 0:
            async with self._events_changed:
                try:
                    # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation
                    # that lands as the wait completes, and a cancelled `mrsa solve` would hang.
                    async with asyncio.timeout(block_ms / 1000):
                        await self._events_changed.wait_for(ready)
                except TimeoutError:
                    return []
        return [(str(i + 1), e) for i, e in enumerate(st.events[start : start + count], start=start)]
