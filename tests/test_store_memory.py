"""The store contract on the in-memory implementation, plus what only the memory store offers."""

from __future__ import annotations

import pytest

from mrsa.domain import Candidate, JobStatus
from mrsa.store.memory import MemoryJobStore, MemoryTaskQueue, open_memory
from tests.store_contract import MAX_DELIVERIES, StoreContract, StorePair, make_job, take_all, tasks_of


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def pair(self) -> StorePair:
        return open_memory(max_deliveries=MAX_DELIVERIES)


@pytest.fixture
def memory() -> tuple[MemoryJobStore, MemoryTaskQueue]:
    return open_memory(max_deliveries=MAX_DELIVERIES)


async def test_drop_job_removes_only_that_jobs_queued_tasks(
    memory: tuple[MemoryJobStore, MemoryTaskQueue],
) -> None:
    store, queue = memory
    await store.create_job(make_job("a"), tasks_of("a", n=3))
    await store.create_job(make_job("b"), tasks_of("b", n=2))
    (in_flight,) = await queue.take("c1", 1, block_ms=0)
    assert in_flight.task.job_id == "a"
    assert await queue.drop_job("a") == 2
    assert await queue.drop_job("a") == 0
    stats = await queue.stats()
    assert (stats.queued, stats.in_flight) == (2, 1)  # in-flight tasks are left to their worker
    assert {t.job_id for t in await take_all(queue)} == {"b"}


async def test_dead_letters_are_inspectable(memory: tuple[MemoryJobStore, MemoryTaskQueue]) -> None:
    store, queue = memory
    await store.create_job(make_job("a"), tasks_of("a", n=1))
    await queue.take("c1", 1, block_ms=0)
    dead = []
    for _ in range(MAX_DELIVERIES):
        dead += (await queue.reclaim("c2", idle_ms=0, count=1)).dead
    assert await queue.move_to_dead_letters(dead[0]) is True
    assert [d.task.key for d in queue.dead_letters] == ["a:candidate:0:0"]
    assert queue.dead_letters[0].deliveries == MAX_DELIVERIES


async def test_returned_objects_are_copies(memory: tuple[MemoryJobStore, MemoryTaskQueue]) -> None:
    store, _ = memory
    job = make_job("a")
    await store.create_job(job, [])
    job.status = JobStatus.failed  # the caller's object is not the stored one
    got = await store.get_job("a")
    assert got is not None and got.status == JobStatus.queued
    got.round = 9
    assert (await store.get_job("a")).round == 0  # type: ignore[union-attr]
    cand = Candidate(round=0, index=0, answer="1")
    await store.save_candidate("a", cand)
    cand.answer = "2"
    (stored,) = await store.get_candidates("a", 0)
    assert stored.answer == "1"
    stored.answer = "3"
    assert (await store.get_candidates("a", 0))[0].answer == "1"


async def test_unknown_job_raises_key_error(memory: tuple[MemoryJobStore, MemoryTaskQueue]) -> None:
    store, _ = memory
    with pytest.raises(KeyError, match="unknown job"):
        await store.save_candidate("missing", Candidate(round=0, index=0))
    assert await store.get_result("missing") is None
