"""The two small protocols the engine runs on, ``JobStore`` (state) and ``TaskQueue`` (work), and
``Store``: both in one object, plus its lifecycle (what the API, the workers and the sweep need).

A job store enqueues tasks itself (creating a job enqueues its round 0, storing a candidate releases
its ready children), so the two are one unit: each implementation is one class implementing
:class:`Store`, opened by :func:`mrsa.store.opening.open_store` and passed wherever a ``JobStore``
or a ``TaskQueue`` is asked for.

Delivery semantics (documented, as arq does): **a task may run more than once.** A task is acked
only after its result is stored; a worker that dies leaves its tasks pending and another worker
reclaims them after an idle timeout. Every write is keyed deterministically (job, round, index,
chunk), so storing a candidate twice is a no-op, and the round advance is a compare-and-set on the
job's round pointer, so a redelivered completion never plans a round twice. A next-round task is
released (enqueued) atomically with the write of its last parent, at most once.

Cancellation marks the job terminal. Its queued tasks may be dropped (memory) or still delivered
(Redis): the engine returns early for a task of a terminal job and the worker acks it, so either
way no backend request is made for it.

A task delivered the queue's maximum number of times (its workers kept dying on it) is not run
again: :meth:`TaskQueue.reclaim` reports it as dead, the worker fails its job with a clear reason
and then moves it to the dead-letter list (:meth:`TaskQueue.move_to_dead_letters`). Until then it
stays pending, so a worker that dies between the two steps leaves it to the next reclaim, which
reports it again: a job is never left running with its last task gone.

Implementations: :mod:`mrsa.store.memory` (in-process, what ``mrsa solve`` runs on) and
:mod:`mrsa.store.redis` (the service). Both pass the same contract tests (``tests/store_contract.py``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import NamedTuple, Protocol

from pydantic import BaseModel, Field

from mrsa.domain import Candidate, ChunkCheckpoint, Event, Job, JobResult, JobStatus, RoundVotes, Task


class Delivery(BaseModel):
    """A task handed to a consumer; ``id`` is the queue's message id (acked by id)."""

    id: str
    task: Task
    deliveries: int = 1


class QueueStats(BaseModel):
    queued: int = Field(description="Tasks waiting to be taken.")
    in_flight: int = Field(description="Tasks taken and not yet acked (all consumers).")
    dead: int = Field(0, description="Tasks in the dead-letter list.")
    reclaimable: int = Field(
        0, description="In-flight tasks silent for at least the ``idle_ms`` asked about."
    )


class ReclaimResult(BaseModel):
    """What :meth:`TaskQueue.reclaim` did: tasks now owned by the caller, and tasks delivered too often."""

    deliveries: list[Delivery] = Field(default_factory=list)
    dead: list[Delivery] = Field(
        default_factory=list,
        description="Delivered too often: fail their jobs, then move them to the dead-letter list.",
    )


class TaskContext(BaseModel):
    """What running one task needs from the store, read in one round trip."""

    job: Job
    stored: Candidate | None = Field(None, description="The task's candidate, when a run already stored it.")
    parents: list[Candidate] = Field(
        default_factory=list,
        description="The stored parents the task names, in its order (missing ones left out).",
    )


class TaskQueue(Protocol):
    """At-least-once task delivery to named consumers."""

    async def take(self, consumer: str, count: int, block_ms: int) -> list[Delivery]:
        """Up to ``count`` new tasks for ``consumer``; waits up to ``block_ms`` when none is ready."""
        ...

    async def ack(self, delivery: Delivery) -> None:
        """The task's result is stored: forget it."""
        ...

    async def heartbeat(self, consumer: str, deliveries: Sequence[Delivery]) -> None:
        """The consumer is still working on these: reset their idle time so nobody reclaims them."""
        ...

    async def reclaim(self, consumer: str, idle_ms: int, count: int) -> ReclaimResult:
        """Take over up to ``count`` tasks whose consumer has been silent for ``idle_ms``.

        A task already delivered the queue's maximum number of times is returned in ``dead``
        instead (its ``deliveries`` is how often it was delivered). It is not delivered again, and
        it stays pending, owned by the caller and reported again by a later reclaim once idle,
        until :meth:`move_to_dead_letters` moves it.
        """
        ...

    async def move_to_dead_letters(self, delivery: Delivery) -> bool:
        """Move a task that :meth:`reclaim` reported dead to the dead-letter list (call it once its
        job is failed). ``True`` when this call moved it, ``False`` when it had been moved already."""
        ...

    async def release(self, consumer: str, deliveries: Sequence[Delivery]) -> None:
        """Give back tasks this consumer will not finish (graceful stop): reclaimable at once."""
        ...

    async def stats(self, idle_ms: int | None = None) -> QueueStats:
        """Queue sizes; ``reclaimable`` counts in-flight tasks silent for ``idle_ms`` (0 when None)."""
        ...


