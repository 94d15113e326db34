"""The service end to end, as separate processes: ``mrsa serve`` (uvicorn), ``mrsa worker``
processes, a real ``redis-server`` and the real embedded model, driven through the CLI client."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from mrsa.servers.server_process import free_port
from testkit.processes import Child, child_processes, clean_env, http_ok
from tests.plugins.redis_server import RedisServer

pytestmark = [pytest.mark.embedded, pytest.mark.redis]

KEY = "e2e-key-5f0c"
TINY = ["--preset", "smoke", "--population", "2", "--subset", "2", "--budget", "24", "--tail", "12"]
JOB_WAIT_S = 300.0


_free_port = free_port
_env = clean_env


@dataclass
class Service:
    api_url: str
    redis_url: str
    start: Callable[[str, list[str]], Child]

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``mrsa ARGS --api URL --api-key KEY`` as a user runs it."""
        cmd = [sys.executable, "-m", "mrsa", *args, "--api", self.api_url, "--api-key", KEY]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env())

    def get(self, path: str) -> Any:
        r = httpx.get(f"{self.api_url}{path}", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def wait_terminal(self, job_id: str, within: float = JOB_WAIT_S) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            job: dict[str, Any] = self.get(f"/v1/jobs/{job_id}")
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} did not finish in {within:.0f}s: {job}")

    def start_worker(self, name: str, backend: str, *extra: str) -> Child:
        worker = self.start(
            name, ["-m", "mrsa", "worker", "--redis", self.redis_url, "--backend", backend, *extra]
        )
        worker.wait_for_log(" ready: ", 60)
        return worker


def sigkill_worker_args(service: Service, name: str, backend: str, *extra: str) -> list[str]:
    """``mrsa worker`` on ``backend`` with a short reclaim period, for the SIGKILL scenario."""
    return [
        "-m", "mrsa", "worker", "--redis", service.redis_url, "--backend", backend, *extra,
        "--concurrency", "2", "--consumer", name, "--reclaim-idle", "3", "--heartbeat", "1",
    ]  # fmt: skip


async def survives_a_worker_sigkilled_mid_job(
    service: Service,
    worker_args: Callable[[str], list[str]],
    submit_args: list[str],
    population: int,
    rounds: int,
    within: float = JOB_WAIT_S,
) -> None:
    """Two workers; ``victim`` is SIGKILLed while it holds a task: the survivor reclaims it and
    both jobs end with T+1 whole rounds of N candidates (none lost, none doubled)."""
    from mrsa.cli.settings import Settings
    from mrsa.store.opening import open_store
    from tests.workers.test_workers import pending_of, until

    victim, survivor = (service.start(name, worker_args(name)) for name in ("victim", "survivor"))
    for worker in (victim, survivor):
        worker.wait_for_log(" ready: ", 60)
    ids = []
    for problem in ("What is 7*6?", "What is 12+30?"):
        proc = service.cli("submit", "--json", *submit_args, problem)
        assert proc.returncode == 0, proc.stderr
        ids.append(json.loads(proc.stdout)["id"])
    async with open_store(Settings(redis_url=service.redis_url)) as store:

        async def victim_holds_a_task() -> bool:
            return await pending_of(store, "victim") >= 1

        await until(victim_holds_a_task, "the victim to hold a task", within=60)
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(timeout=10)
        for job_id in ids:
            job = service.wait_terminal(job_id, within=within)
            assert job["status"] == "succeeded", job
            result = service.get(f"/v1/jobs/{job_id}/result")
            whole = [list(range(population))] * (rounds + 1)
            assert [[c["index"] for c in r["candidates"]] for r in result["rounds"]] == whole
        assert "from silent consumers" in survivor.log, survivor.log
        assert await pending_of(store, "victim") == 0
    assert survivor.proc.poll() is None, survivor.log


@pytest.fixture
def service(tmp_path: Path, redis_server: RedisServer) -> Iterator[Service]:
    with child_processes(tmp_path) as start:
        port = _free_port()
        api = start(
            "api",
            ["-m", "mrsa", "serve", "--port", str(port), "--redis", redis_server.url, "--api-keys", KEY],
        )
        url = f"http://127.0.0.1:{port}"
        api.wait_until("mrsa serve ready", lambda: http_ok(f"{url}/readyz"), 60)
        yield Service(url, redis_server.url, start)


