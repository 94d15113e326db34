"""Idempotency-Key under concurrency: many clients send the same key at once, with different
bodies and the same body. Whatever the interleaving, exactly one request makes the job (202,
``replayed: false``), every request with that body gets that job (``replayed: true``), and every
request with another body gets a 422 naming the key — never a 202 with someone else's job.

Against the real service (``mrsa serve`` with a real ``redis-server``), round after round: before
the claim carried the request's fingerprint and the create said whether it made the job, a loser
got ``202 replayed: false`` with the winner's job id in about one run of eight."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mrsa.api.app import create_app
from mrsa.api.deps import ApiConfig, ApiDeps
from mrsa.cli.settings import Settings
from mrsa.servers.server_process import free_port
from mrsa.store.memory import MemoryStore
from testkit.processes import child_processes, http_ok
from tests.plugins.redis_server import RedisServer

pytestmark = pytest.mark.redis

KEY = "idem-race-key-41c9"
AUTH = {"Authorization": f"Bearer {KEY}"}
CLIENTS = 20
ROUNDS = 30  # per kind of race: the old code lost one in about eight


def body(problem: str) -> dict[str, Any]:
    return {"problem": problem, "preset": "smoke", "params": {"population": 2, "budget": 24, "tail": 12}}


async def race(api: httpx.AsyncClient, key: str, problems: list[str]) -> list[tuple[str, httpx.Response]]:
    """All ``problems`` submitted at once with one Idempotency-Key, each on its own connection."""
    headers = {**AUTH, "Idempotency-Key": key}
    replies = await asyncio.gather(*(api.post("/v1/jobs", json=body(p), headers=headers) for p in problems))
    return list(zip(problems, replies, strict=True))


async def check_race(api: httpx.AsyncClient, key: str, problems: list[str]) -> str:
    """Race ``problems`` on ``key`` and check the rule; returns the job id made."""
    replies = await race(api, key, problems)
    made = [(p, r) for p, r in replies if r.status_code == 202 and not r.json()["replayed"]]
    statuses = Counter(r.status_code for _, r in replies)
    assert len(made) == 1, (key, statuses, [r.json() for _, r in made])
    winner, first = made[0]
    job_id: str = first.json()["id"]
    for problem, reply in replies:
        if problem == winner:
            assert reply.status_code == 202 and reply.json()["id"] == job_id, (key, reply.text)
        else:
            assert reply.status_code == 422, (key, reply.status_code, reply.text)
            assert reply.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
            assert job_id in reply.json()["message"]
    # The job holds the body of the request that was told it made it.
    job = (await api.get(f"/v1/jobs/{job_id}", headers=AUTH)).json()
    assert job["problem_preview"] == winner, (key, job["problem_preview"], winner)
    again = await race(api, key, [winner])  # a later replay finds the same job
    assert again[0][1].json()["id"] == job_id and again[0][1].json()["replayed"]
    return job_id


async def run_races(api: httpx.AsyncClient, tag: str) -> None:
    made: set[str] = set()
    for r in range(ROUNDS):
        # As reported: every request a different body.
        made.add(await check_race(api, f"{tag}-distinct-{r}", [f"What is {r}*{i}?" for i in range(CLIENTS)]))
        # Four bodies, five copies each: one body's requests share the job, the others are refused.
        mixed = [f"What is {r}+{i % 4}?" for i in range(CLIENTS)]
        made.add(await check_race(api, f"{tag}-mixed-{r}", mixed))
    assert len(made) == 2 * ROUNDS
    jobs = (await api.get("/v1/jobs", params={"limit": 500}, headers=AUTH)).json()["jobs"]
    assert {j["id"] for j in jobs} == made  # one job per key: no loser made one of its own


@pytest.fixture
def api_url(tmp_path: Path, redis_server: RedisServer) -> Iterator[str]:
    with child_processes(tmp_path) as start:
        port = free_port()
        flags = ["--port", str(port), "--redis", redis_server.url, "--api-keys", KEY]
        api = start("api", ["-m", "mrsa", "serve", *flags, "--max-active-jobs", "1000"])
        url = f"http://127.0.0.1:{port}"
        api.wait_until("mrsa serve ready", lambda: http_ok(f"{url}/readyz"), 60)
        yield url


@pytest.mark.timeout(300)
async def test_one_job_per_key_under_concurrent_clients_on_the_real_service(api_url: str) -> None:
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=api_url, timeout=60, limits=limits) as api:
        await run_races(api, "redis")


@pytest.fixture
async def memory_api() -> AsyncIterator[httpx.AsyncClient]:
    deps = ApiDeps(store=MemoryStore(), config=ApiConfig(api_keys=[KEY], max_active_jobs=1000))
    transport = httpx.ASGITransport(app=create_app(Settings(), deps))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test", timeout=60) as client:
        yield client


async def test_one_job_per_key_under_concurrent_requests_on_the_memory_store(
    memory_api: httpx.AsyncClient,
) -> None:
    await run_races(memory_api, "memory")