class JobStore(Protocol):
    """Job state. Methods that also enqueue tasks do both atomically (one transaction in Redis)."""

    async def create_job(
        self,
        job: Job,
        tasks: Sequence[Task],
        max_active: int | None = None,
        stored: Sequence[Candidate] = (),
    ) -> bool:
        """Store a new job and enqueue its round-0 tasks; ``True`` when this call created it,
        ``False`` when a job of that id already existed (a second create of one id is a no-op).

        With ``max_active``, raise :class:`ActiveLimitReached` instead when the owner already has
        that many jobs not terminal — checked and added in one atomic step, so concurrent
        submissions cannot overshoot the limit.

        ``stored``: candidates the job already has (a resumed sweep rebuilds a job from its
        records). They are written with the job, in the same atomic step and before any task is
        enqueued, so a worker finds them stored and generates only the missing ones."""
        ...

    async def get_job(self, job_id: str) -> Job | None: ...

    async def load_task(self, task: Task) -> TaskContext | None:
        """The task's job, its candidate if already stored and (when not) its parents; ``None``
        for an unknown job. One round trip in Redis, where a candidate costs a handful."""
        ...

    async def get_statuses(self, job_ids: Sequence[str]) -> dict[str, JobStatus | None]:
        """The status of each job (``None`` for an unknown one), in one round trip: workers poll
        the jobs of their in-flight tasks for cancellation every second."""
        ...

    async def list_jobs(self, owner: str | None = None, limit: int = 100) -> list[Job]:
        """Jobs (of ``owner`` when given), newest first."""
        ...

    async def count_active(self, owner: str) -> int:
        """How many of ``owner``'s jobs are not terminal (queued or running)."""
        ...

    async def count_by_status(self) -> dict[JobStatus, int]:
        """How many jobs the store holds in each status (every job, not a sample; finished jobs
        until their retention ends)."""
        ...

    async def claim_idempotency_key(
        self, owner: str, key: str, job_id: str, fingerprint: str, ttl_s: int
    ) -> IdempotencyClaim | None:
        """Record that ``owner``'s ``key`` made ``job_id`` from the request ``fingerprint`` (for
        ``ttl_s`` seconds).

        Returns the claim recorded earlier when the key was already used (and records nothing),
        else ``None``. Atomic: of concurrent claims of one key exactly one gets ``None``, and every
        other one gets that winner's job id and fingerprint.
        """
        ...

    async def mark_running(self, job_id: str) -> bool:
        """queued → running; ``True`` only for the caller that made the transition."""
        ...

    async def save_candidate(self, job_id: str, candidate: Candidate, release: Sequence[Task] = ()) -> int:
        """Store a candidate once (a duplicate is a no-op); return how many of its round are stored.

        ``release``: tasks of the next round that name this candidate as a parent. Each one whose
        parents are now all stored is enqueued, once per job whatever the redeliveries, in the same
        atomic step as the write (nothing is released for a job in a terminal state). A candidate
        thus starts as soon as its own parents exist, not when its whole round has finished.
        """
        ...

    async def get_candidates(
        self,
        job_id: str,
        round_index: int,
        indices: Sequence[int] | None = None,
        *,
        exclude: Collection[int] = (),
    ) -> list[Candidate]:
        """Candidates of one round, ordered by index (only ``indices`` when given; without
        ``indices``, all but those in ``exclude``: a worker clustering a round again reads only the
        candidates it has not read yet)."""
        ...

    async def save_round_votes(self, job_id: str, votes: RoundVotes, event: Event | None = None) -> bool:
        """Store a round's clustered answers unless the stored ones already cover as many candidates
        (several workers may cluster the same round at once: the newest state wins, whatever order
        their writes land in). ``True`` when written. A write to a finished job inherits its TTL.

        ``event``: then append it to the job's events (whether or not the votes were written), in
        the same step: the worker that saved a candidate announces it with the votes that count it
        (one round trip instead of two)."""
        ...

    async def get_round_votes(self, job_id: str, round_index: int) -> RoundVotes | None:
        """The round's stored clustered answers, ``None`` before any."""
        ...

    async def complete_rounds(
        self,
        job_id: str,
        population: int,
        last_round: int,
        final_tasks: Sequence[Task] = (),
        last_population: int | None = None,
    ) -> tuple[int, int]:
        """Move the job's round pointer past every round that has ``population`` candidates stored
        (``last_round``: ``last_population`` when given, the last stage's own size), in order;
        enqueue ``final_tasks`` when it moves past ``last_round``. Returns the pointer
        (before, after). Rounds can complete out of order (a round's candidates start when their
        own parents are stored), so the pointer only ever moves over complete rounds, and whoever
        moves it emits the round events. Does nothing for a job in a terminal state.
        """
        ...

    async def finish_job(self, job_id: str, result: JobResult) -> bool:
        """Record the terminal state and result once; ``False`` when the job was already terminal."""
        ...

    async def get_result(self, job_id: str) -> JobResult | None: ...

    async def cancel_job(self, job_id: str, reason: str = "cancelled") -> bool:
        """Mark the job cancelled; ``False`` when already terminal.

        Its queued tasks are dropped or, where the queue cannot drop them cheaply (Redis), delivered
        and skipped: see the module docstring."""
        ...

    async def save_checkpoint(
        self, job_id: str, round_index: int, index: int, cp: ChunkCheckpoint
    ) -> None: ...

    async def load_checkpoint(self, job_id: str, round_index: int, index: int) -> ChunkCheckpoint | None: ...

    async def add_event(self, job_id: str, event: Event) -> None: ...

    async def read_events(
        self, job_id: str, after: str | None, block_ms: int, count: int = 100
    ) -> list[tuple[str, Event]]:
        """Events after the id ``after`` (all when ``None``), waiting up to ``block_ms`` for one."""
        ...