def test_three_jobs_on_two_workers_through_the_cli(service: Service, embedded_url: str) -> None:
    workers = [service.start_worker(name, embedded_url) for name in ("worker-a", "worker-b")]
    problems = ["What is 7*6?", "What is 12+30?", "What is 84/2?"]
    ids = []
    for problem in problems:
        proc = service.cli("submit", "--json", *TINY, problem)
        assert proc.returncode == 0, proc.stderr
        submitted = json.loads(proc.stdout)
        assert submitted["status"] == "queued"
        ids.append(submitted["id"])

    # watch follows the first job's event stream to the end and shows its result.
    watched = service.cli("watch", ids[0], timeout=JOB_WAIT_S)
    assert watched.returncode == 0, watched.stderr + watched.stdout
    assert "round 1/1" in watched.stderr  # the live progress display
    assert "Rounds" in watched.stdout and "decode tokens" in watched.stdout

    for job_id, problem in zip(ids, problems, strict=True):
        job = service.wait_terminal(job_id)
        assert job["status"] == "succeeded", job
        result = service.get(f"/v1/jobs/{job_id}/result")
        # Complete rounds: T+1 rounds of exactly N candidates, none lost or duplicated.
        assert [r["index"] for r in result["rounds"]] == [0, 1]
        for rnd in result["rounds"]:
            assert [c["index"] for c in rnd["candidates"]] == [0, 1]
        assert result["usage"]["requests"] == 4
        candidate = service.get(f"/v1/jobs/{job_id}/rounds/1/candidates/1")
        assert problem in candidate["prompt"]

        status = service.cli("status", "--json", job_id)
        assert status.returncode == 0 and json.loads(status.stdout)["status"] == "succeeded"
        shown = service.cli("result", "--json", job_id)
        assert shown.returncode == 0 and json.loads(shown.stdout)["job_id"] == job_id

    listed = service.cli("list", "--json")
    assert listed.returncode == 0
    assert sorted(j["id"] for j in json.loads(listed.stdout)["jobs"]) == sorted(ids)
    for worker in workers:
        assert worker.proc.poll() is None, worker.log

    metrics = httpx.get(f"{service.api_url}/metrics", timeout=10).text
    assert 'mrsa_api_jobs_submitted_total{endpoint="jobs"} 3.0' in metrics


def test_a_broken_backend_fails_the_job_with_a_reason(service: Service) -> None:
    """A worker pointed at a closed port (kind and model given, so it starts without asking the
    server): once the backend hold runs out the job fails, and the reason names the URL in the API
    and the CLI."""
    dead = f"http://127.0.0.1:{_free_port()}"
    worker = service.start_worker(
        "broken",
        dead,
        *("--backend-kind", "vllm", "--model", "m", "--retries", "0", "--timeout", "5"),
        *("--backend-hold", "2"),
    )
    proc = service.cli("submit", "--json", *TINY, "What is 7*6?")
    assert proc.returncode == 0, proc.stderr
    job_id = json.loads(proc.stdout)["id"]

    job = service.wait_terminal(job_id, within=120)
    assert job["status"] == "failed"
    assert job["error"] and dead in job["error"], job["error"]
    assert "(backend hold)" in job["error"], job["error"]

    status = service.cli("status", job_id)
    assert status.returncode == 1
    assert "failed" in status.stdout and dead in status.stdout.replace("\n", "")
    result = service.cli("result", job_id)
    assert result.returncode == 1 and "failed" in result.stdout
    watched = service.cli("watch", job_id)
    assert watched.returncode == 1
    assert worker.proc.poll() is None  # the job failed, not the worker

    # Client errors are one line, with the server's message and no traceback.
    missing = service.cli("status", "0000000000000000")
    assert missing.returncode == 1 and missing.stderr.strip().count("\n") == 0
    assert "HTTP 404: no job" in missing.stderr and "Traceback" not in missing.stderr
    bad = service.cli("submit", "--preset", "smoke", "--population", "2", "--subset", "3", "x")
    assert bad.returncode == 2 and "subset" in bad.stderr
    too_big = service.cli("submit", "--preset", "smoke", "--budget", "2000000", "x")
    assert too_big.returncode == 2 and "budget" in too_big.stderr.replace("\n", "")
    unreachable = subprocess.run(
        [sys.executable, "-m", "mrsa", "list", "--api", dead],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    assert unreachable.returncode == 1 and f"cannot reach the mrsa API at {dead}" in unreachable.stderr
