"""One backend setting, given to each entry point, reaches its requests: ``--routing-header`` (or
``MRSA_BACKEND_ROUTING_HEADER``) given to ``mrsa solve``, ``mrsa bench``, ``mrsa worker`` and
``mrsa serve``, real processes against the real simulator (which records the header of every
generation it serves) and a real Redis. All four open their backend through the composition root
(:func:`mrsa.runtime.open_runtime`), so none of them can drop it.

solve, bench and worker send each candidate's lineage key in it; serve generates nothing itself,
and its chat passthrough sends on the key a client gave in that header (and no other header of
the client's)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from mrsa.cli.settings import Settings
from mrsa.domain import JobSpec, JobStatus
from mrsa.engine.job_service import JobService
from mrsa.params import RSAParams
from mrsa.servers.server_process import free_port
from mrsa.store.opening import open_store
from testkit.processes import child_processes, clean_env
from testkit.simulator.process import ROOT, running_simulator
from tests.plugins.redis_server import RedisServer

pytestmark = pytest.mark.redis

HEADER = "x-test-route"
SIM_FLAGS = ["--max-num-seqs=16", "--step-base-ms=0.2", "--median-tokens=60", f"--record-header={HEADER}"]
SMALL = ["--population", "2", "--subset", "2", "--rounds", "1", "--budget", "64", "--tail", "32"]


def seen(sim: str) -> dict[str, int]:
    """The header values of the generations the simulator served since the last :func:`reset`
    ("" counts those without the header)."""
    values: dict[str, int] = httpx.get(f"{sim}/sim/stats", timeout=10).json()["header_values"]
    return values


def reset(sim: str) -> None:
    httpx.post(f"{sim}/sim/reset", timeout=10).raise_for_status()


def mrsa(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mrsa", *args],
        cwd=ROOT,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def assert_every_generation_keyed(values: dict[str, int]) -> None:
    assert values, "no generation reached the simulator"
    assert "" not in values, values  # every generation carried the header
    assert all("-r" in key and "-c" in key for key in values), values  # a candidate's lineage key


@pytest.mark.timeout(300)
def test_the_routing_header_reaches_the_requests_of_solve_bench_worker_and_serve(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with running_simulator(SIM_FLAGS) as sim, child_processes(tmp_path) as start:
        backend = ["--backend", sim, "--backend-kind", "vllm"]

        # solve: the flag
        reset(sim)
        mrsa(
            "solve",
            *backend,
            "--routing-header",
            HEADER,
            "--quiet",
            "--preset",
            "smoke",
            *SMALL,
            "What is 6*7?",
        )
        assert_every_generation_keyed(seen(sim))

        # bench: the environment variable
        reset(sim)
        data = tmp_path / "one.jsonl"
        data.write_text(json.dumps({"id": "a", "problem": "What is 6*7?", "answer": "42"}) + "\n")
        out = tmp_path / "run"
        env = clean_env(MRSA_BACKEND_ROUTING_HEADER=HEADER)
        mrsa(
            "bench",
            "--dataset",
            str(data),
            "--out",
            str(out),
            *backend,
            "--preset",
            "smoke",
            "--quiet",
            env=env,
        )
        assert_every_generation_keyed(seen(sim))

        # worker: the flag, on a job submitted to Redis
        reset(sim)
        w = start(
            "worker",
            ["-m", "mrsa", "worker", "--redis", redis_server.url, *backend, "--routing-header", HEADER],
        )
        w.wait_for_log("ready", 60)
        job_id = asyncio.run(submit_and_wait(redis_server.url))
        values = seen(sim)
        assert_every_generation_keyed(values)
        assert all(key.startswith(job_id) for key in values)

        # serve: the flag; a chat passthrough sends on the client's key in that header
        reset(sim)
        port = free_port()
        api = f"http://127.0.0.1:{port}"
        flags = ["--port", str(port), "--redis", redis_server.url, *backend, "--routing-header", HEADER]
        s = start("api", ["-m", "mrsa", "serve", *flags])
        s.wait_until("/healthz", lambda: healthy(api), 60)
        chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
        reply = httpx.post(
            f"{api}/v1/chat/completions",
            json=chat,
            headers={HEADER: "session-7", "x-other": "no"},
            timeout=30,
        )
        assert reply.status_code == 200 and reply.headers["x-mrsa-passthrough"] == "no RSA fields", reply.text
        assert seen(sim) == {"session-7": 1}


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


async def submit_and_wait(redis_url: str) -> str:
    params = RSAParams(population=2, subset=2, rounds=1, budget=64, tail=32, chunk=32, carryover=8)
    async with open_store(Settings(redis_url=redis_url)) as store:
        job = await JobService(store).submit(JobSpec(problem="What is 6*7?", params=params))
        deadline = time.monotonic() + 90
        while True:
            got = await store.get_job(job.id)
            assert got is not None
            if got.status.terminal:
                break
            assert time.monotonic() < deadline, "the worker did not finish the job in 90 s"
            await asyncio.sleep(0.2)
        assert got.status == JobStatus.succeeded, got.error
    return job.id
