"""The final stage, tail summaries and the Delethink head through the worker path on a real
redis-server (tasks through the stream, candidates and checkpoints in hashes, the Lua round
advance): the same requests and the same result as on the memory store."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from mrsa.domain import JobResult, JobStatus
from mrsa.store.base import Store
from mrsa.store.memory import MemoryStore
from mrsa.store.redis import RedisStore
from tests.engine.test_engine import fast_options, make_spec
from tests.engine.test_summaries import summary_script
from tests.fakes import FakeBackend
from workers.inprocess import InProcessRunner

pytestmark = pytest.mark.redis


KNOBS = {
    "population": 4,
    "subset": 2,
    "rounds": 2,
    "budget": 40,
    "chunk": 16,
    "carryover": 4,
    "head": 3,
    "tail_mode": "summarize",
    "summary_budget": 30,
    "final_population": 2,
    "final_budget": 24,
    "final_temperature": 0.5,
    "selection": "aggregate",
}


async def run(store: Store) -> tuple[JobResult, list[dict[str, Any]]]:
    backend = FakeBackend(summary_script, split_reasoning=True, supports_prefill=False)
    async with InProcessRunner(backend, store, capacity=3, options=fast_options()) as runner:
        result = await asyncio.wait_for(runner.solve(make_spec(**KNOBS)), 60)
    # The job id is random and the order of calls depends on timing: compare the requests as a
    # set, sorted by their JSON (dicts do not compare).
    # The lineage key starts with the job id too: compare what follows it (round and candidate).
    requests = [
        r.model_dump(exclude={"tag", "lineage"})
        | {"at": sorted((k, v) for k, v in r.tag.items() if k != "job")}
        | {"lineage": (r.lineage or "").removeprefix(str(r.tag.get("job", "")))}
        for r in backend.requests
    ]
    requests.sort(key=lambda r: json.dumps(r, sort_keys=True))
    return result, requests


async def test_redis_runs_the_same_job_as_memory(redis_store: RedisStore) -> None:
    on_redis, redis_requests = await run(redis_store)
    on_memory, memory_requests = await run(MemoryStore())
    assert on_redis.status == on_memory.status == JobStatus.succeeded
    assert redis_requests == memory_requests
    kinds = [dict(r["at"]).get("kind") for r in redis_requests]
    assert kinds.count("summary") == 4 + 4 + 2 and kinds.count("select") == 1
    assert any(dict(r["at"])["chunk"] > 0 for r in redis_requests)  # chunked continuations ran
    assert [len(r.candidates) for r in on_redis.rounds] == [4, 4, 2]
    assert on_redis.usage == on_memory.usage
    assert on_redis.rounds[0].summary_usage.requests == 4
    assert on_redis.answer == on_memory.answer
