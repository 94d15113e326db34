"""mrsa end to end through the bundled Triton (real ``tritonserver``, the vLLM backend's wire):
``mrsa solve`` with no flag but the URL and kind, the service (``mrsa serve`` + two ``mrsa worker``
processes with ``--backend-kind triton --tokenizer DIR`` + a real Redis) surviving a worker
SIGKILLed mid-job, and a one-problem ``mrsa bench``.

The processes, waits and checks are the ones of tests/test_api_e2e.py and tests/test_workers.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mrsa.store.redis import open_redis
from tests.plugins.servers import ServerHandle
from tests.test_api_e2e import Child, Service, _env, service
from tests.test_workers import pending_of, until

pytestmark = [pytest.mark.redis]

__all__ = ["service"]  # the fixture, imported for these tests
SMALL = ["--preset", "smoke", "--population", "3", "--subset", "2", "--budget", "32", "--tail", "16"]


def mrsa(*args: str, timeout: float = 550) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mrsa", *args], capture_output=True, text=True, timeout=timeout, env=_env()
    )


def test_solve_smoke_needs_only_the_url_and_kind(triton_server: ServerHandle) -> None:
    proc = mrsa(
        "solve",
        "--backend",
        triton_server.url,
        "--backend-kind",
        "triton",
        "--preset",
        "smoke",
        "--json",
        "What is 7*6?",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "succeeded"
    assert [len(r["candidates"]) for r in result["rounds"]] == [4, 4]
    assert result["usage"]["requests"] == 8


def test_solve_with_chunked_continuation(triton_server: ServerHandle) -> None:
    proc = mrsa(
        "solve", "--backend", triton_server.url, "--backend-kind", "triton", "--preset", "smoke",
        "--rounds", "0", "--population", "2", "--budget", "64", "--chunk", "24", "--carryover", "12",
        "--json", "What is 7*6?",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "succeeded"
    # a candidate that used its budget went on past the first chunk (a raw prefill continuation)
    assert result["usage"]["requests"] > 2


def start_worker(service: Service, name: str, server: ServerHandle) -> Child:
    assert server.tokenizer is not None
    worker = service.start(
        name,
        [
            "-m", "mrsa", "worker", "--redis", service.redis_url, "--backend", server.url,
            "--backend-kind", "triton", "--tokenizer", str(server.tokenizer), "--model", server.model,
            "--concurrency", "2", "--consumer", name, "--reclaim-idle", "3", "--heartbeat", "1",
        ],
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while " ready: " not in worker.log:
        assert worker.proc.poll() is None, f"worker {name} exited:\n{worker.log}"
        assert time.monotonic() < deadline, f"worker {name} not ready:\n{worker.log}"
        time.sleep(0.2)
    return worker


async def test_service_with_two_triton_workers_survives_a_sigkill(
    service: Service, triton_server: ServerHandle
) -> None:
    victim = start_worker(service, "victim", triton_server)
    survivor = start_worker(service, "survivor", triton_server)
    ids = []
    for problem in ("What is 7*6?", "What is 12+30?"):
        proc = service.cli("submit", "--json", *SMALL, problem)
        assert proc.returncode == 0, proc.stderr
        ids.append(json.loads(proc.stdout)["id"])
    store, _ = await open_redis(service.redis_url)
    try:

        async def victim_holds_a_task() -> bool:
            return await pending_of(store, "victim") >= 1

        await until(victim_holds_a_task, "the victim to hold a task", within=60)
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(timeout=10)
        for job_id in ids:
            job = service.wait_terminal(job_id)
            assert job["status"] == "succeeded", job
            result = service.get(f"/v1/jobs/{job_id}/result")
            assert [[c["index"] for c in r["candidates"]] for r in result["rounds"]] == [[0, 1, 2], [0, 1, 2]]
        assert "from silent consumers" in survivor.log, survivor.log
        assert await pending_of(store, "victim") == 0
    finally:
        await store.aclose()
    assert survivor.proc.poll() is None, survivor.log


def test_bench_one_problem(triton_server: ServerHandle, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = mrsa(
        "bench", "--dataset", "aime2025", "--limit", "1", "--preset", "smoke", "--out", str(out),
        "--backend", triton_server.url, "--backend-kind", "triton", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines() if line.strip()]
    assert records and all(r.get("problem_id") or r.get("problem") for r in records)
    manifest = json.loads((out / "manifest.json").read_text())
    assert "triton" in json.dumps(manifest)