class Store(JobStore, TaskQueue, Protocol):
    """Job state and its task queue as one object, with what its owners need besides."""

    async def ping(self) -> bool:
        """Whether the store answers (readiness checks); never raises."""
        ...

    async def aclose(self) -> None:
        """Release the store's connections (:func:`~mrsa.store.opening.open_store` calls it)."""
        ...

    async def dead_letters(self, limit: int = 1000) -> list[Delivery]:
        """The dead-letter list, oldest first, at most ``limit`` (for inspection)."""
        ...

    async def forget_consumer(self, consumer: str) -> bool:
        """Forget a stopped consumer unless it still holds tasks (they stay reclaimable): ``True``
        when it is forgotten. Workers call it on a clean exit, so a queue does not collect one
        consumer per restart."""
        ...

    async def forget(self, job_id: str) -> None:
        """The caller keeps this job's candidates elsewhere (the sweep's record log, once the job is
        over): the store may drop its candidates, checkpoints and result before its retention ends.
        The job itself stays readable, so a task still unwinding finds it. The memory store drops
        them at once (a long sweep would hold every trace otherwise); Redis leaves them to the
        retention TTL that every finished job's keys already have."""
        ...


class IdempotencyClaim(NamedTuple):
    """What an Idempotency-Key was first used for: the job id it claimed and a fingerprint of the
    request (``None`` for a claim stored before fingerprints were: compare the job's spec)."""

    job_id: str
    fingerprint: str | None


TERMINAL = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})


class StoreUnavailable(Exception):
    """The store cannot be reached right now. A task that hits this is left pending (not acked, not
    failed) so it is retried after reclaim."""


class ActiveLimitReached(Exception):
    """``create_job(..., max_active=n)``: the owner already has ``active`` (≥ n) jobs in flight."""

    def __init__(self, active: int, limit: int) -> None:
        super().__init__(f"{active} jobs in flight (limit {limit})")
        self.active = active
        self.limit = limit
