"""The store contract on the in-memory implementation, plus what only the memory store offers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from mrsa.domain import Candidate, JobStatus
from mrsa.store.memory import MemoryStore
from mrsa.store.opening import open_store
from tests.store_contract import MAX_DELIVERIES, SETTINGS, StoreContract, make_job, take_all, tasks_of


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    async with open_store(SETTINGS.model_copy(update={"redis_url": None})) as opened:
        assert isinstance(opened, MemoryStore)
        yield opened


class TestMemoryStore(StoreContract):
    """The contract on the module's ``store`` fixture."""


async def test_drop_job_removes_only_that_jobs_queued_tasks(store: MemoryStore) -> None:
    await store.create_job(make_job("a"), tasks_of("a", n=3))
    await store.create_job(make_job("b"), tasks_of("b", n=2))
    (in_flight,) = await store.take("c1", 1, block_ms=0)
    assert in_flight.task.job_id == "a"
    assert await store.drop_job("a") == 2
    assert await store.drop_job("a") == 0
    stats = await store.stats()
    assert (stats.queued, stats.in_flight) == (2, 1)  # in-flight tasks are left to their worker
    assert {t.job_id for t in await take_all(store)} == {"b"}


async def test_dead_letters_are_inspectable(store: MemoryStore) -> None:
    await store.create_job(make_job("a"), tasks_of("a", n=1))
    await store.take("c1", 1, block_ms=0)
    dead = []
    for _ in range(MAX_DELIVERIES):
        dead += (await store.reclaim("c2", idle_ms=0, count=1)).dead
    assert await store.move_to_dead_letters(dead[0]) is True
    letters = await store.dead_letters()
    assert [d.task.key for d in letters] == ["a:candidate:0:0"]
    assert letters[0].deliveries == MAX_DELIVERIES


async def test_forget_drops_the_candidates(store: MemoryStore) -> None:
    """What the sweep relies on: a long sweep does not keep every finished job's traces."""
    await store.create_job(make_job("a"), [])
    await store.save_candidate("a", Candidate(round=0, index=0, answer="1"))
    await store.forget("a")
    assert await store.get_candidates("a", 0) == []
    assert await store.get_job("a") is not None


async def test_returned_objects_are_copies(store: MemoryStore) -> None:
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


async def test_unknown_job_raises_key_error(store: MemoryStore) -> None:
    with pytest.raises(KeyError, match="unknown job"):
        await store.save_candidate("missing", Candidate(round=0, index=0))
    assert await store.get_result("missing") is None
