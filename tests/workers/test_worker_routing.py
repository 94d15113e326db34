"""Behind a router, end to end: a real ``mrsa worker`` process with ``--routing-header`` and
``--backend-metrics`` takes no task while the metrics say the queue is long, then runs the job
once it is short, every generation carrying its candidate's key (the simulator records them)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from mrsa.cli.settings import Settings
from mrsa.domain import JobSpec, JobStatus
from mrsa.engine.job_service import JobService
from mrsa.params import RSAParams
from mrsa.store.opening import open_store
from testkit.processes import child_processes
from testkit.simulator.process import running_simulator
from tests.hostile.server import hostile_server, raw
from tests.plugins.redis_server import RedisServer
from tests.support.jobs import wait_for_job

pytestmark = pytest.mark.redis

HEADER = "x-smg-routing-key"
SIM_FLAGS = ["--max-num-seqs=8", "--step-base-ms=0.2", "--median-tokens=200", f"--record-header={HEADER}"]


async def generations(sim: str) -> dict[str, int]:
    async with httpx.AsyncClient(timeout=10) as client:
        values: dict[str, int] = (await client.get(f"{sim}/sim/stats")).json()["header_values"]
    return values


@pytest.mark.timeout(180)
async def test_a_worker_behind_a_router_holds_on_its_queue_and_sends_lineage_keys(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with hostile_server() as metrics_server:
        metrics_server.metrics = raw(b'vllm:num_requests_waiting{model_name="m"} 99\n')
        with running_simulator(SIM_FLAGS) as sim, child_processes(tmp_path) as start:
            flags = [
                *("--redis", redis_server.url, "--backend", sim, "--backend-kind", "vllm"),
                *("--routing-header", HEADER, "--backend-metrics", f"{metrics_server.url}/metrics"),
                *("--max-waiting", "10", "--consumer", "routed", "-v"),
            ]
            w = start("worker", ["-m", "mrsa", "worker", *flags], {"MRSA_BACKEND_METRICS_INTERVAL_S": "0.1"})
            await asyncio.to_thread(w.wait_for_log, "taking no new tasks", 60)
            # A take already blocked in Redis when the hold began returns within its block (1 s):
            # the hold applies from the next one.
            await asyncio.sleep(1.5)
            async with open_store(Settings(redis_url=redis_server.url)) as store:
                params = RSAParams(
                    population=3, subset=2, rounds=1, budget=96, tail=32, chunk=32, carryover=8
                )
                job = await JobService(store).submit(JobSpec(problem="What is 6*7?", params=params))
                await asyncio.sleep(1.5)
                assert await generations(sim) == {}  # held: nothing was sent
                held = await store.get_job(job.id)
                assert held is not None and not held.status.terminal
                metrics_server.metrics = raw(b'vllm:num_requests_waiting{model_name="m"} 2\n')
                got = await wait_for_job(store, job.id, w, 90)
                assert got.status == JobStatus.succeeded, (got.error, w.log_tail())
                chunks = {
                    f"{job.id}-r{r}-c{c.index}": c.chunks
                    for r in range(params.rounds + 1)
                    for c in await store.get_candidates(job.id, r)
                }
            assert await generations(sim) == chunks  # one key per candidate, on each of its chunks
            assert "taking tasks again" in w.log
