"""The routing-affinity header against real servers: the simulator records the header of every
generation it serves, and the routing benchmark runs two replicas behind the test-only front."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest

from benchmarks import routing
from mrsa.backends.http import HttpOptions
from mrsa.backends.openai import OpenAICompatibleBackend
from mrsa.domain import JobSpec, JobStatus
from mrsa.params import RSAParams
from testkit.router import HashRing
from testkit.simulator.process import running_simulator
from workers.inprocess import InProcessRunner

HEADER = "x-smg-routing-key"


@pytest.mark.timeout(120)
async def test_the_simulator_sees_one_key_per_candidate_on_each_of_its_chunks() -> None:
    flags = [f"--record-header={HEADER}", "--median-tokens=400", "--max-num-seqs=16"]
    params = RSAParams(population=4, subset=2, rounds=1, budget=256, tail=64, chunk=64, carryover=16)
    with running_simulator(flags) as url:
        options = HttpOptions(routing_header=HEADER, concurrency=8, timeout_s=60)
        backend = OpenAICompatibleBackend(url, dialect="vllm", options=options)
        try:
            async with InProcessRunner(backend, capacity=8) as runner:
                result = await asyncio.wait_for(
                    runner.solve(JobSpec(problem="What is 6*7?", params=params)), 90
                )
                chunks = {
                    f"{result.job_id}-r{r}-c{c.index}": c.chunks
                    for r in range(params.rounds + 1)
                    for c in await runner.store.get_candidates(result.job_id, r)
                }
        finally:
            await backend.aclose()
        async with httpx.AsyncClient(timeout=10) as client:
            seen: dict[str, int] = (await client.get(f"{url}/sim/stats")).json()["header_values"]
    assert result.status == JobStatus.succeeded
    assert "" not in seen  # every generation carried the header
    assert seen == chunks  # one key per candidate, on each of its chunks
    assert sum(chunks.values()) > len(chunks)  # several chunks per candidate: the key was shared


def test_the_hash_ring_spreads_keys_and_keeps_them() -> None:
    ring = HashRing(2)
    owners = Counter(ring.owner(f"job-r0-c{i}") for i in range(2000))
    assert 0.4 < owners[0] / 2000 < 0.6
    assert all(ring.owner(f"job-r0-c{i}") == HashRing(2).owner(f"job-r0-c{i}") for i in range(50))


@pytest.mark.timeout(180)
async def test_routing_benchmark_affinity_keeps_candidates_on_one_replica() -> None:
    """The benchmark's fast form: the same jobs behind both fronts decode the same tokens; with
    affinity no candidate's chunks are split over the replicas and more prompt tokens hit the
    prefix cache."""
    args = routing.parse_args(
        [
            "--problems=2",
            "--population=4",
            "--subset=2",
            "--budget=384",
            "--chunk=96",
            "--carryover=16",
            "--tail=256",
            "--concurrency=16",
            "--max-num-seqs=8",
            "--median-tokens=600",
        ]
    )
    rows, ratios = await routing.main_async(args)
    rr, aff = rows
    assert (rr["policy"], aff["policy"]) == ("round-robin", "affinity")
    assert rr["failed"] == aff["failed"] == 0
    assert rr["decode_tokens"] == aff["decode_tokens"]
    assert aff["candidates_split"] == 0 and rr["candidates_split"] > 0
    assert aff["candidates"] == rr["candidates"] == 2 * 4 * 2
    assert all(n > 0 for n in aff["generations_per_replica"])  # the job's candidates spread
    assert aff["prefix_cache_hit_rate"] > rr["prefix_cache_hit_rate"]
    assert ratios["hit_rate_affinity_over_round_robin"] is not None
    assert ratios["hit_rate_affinity_over_round_robin"] > 1
