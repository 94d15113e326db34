"""The two small protocols the engine runs on: ``JobStore`` (state) and ``TaskQueue`` (work).

Delivery semantics (documented, as arq does): **a task may run more than once.** A task is acked
only after its result is stored; a worker that dies leaves its tasks pending and another worker
reclaims them after an idle timeout. Every write is keyed deterministically (job, round, index,
chunk), so storing a candidate twice is a no-op, and the round advance is a compare-and-set on the
job's round pointer, so a redelivered completion never plans a round twice.

Implementations: :mod:`mrsa.store.memory` (in-process, what ``mrsa solve`` runs on) and
:mod:`mrsa.store.redis` (the service). Both pass the same contract tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pydantic import BaseModel

from mrsa.domain import Candidate, ChunkCheckpoint, Event, Job, JobResult, JobStatus, Task


class Delivery(BaseModel):
    """A task handed to a consumer; ``id`` is the queue's message id (acked by id)."""

    id: str
    task: Task
    deliveries: int = 1


class QueueStats(BaseModel):
    queued: int
    in_flight: int
    dead: int = 0


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

    async def reclaim(self, consumer: str, idle_ms: int, count: int) -> list[Delivery]:
        """Take over tasks whose consumer has been silent for ``idle_ms``.

        Tasks delivered more than the queue's maximum are moved to the dead-letter list instead.
        """
        ...

    async def stats(self) -> QueueStats: ...


class JobStore(Protocol):
    """Job state. Methods that also enqueue tasks do both atomically (one transaction in Redis)."""

    async def create_job(self, job: Job, tasks: Sequence[Task]) -> None:
        """Store a new job and enqueue its round-0 tasks."""
        ...

    async def get_job(self, job_id: str) -> Job | None: ...

    async def list_jobs(self, owner: str | None = None, limit: int = 100) -> list[Job]: ...

    async def mark_running(self, job_id: str) -> bool:
        """queued → running; ``True`` only for the caller that made the transition."""
        ...

    async def save_candidate(self, job_id: str, candidate: Candidate) -> int:
        """Store a candidate once (a duplicate is a no-op); return how many of its round are stored."""
        ...

    async def get_candidates(
        self, job_id: str, round_index: int, indices: Sequence[int] | None = None
    ) -> list[Candidate]:
        """Candidates of one round, ordered by index (only ``indices`` when given)."""
        ...

    async def advance_round(self, job_id: str, from_round: int, tasks: Sequence[Task]) -> bool:
        """Move the job's round pointer from ``from_round`` to ``from_round + 1`` and enqueue ``tasks``.

        Exactly one caller wins for a given ``from_round``; the others get ``False`` and enqueue
        nothing. Does nothing for a job in a terminal state.
        """
        ...

    async def finish_job(self, job_id: str, result: JobResult) -> bool:
        """Record the terminal state and result once; ``False`` when the job was already terminal."""
        ...

    async def get_result(self, job_id: str) -> JobResult | None: ...

    async def cancel_job(self, job_id: str, reason: str = "cancelled") -> bool:
        """Mark the job cancelled and drop its queued tasks; ``False`` when already terminal."""
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


TERMINAL = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})


class StoreUnavailable(Exception):
    """The store cannot be reached right now. A task that hits this is left pending (not acked, not
    failed) so it is retried after reclaim."""
