"""mrsa end to end through a real vLLM (the bundled CPU build), as a user runs it: ``mrsa backend
--kind vllm`` then ``mrsa solve`` with nothing but the URL (the server going with its parent), the
service (API + two workers + Redis) surviving a worker SIGKILLed mid-job, and a one-problem
``mrsa bench``."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mrsa.servers.server_process import free_port
from tests.api.test_api_e2e import Service, service, sigkill_worker_args, survives_a_worker_sigkilled_mid_job  # noqa: F401  (the fixture)
from tests.cli.test_cli_solve import MRSA, run
from tests.plugins.servers import ServerHandle, fail_with_log


@pytest.fixture
def mrsa_backend_vllm(tmp_path: Path) -> Iterator[str]:
    """``mrsa backend --kind vllm --port P`` as a user starts it; its URL once it says ready."""
    port = free_port()
    log_path = tmp_path / "mrsa-backend.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*MRSA, "backend", "--kind", "vllm", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 420
        while "ready at" not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                fail_with_log("mrsa backend --kind vllm did not come up", log_path)
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
        # SIGKILL, so nothing of mrsa's runs: the vLLM server must go with its parent regardless.
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 60
        while _answers(f"http://127.0.0.1:{port}/health"):
            assert time.monotonic() < deadline, "vLLM outlived the mrsa backend that started it"
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return False
    return True


def test_mrsa_backend_vllm_then_solve_with_only_the_url(mrsa_backend_vllm: str, tmp_path: Path) -> None:
    """No --backend-kind, --model or --tokenizer: detection picks vLLM, /v1/models gives the rest."""
    url = mrsa_backend_vllm
    proc = run(
        "solve", "--backend", url, "--preset", "smoke", "--json", "--trace", str(tmp_path), "What is 7*6?"
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "succeeded"
    p = result["params"]
    assert result["usage"]["requests"] == p["population"] * (p["rounds"] + 1)
    for rnd in result["rounds"]:
        assert [c["index"] for c in rnd["candidates"]] == list(range(p["population"]))
        for c in rnd["candidates"]:
            assert c["tail_tokens"] == min(p["tail"], c["source_tokens"])
    records = [json.loads(line) for line in (tmp_path / "requests.jsonl").read_text().splitlines()]
    assert len(records) == result["usage"]["requests"]
    assert {r["backend"] for r in records} == {url}
    for record in records:
        assert record["request"]["seed"] is not None  # seeded, and the engine survived them all
        [response] = record["responses"]
        assert response["token_ids"] is not None  # return_token_ids: the vLLM dialect was detected
    # Round 1 prompts carry round 0's tails: never the end-of-turn marker vLLM's ids end with.
    assert "<|im_end|>" not in json.dumps([r["request"] for r in records])


async def test_service_survives_a_worker_sigkilled_mid_job(
    vllm_server: ServerHandle,
    service: Service,  # noqa: F811  (the fixture imported above)
) -> None:
    """Two workers (short reclaim period) on vLLM; one is SIGKILLed while it holds a task: the
    survivor reclaims it and every job completes with whole rounds."""
    args = ["--preset", "smoke", "--population", "4", "--rounds", "2", "--budget", "160", "--tail", "32"]

    def worker_args(name: str) -> list[str]:
        return sigkill_worker_args(service, name, vllm_server.url)

    await survives_a_worker_sigkilled_mid_job(service, worker_args, args, population=4, rounds=2, within=400)


def test_one_problem_bench(vllm_server: ServerHandle, tmp_path: Path) -> None:
    out = tmp_path / "run"
    base = ["bench", "--dataset", "aime2025", "--limit", "1", "--preset", "smoke", "--out", str(out)]
    proc = run(*base, "--backend", vllm_server.url, "--json", "--quiet", timeout=400)
    assert proc.returncode == 0, proc.stderr
    lines = (out / "records.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 4 * 2  # one problem × N=4 × (T+1)=2 rounds, every candidate graded
    assert all(r["reason"] in ("correct", "wrong", "no_boxed", "parse_error") for r in records)
    assert all(r["tail_tokens"] == min(48, r["source_tokens"]) for r in records)
    assert json.loads(proc.stdout)
    # Rerun: everything is recorded, nothing is generated again.
    again = run(*base, "--backend", vllm_server.url, "--json", "--quiet", timeout=120)
    assert again.returncode == 0, again.stderr
    assert (out / "records.jsonl").read_text().splitlines() == lines


def test_mrsa_backend_vllm_refuses_threads_in_one_line() -> None:
    proc = subprocess.run(
        [*MRSA, "backend", "--kind", "vllm", "--threads", "2"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "threads" in proc.stderr and "Traceback" not in proc.stderr


# A slice of the recorded real-model sweep (docs/evaluation.md, "A real model on generated
# arithmetic"): its set and both of its commands, shrunk to one problem and small budgets. A smoke
# check that the benchmark still runs on the real server and the report pairs RSA with its
# matched-budget self-consistency; accuracy is not asserted (one problem says nothing).
ARITH_RSA = "population=2;subset=2;rounds=1;budget=48;tail=24;temperature=0.8"
ARITH_SC = "population=4;rounds=0;budget=48;temperature=0.8"


def arith_smoke(url: str, out: Path) -> None:
    for grid in (ARITH_RSA, ARITH_SC):
        args = ["-d", "arith:pick3add1x1:81", "--limit", "1", "--preset", "smoke", "--grid", grid]
        proc = run("bench", *args, "--backend", url, "--out", str(out), "--json", "--quiet", timeout=400)
        assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 2 * 2 + 4
    assert all(r["problem"] == "pick3add1x1-s0-0000" for r in records)
    assert all(r["reason"] in ("correct", "wrong", "no_boxed", "parse_error") for r in records)
    report = run("report", str(out), "--json", timeout=120)
    assert report.returncode == 0, report.stderr
    metrics = json.loads(report.stdout)
    rsa_id, sc_id = f"smoke:{ARITH_RSA.replace(';', ',')}", f"smoke:{ARITH_SC.replace(';', ',')}"
    [group] = [g for g in metrics["groups"] if g["config"] == rsa_id]
    assert group["dataset"] == "arith-pick3add1x1-n81-s0" and [r["round"] for r in group["rounds"]] == [0, 1]
    matched = [b for b in metrics["baselines"] if "matched total" in b["method"]]
    assert [(b["config"], b["metric"], b["source"]) for b in matched] == [(rsa_id, "maj@4", sc_id)]


def test_arith_benchmark_slice(vllm_server: ServerHandle, tmp_path: Path) -> None:
    arith_smoke(vllm_server.url, tmp_path / "run")
