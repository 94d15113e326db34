"""The worker's configuration is one pydantic-settings model (:class:`mrsa.settings.WorkerSettings`):
``mrsa worker``'s flags override ``MRSA_*``, which override the defaults; ``python -m workers``
reads the same model from the environment alone and needs no part of the CLI. ``mrsa solve`` and
``mrsa serve`` lay their flags on :class:`~mrsa.settings.Settings` the same way. And the priority
option end to end: a worker with ``--priority`` sends each request's priority (``-round``) to a
server that schedules by it (the simulator, as vLLM with ``--scheduling-policy priority``); one
without the option sends none, which a server without priority scheduling requires."""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

import workers.service
from benchmarks.processes import Child, child_processes, clean_env
from benchmarks.simulator.process import running_simulator
from mrsa.backends.base import BackendError
from mrsa.cli import app
from mrsa.domain import JobSpec, JobStatus
from mrsa.engine.runner import Engine
from mrsa.params import resolve_params
from mrsa.settings import Settings, WorkerSettings, get_settings
from mrsa.store.redis import open_redis
from tests.fakes import FakeBackend
from tests.plugins.redis_server import RedisServer
from workers.__main__ import main as python_m_workers

solve_cmd = importlib.import_module("mrsa.cli.solve")  # mrsa.cli.solve is also the command function
ROOT = Path(__file__).resolve().parent.parent
REDIS = "redis://127.0.0.1:9/0"  # never contacted: serve is replaced
UNUSED = "http://127.0.0.1:9"


@pytest.fixture(autouse=True)
def clean_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in [k for k in os.environ if k.startswith("MRSA_")]:
        monkeypatch.delenv(key)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[WorkerSettings]:
    """Replace the worker's serve loop: record the settings it was started with."""
    seen: list[WorkerSettings] = []

    async def fake_serve(settings: WorkerSettings, stop: Any = None) -> None:
        seen.append(settings)

    monkeypatch.setattr(workers.service, "serve", fake_serve)
    return seen


def worker(*flags: str) -> Any:
    return CliRunner().invoke(app, ["worker", *flags])


# -- one model, flags over the environment over the defaults ---------------------------------------


def test_worker_flags_override_the_environment_which_overrides_the_defaults(
    monkeypatch: pytest.MonkeyPatch, served: list[WorkerSettings]
) -> None:
    monkeypatch.setenv("MRSA_REDIS_URL", REDIS)
    monkeypatch.setenv("MRSA_WORKER_HEARTBEAT_S", "2")
    monkeypatch.setenv("MRSA_BACKEND_RETRIES", "1")
    monkeypatch.setenv("MRSA_WORKER_METRICS_PORT", "9101")
    result = worker("--reclaim-idle", "9", "--retries", "3", "--metrics-port", "0", "--priority")
    assert result.exit_code == 0, result.output
    [s] = served
    assert s.redis_url == REDIS and s.worker_heartbeat_s == 2  # from the environment
    assert s.worker_reclaim_idle_s == 9 and s.backend_retries == 3  # flags beat it
    assert s.worker_metrics_port == 0  # a flag of 0 is a value, not "unset"
    assert s.worker_shutdown_grace_s == 30 and s.worker_backend_hold_s == 600  # the defaults
    assert s.backend_priority is True
    options = s.http_options()
    assert options.max_retries == 3 and "concurrency" not in options.model_fields_set


def test_python_m_workers_reads_the_same_model_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, served: list[WorkerSettings]
) -> None:
    monkeypatch.setenv("MRSA_REDIS_URL", REDIS)
    monkeypatch.setenv("MRSA_BACKEND_URL", UNUSED)
    monkeypatch.setenv("MRSA_BACKEND_KIND", "vllm")
    monkeypatch.setenv("MRSA_BACKEND_PRIORITY", "true")
    monkeypatch.setenv("MRSA_WORKER_CONSUMER", "env-worker")
    assert worker().exit_code == 0
    assert python_m_workers([]) == 0
    from_cli, from_env = served
    assert from_env == from_cli
    assert (from_env.backend_url, from_env.backend_priority, from_env.worker_consumer) == (
        UNUSED,
        True,
        "env-worker",
    )


