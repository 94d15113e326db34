"""mrsa end to end through the bundled Triton (real ``tritonserver``, the vLLM backend's wire):
``mrsa solve`` with no flag but the URL and kind, the service (``mrsa serve`` + two ``mrsa worker``
processes with ``--backend-kind triton --tokenizer DIR`` + a real Redis) surviving a worker
SIGKILLed mid-job, and a one-problem ``mrsa bench``.

The processes, waits and checks are the ones of tests/api/test_api_e2e.py and tests/workers/test_workers.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.api.test_api_e2e import (
    Service,
    _env,
    service,
    sigkill_worker_args,
    survives_a_worker_sigkilled_mid_job,
)
from tests.plugins.servers import ServerHandle

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


async def test_service_with_two_triton_workers_survives_a_sigkill(
    service: Service, triton_server: ServerHandle
) -> None:
    assert triton_server.tokenizer is not None
    triton = [
        "--backend-kind",
        "triton",
        "--tokenizer",
        str(triton_server.tokenizer),
        "--model",
        triton_server.model,
    ]

    def worker_args(name: str) -> list[str]:
        return sigkill_worker_args(service, name, triton_server.url, *triton)

    await survives_a_worker_sigkilled_mid_job(service, worker_args, SMALL, population=3, rounds=1)


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
