"""``follow``: a job's events until it is over, the one definition every waiting reader uses."""

from __future__ import annotations

import asyncio

from mrsa.domain import Event, Job, JobSpec, JobStatus
from mrsa.engine.follow import follow
from mrsa.engine.job_service import JobService
from mrsa.params import RSAParams
from mrsa.store.base import JobStore
from mrsa.store.memory import MemoryStore

TIMEOUT = 10.0
SPEC = JobSpec(problem="What is 6*7?", params=RSAParams(population=2, subset=1, rounds=0, budget=8, tail=4))


async def collect(store: JobStore, job_id: str, after: str | None = None) -> list[tuple[str, Event]]:
    async def run() -> list[tuple[str, Event]]:
        return [item async for item in follow(store, job_id, after, block_ms=50)]

    return await asyncio.wait_for(run(), TIMEOUT)


async def test_ends_after_the_done_event_and_resumes_after_an_id() -> None:
    store = MemoryStore()
    jobs = JobService(store)
    job = await jobs.submit(SPEC)
    await store.add_event(job.id, Event(type="round", job_id=job.id, round=1))
    await jobs.fail(job.id, "stopped by the test")
    await store.add_event(job.id, Event(type="round", job_id=job.id, round=2))  # after done: not read
    got = await collect(store, job.id)
    assert [e.type for _, e in got] == ["status", "round", "done"]
    assert got[-1][1].status == JobStatus.failed
    resumed = await collect(store, job.id, after=got[0][0])
    assert resumed == got[1:]


async def test_waits_for_events_written_while_following() -> None:
    store = MemoryStore()
    jobs = JobService(store)
    job = await jobs.submit(SPEC)
    reader = asyncio.create_task(collect(store, job.id))
    await asyncio.sleep(0.2)  # several empty reads of a running job: it keeps waiting
    assert not reader.done()
    await jobs.finish(job.id)
    assert [e.type for _, e in await reader] == ["status", "done"]


async def test_a_terminal_job_without_done_event_ends_once_nothing_is_left() -> None:
    store = MemoryStore()
    job = await JobService(store).submit(SPEC)
    assert await store.cancel_job(job.id, "cancelled in the store alone")  # no done event
    assert [e.type for _, e in await collect(store, job.id)] == ["status"]


class LateDone(MemoryStore):
    """Writes the job's done event just after a reader saw the terminal state, as the engine does
    (it records the terminal state first, then the event)."""

    wrote = False

    async def get_job(self, job_id: str) -> Job | None:
        job = await super().get_job(job_id)
        if job is not None and job.status.terminal and not self.wrote:
            self.wrote = True
            await self.add_event(job_id, Event(type="done", job_id=job_id, status=job.status))
        return job


async def test_reads_once_more_after_the_terminal_state() -> None:
    store = LateDone()
    job = await JobService(store).submit(SPEC)
    assert await store.cancel_job(job.id, "cancelled")
    got = await collect(store, job.id)
    assert [e.type for _, e in got] == ["status", "done"]