def test_the_worker_entry_point_does_not_import_the_cli() -> None:
    code = "import sys, workers.__main__; print(sorted(m for m in sys.modules if m.startswith('mrsa.cli')))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        (["--heartbeat", "0"], {}, "heartbeat: Input should be greater than 0"),
        ([], {"MRSA_WORKER_HEARTBEAT_S": "-1"}, "MRSA_WORKER_HEARTBEAT_S: Input should be greater than 0"),
        (["--concurrency", "0"], {}, "concurrency: Input should be greater than or equal to 1"),
        (["--metrics-port", "70000"], {}, "metrics-port: Input should be less than or equal to 65535"),
        (["--heartbeat", "5", "--reclaim-idle", "5"], {}, "heartbeat: must be shorter than --reclaim-idle"),
        (["--backend-kind", "nope"], {}, "backend-kind: unknown 'nope'; choose one of auto, vllm"),
        ([], {"MRSA_BACKEND_KIND": "nope"}, "MRSA_BACKEND_KIND: unknown 'nope'"),
        (["--timeout", "0"], {}, "timeout: Input should be greater than 0"),
    ],
)
def test_a_bad_worker_setting_exits_2_naming_the_flag_or_the_variable(
    monkeypatch: pytest.MonkeyPatch,
    served: list[WorkerSettings],
    flags: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = worker("--redis", REDIS, *flags)
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert message in text and "Traceback" not in text, text
    assert served == []


def test_a_worker_needs_redis(served: list[WorkerSettings], capsys: pytest.CaptureFixture[str]) -> None:
    result = worker()
    assert result.exit_code == 2 and "redis: give --redis URL or set MRSA_REDIS_URL" in result.output
    assert python_m_workers([]) == 2
    assert "redis: give --redis URL or set MRSA_REDIS_URL" in capsys.readouterr().err
    assert served == []


def test_python_m_workers_takes_no_flags(
    served: list[WorkerSettings], capsys: pytest.CaptureFixture[str]
) -> None:
    assert python_m_workers(["--redis", REDIS]) == 2
    assert "takes no arguments" in capsys.readouterr().err
    assert python_m_workers(["--help"]) == 0
    assert "MRSA_REDIS_URL" in capsys.readouterr().err
    assert served == []


def test_solve_lays_its_flags_on_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []

    async def fake(*args: Any, **kwargs: Any) -> Any:
        import inspect

        seen.append(inspect.signature(real).bind(*args, **kwargs).arguments)
        raise BackendError("stopped by the test")

    real = solve_cmd._solve
    monkeypatch.setattr(solve_cmd, "_solve", fake)
    monkeypatch.setenv("MRSA_BACKEND_TIMEOUT_S", "5")
    monkeypatch.setenv("MRSA_BACKEND_RETRIES", "2")
    monkeypatch.setenv("MRSA_BACKEND_KIND", "vllm")
    result = CliRunner().invoke(
        app, ["solve", "--backend", UNUSED, "--retries", "0", "--priority", "--quiet", "What is 7*6?"]
    )
    assert result.exit_code == 1 and "stopped by the test" in result.output, result.output
    [args] = seen
    assert args["backend_url"] == UNUSED and args["backend_kind"] == "vllm"
    assert (args["options"].timeout_s, args["options"].max_retries) == (5, 0)
    assert args["priority"] is True
    result = CliRunner().invoke(app, ["solve", "--backend", UNUSED, "--timeout", "-1", "What is 7*6?"])
    assert result.exit_code == 2 and "timeout: Input should be greater than 0" in result.output


def test_serve_lays_its_flags_on_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import mrsa.api.app

    apps: list[Settings] = []
    monkeypatch.setattr(mrsa.api.app, "create_app", lambda settings: apps.append(settings) or object())
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: None)
    monkeypatch.setenv("MRSA_API_MAX_ACTIVE_JOBS", "3")
    monkeypatch.setenv("MRSA_API_MAX_PROBLEM_BYTES", "500")
    monkeypatch.setenv("MRSA_REDIS_URL", REDIS)
    result = CliRunner().invoke(app, ["serve", "--max-problem-bytes", "10", "--context-length", "2048"])
    assert result.exit_code == 0, result.output
    [s] = apps
    assert (s.api_max_active_jobs, s.api_max_problem_bytes, s.backend_context_length) == (3, 10, 2048)
    assert s.redis_url == REDIS and s.allow_no_auth is False
    monkeypatch.setenv("MRSA_BACKEND_KIND", "nope")
    result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 2 and "MRSA_BACKEND_KIND: unknown 'nope'" in " ".join(result.output.split())


# -- priority, against a server that honours it ----------------------------------------------------

SIM_FLAGS = ["--max-num-seqs=2", "--step-base-ms=0.2", "--median-tokens=40", "--max-model-len=4096"]
ROUNDS = 2
POPULATION = 2


async def run_one_job(redis_url: str, worker: Child) -> None:
    """Submit a job of ``ROUNDS`` + 1 rounds and wait (polling, with a deadline) until it succeeds."""
    store, _ = await open_redis(redis_url)
    try:
        params = resolve_params(
            "smoke",
            {"population": POPULATION, "subset": 2, "rounds": ROUNDS, "budget": 48, "tail": 16},
        )
        job = await Engine(store, FakeBackend()).submit(JobSpec(problem="What is 6*7?", params=params))
        deadline = time.monotonic() + 180
        while True:
            got = await store.get_job(job.id)
            assert got is not None
            if got.status.terminal:
                break
            assert worker.proc.poll() is None, f"the worker exited:\n{worker.log_tail()}"
            assert time.monotonic() < deadline, f"job not done in 180 s:\n{worker.log_tail()}"
            await asyncio.sleep(0.2)
        assert got.status == JobStatus.succeeded, (got.error, worker.log_tail())
    finally:
        await store.aclose()


def sim_priorities(url: str) -> dict[str, int]:
    stats: dict[str, Any] = httpx.get(f"{url}/sim/stats", timeout=10).json()
    priorities: dict[str, int] = stats["priorities"]
    return priorities


@pytest.mark.redis
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


@pytest.mark.redis
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
