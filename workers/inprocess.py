"""Run jobs inside the current process: a :class:`Worker` on a store (memory by default), plus
helpers to submit jobs and wait for their results. ``mrsa solve`` and in-process ``mrsa bench`` use
it; on a Redis store it also works as one worker among others."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable

from mrsa.backends.base import Backend
from mrsa.domain import Event, Job, JobResult, JobSpec
from mrsa.engine.follow import follow
from mrsa.engine.job_service import JobService
from mrsa.engine.runner import TaskRunner
from mrsa.store.base import Store
from mrsa.store.memory import MemoryStore
from workers.loop import Worker, WorkerOptions

EventCallback = Callable[[Event], Awaitable[None] | None]
IDLE_BLOCK_MS = 50
WAIT_BLOCK_MS = 500


class InProcessRunner:
    """A job service plus one in-process worker, for the lifetime of an ``async with`` block."""

    def __init__(
        self,
        backend: Backend,
        store: Store | None = None,
        capacity: int = 1,
        options: WorkerOptions | None = None,
    ) -> None:
        store = MemoryStore() if store is None else store  # the memory store needs no closing
        self.store = store
        self.jobs = JobService(store)
        # An idle in-process worker polls a memory queue at almost no cost; a short block lets it
        # see the stop at once (the default 1 s added up to a second to every `mrsa solve`).
        opts = dataclasses.replace(options or WorkerOptions(block_ms=IDLE_BLOCK_MS), capacity=capacity)
        self.worker = Worker(TaskRunner(self.jobs, backend), store, opts)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> InProcessRunner:
        self._task = asyncio.create_task(self.worker.run(self._stop))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if exc and exc[0] is not None:
            # Ctrl-C or an error: nobody waits for the results, so abort in-flight requests
            # instead of draining them for the worker's grace period.
            self.worker.force_stop()
        if self._task is not None:
            if exc and exc[0] is not None:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def submit(self, spec: JobSpec, job_id: str | None = None) -> Job:
        return await self.jobs.submit(spec, job_id=job_id)

    async def wait(self, job_id: str, on_event: EventCallback | None = None) -> JobResult:
        """Follow the job's events until it is over; return its result. A worker that crashes
        meanwhile raises its error here instead of leaving the caller waiting forever."""
        follower = asyncio.create_task(self._follow(job_id, on_event))
        try:
            if self._task is not None:
                await asyncio.wait({follower, self._task}, return_when=asyncio.FIRST_COMPLETED)
                if self._task.done() and not follower.done():
                    self._task.result()  # surface a crashed worker
            await follower
        finally:
            follower.cancel()
        job = await self.store.get_job(job_id)
        if job is None:
            raise LookupError(f"job {job_id} is not in the store")
        return await self.jobs.result(job)

    async def _follow(self, job_id: str, on_event: EventCallback | None) -> None:
        async for _, event in follow(self.store, job_id, block_ms=WAIT_BLOCK_MS):
            if on_event is not None:
                maybe = on_event(event)
                if maybe is not None:
                    await maybe

    async def solve(self, spec: JobSpec, on_event: EventCallback | None = None) -> JobResult:
        job = await self.submit(spec)
        try:
            return await self.wait(job.id, on_event)
        except asyncio.CancelledError:
            await self.store.cancel_job(job.id, "cancelled by the user")
            raise
