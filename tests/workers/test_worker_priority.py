"""The priority option end to end: a worker with ``--priority`` sends each request's priority
(``-round``: later rounds first) to a server that schedules by it (the simulator, as vLLM with
``--scheduling-policy priority``); one without the option (``python -m workers``, configured by the
environment alone) sends none, which a server without priority scheduling requires (it answers a
request carrying one with 400, as vLLM does)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from mrsa.cli.settings import Settings
from mrsa.domain import JobSpec, JobStatus
from mrsa.engine.job_service import JobService
from mrsa.params import resolve_params
from mrsa.store.opening import open_store
from testkit.processes import Child, child_processes, clean_env
from testkit.simulator.process import running_simulator
from tests.plugins.redis_server import RedisServer
from tests.support.jobs import wait_for_job

pytestmark = pytest.mark.redis

SIM_FLAGS = ["--max-num-seqs=2", "--step-base-ms=0.2", "--median-tokens=40", "--max-model-len=4096"]
ROUNDS = 2
POPULATION = 2


async def run_one_job(redis_url: str, worker: Child) -> None:
    """Submit a job of ``ROUNDS`` + 1 rounds and wait (polling, with a deadline) until it succeeds."""
    async with open_store(Settings(redis_url=redis_url)) as store:
        params = resolve_params(
            "smoke",
            {"population": POPULATION, "subset": 2, "rounds": ROUNDS, "budget": 48, "tail": 16},
        )
        job = await JobService(store).submit(JobSpec(problem="What is 6*7?", params=params))
        got = await wait_for_job(store, job.id, worker, 180)
        assert got.status == JobStatus.succeeded, (got.error, worker.log_tail())


def sim_priorities(url: str) -> dict[str, int]:
    stats: dict[str, Any] = httpx.get(f"{url}/sim/stats", timeout=10).json()
    priorities: dict[str, int] = stats["priorities"]
    return priorities


async def test_a_worker_with_priority_sends_later_rounds_first(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with (
        running_simulator([*SIM_FLAGS, "--enable-priority"]) as sim,
        child_processes(tmp_path) as start,
    ):
        flags = ["--redis", redis_server.url, "--backend", sim, "--backend-kind", "vllm", "--priority"]
        w = start("worker", ["-m", "mrsa", "worker", *flags, "--consumer", "prio"])
        w.wait_for_log(" ready: ", 60)
        await run_one_job(redis_server.url, w)
        # One request per candidate, each with -round: round 2 before round 1 before round 0.
        assert sim_priorities(sim) == {str(-r): POPULATION for r in range(ROUNDS + 1)}


async def test_a_worker_without_the_option_sends_no_priority(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """``python -m workers`` configured by the environment alone, against a server without priority
    scheduling (which would refuse a request with a priority, as vLLM does)."""
    env = clean_env(MRSA_BACKEND_KIND="vllm", MRSA_WORKER_CONSUMER="plain", MRSA_REDIS_URL=redis_server.url)
    with (
        running_simulator(SIM_FLAGS) as sim,
        child_processes(tmp_path, env={**env, "MRSA_BACKEND_URL": sim}) as start,
    ):
        w = start("worker", ["-m", "workers"])
        w.wait_for_log(" ready: ", 60)
        await run_one_job(redis_server.url, w)
        assert sim_priorities(sim) == {"none": POPULATION * (ROUNDS + 1)}
