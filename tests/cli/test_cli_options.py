"""Flags shared by the commands (:mod:`mrsa.cli.options`): backend concurrency stays the server's
unless the user sets one, and the help shows the environment variables. The commands' settings are
one pydantic-settings model: ``mrsa worker``'s flags override ``MRSA_*``, which override the defaults
(:class:`workers.settings.WorkerSettings`); ``python -m workers`` reads the same model from the
environment alone and needs no part of the CLI; ``mrsa solve`` and ``mrsa serve`` lay their flags on
:class:`~mrsa.cli.settings.Settings` the same way."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import evals.session
import workers.worker_process
from mrsa.backends.base import BackendError
from mrsa.backends.http import HttpOptions, with_default_concurrency
from mrsa.cli import app
from mrsa.cli.common import settings_from_flags
from mrsa.cli.settings import Settings, get_settings
from workers.__main__ import main as python_m_workers
from workers.settings import WorkerSettings

solve_cmd = importlib.import_module("mrsa.cli.solve")  # mrsa.cli.solve is also the command function
SERVER_CAPACITY = 64  # what a backend would report (vLLM: far more than the old fixed 8)
UNUSED = "http://127.0.0.1:9"  # never contacted: the run itself is replaced
REDIS = "redis://127.0.0.1:9/0"  # never contacted either
ROOT = Path(__file__).resolve().parents[2]


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

    monkeypatch.setattr(workers.worker_process, "serve", fake_serve)
    return seen


def capture_options(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[HttpOptions]:
    """Replace ``module.name`` (the command's async run) with one that records the backend options
    of its ``settings`` argument and fails like an unreachable backend, so the command stops right
    after building them."""
    real: Callable[..., Coroutine[Any, Any, Any]] = getattr(module, name)
    seen: list[HttpOptions] = []

    async def fake(*args: Any, **kwargs: Any) -> Any:
        arguments = inspect.signature(real).bind(*args, **kwargs).arguments
        seen.append(arguments["settings"].http_options())
        raise BackendError("stopped by the test")

    monkeypatch.setattr(module, name, fake)
    return seen


def bench(tmp_path: Path, *extra: str) -> list[str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "tiny.jsonl"
    data.write_text('{"id": "a", "problem": "What is 7*6?", "answer": "42"}\n')
    out = tmp_path / "run"
    return [
        "bench",
        "--dataset",
        str(data),
        "--out",
        str(out),
        "--backend",
        UNUSED,
        "--preset",
        "smoke",
        *extra,
    ]


def http_options(timeout: float | None, retries: int | None, concurrency: int | None) -> HttpOptions:
    """The backend options a command builds from these flags over the environment."""
    flags = {"backend_timeout_s": timeout, "backend_retries": retries, "backend_concurrency": concurrency}
    return settings_from_flags(Settings, flags).http_options()


def test_http_options_leave_concurrency_to_the_server_unless_given(monkeypatch: pytest.MonkeyPatch) -> None:
    unset = http_options(None, None, None)
    assert "concurrency" not in unset.model_fields_set
    assert with_default_concurrency(unset, SERVER_CAPACITY).concurrency == SERVER_CAPACITY
    flag = http_options(None, None, 3)
    assert "concurrency" in flag.model_fields_set and flag.concurrency == 3
    monkeypatch.setenv("MRSA_BACKEND_CONCURRENCY", "5")
    env = http_options(None, None, None)
    assert with_default_concurrency(env, SERVER_CAPACITY).concurrency == 5
    monkeypatch.delenv("MRSA_BACKEND_CONCURRENCY")
    tuned = http_options(7.5, 0, None)
    assert (tuned.timeout_s, tuned.max_retries) == (7.5, 0)
    with pytest.raises(typer.Exit) as exc:
        http_options(None, None, 0)
    assert exc.value.exit_code == 2


def test_bench_leaves_concurrency_to_the_server_by_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen = capture_options(monkeypatch, evals.session, "run_session")
    result = CliRunner().invoke(app, bench(tmp_path, "--quiet"))
    assert result.exit_code == 1 and "stopped by the test" in result.output, result.output
    [options] = seen
    assert "concurrency" not in options.model_fields_set  # not capped at 8 any more
    assert with_default_concurrency(options, SERVER_CAPACITY).concurrency == SERVER_CAPACITY


def test_bench_concurrency_from_the_flag_or_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen = capture_options(monkeypatch, evals.session, "run_session")
    assert CliRunner().invoke(app, bench(tmp_path / "flag", "--quiet", "--concurrency", "3")).exit_code == 1
    monkeypatch.setenv("MRSA_BACKEND_CONCURRENCY", "5")
    get_settings.cache_clear()
    assert CliRunner().invoke(app, bench(tmp_path / "env", "--quiet")).exit_code == 1
    assert [with_default_concurrency(o, SERVER_CAPACITY).concurrency for o in seen] == [3, 5]


def test_solve_leaves_concurrency_to_the_server_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = capture_options(monkeypatch, solve_cmd, "_solve")
    result = CliRunner().invoke(app, ["solve", "--backend", UNUSED, "--quiet", "What is 7*6?"])
    assert result.exit_code == 1 and "stopped by the test" in result.output, result.output
    [options] = seen
    assert "concurrency" not in options.model_fields_set


@pytest.mark.parametrize(
    ("command", "names"),
    [
        (
            "solve",
            ["MRSA_BACKEND_URL", "MRSA_BACKEND_KIND", "MRSA_MODEL", "MRSA_REDIS_URL", "MRSA_TOKENIZER"],
        ),
        (
            "bench",
            ["MRSA_BACKEND_URL", "MRSA_BACKEND_KIND", "MRSA_MODEL", "MRSA_REDIS_URL", "MRSA_TOKENIZER"],
        ),
        ("submit", ["MRSA_API_URL", "MRSA_API_KEY"]),
        ("worker", ["MRSA_REDIS_URL", "MRSA_BACKEND_URL", "MRSA_BACKEND_KIND", "MRSA_TOKENIZER"]),
        ("serve", ["MRSA_REDIS_URL", "MRSA_BACKEND_URL", "MRSA_BACKEND_KIND"]),
    ],
)
def test_help_shows_the_environment_variables(command: str, names: list[str]) -> None:
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    text = re.sub(r"[\s│]+", " ", result.output)  # help wrapped in a rich panel
    for name in names:
        assert f"(env {name})" in text, (name, result.output)


def test_worker_takes_the_tokenizer_from_the_flag_or_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, served: list[WorkerSettings]
) -> None:
    seen = served
    base = ["worker", "--redis", "redis://127.0.0.1:9/0", "--backend", UNUSED, "--backend-kind", "triton"]
    result = CliRunner().invoke(app, [*base, "--tokenizer", str(tmp_path)])
    assert result.exit_code == 0, result.output
    monkeypatch.setenv("MRSA_TOKENIZER", str(tmp_path / "env"))
    get_settings.cache_clear()
    result = CliRunner().invoke(app, base)
    assert result.exit_code == 0, result.output
    assert [c.tokenizer for c in seen] == [tmp_path, tmp_path / "env"]


def test_backend_kind_is_checked() -> None:
    result = CliRunner().invoke(app, ["backend", "--kind", "nope"])
    assert result.exit_code == 2
    assert "unknown" in result.output and "local" in result.output and "triton" in result.output


# -- the worker's settings: one model, flags over the environment over the defaults ---------------


def worker(*flags: str) -> Any:
    return CliRunner().invoke(app, ["worker", *flags])


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
    settings = args["settings"]
    assert settings.backend_url == UNUSED and settings.backend_kind == "vllm"
    assert (settings.http_options().timeout_s, settings.http_options().max_retries) == (5, 0)
    assert settings.backend_priority is True
    result = CliRunner().invoke(app, ["solve", "--backend", UNUSED, "--timeout", "-1", "What is 7*6?"])
    assert result.exit_code == 2 and "timeout: Input should be greater than 0" in result.output


def test_serve_lays_its_flags_on_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import mrsa.api.app

    apps: list[Settings] = []
    monkeypatch.setattr(mrsa.api.app, "create_app", lambda settings: apps.append(settings) or object())
    monkeypatch.setattr("mrsa.api.server.run_server", lambda app, **kw: True)
    monkeypatch.setenv("MRSA_API_MAX_ACTIVE_JOBS", "3")
    monkeypatch.setenv("MRSA_API_MAX_PROBLEM_BYTES", "500")
    monkeypatch.setenv("MRSA_API_PASSTHROUGH_IDLE_S", "7.5")
    monkeypatch.setenv("MRSA_API_PASSTHROUGH_MAX_BYTES", "4096")
    monkeypatch.setenv("MRSA_REDIS_URL", REDIS)
    result = CliRunner().invoke(
        app,
        ["serve", "--max-problem-bytes", "10", "--context-length", "2048", "--passthrough-max-bytes", "2048"],
    )
    assert result.exit_code == 0, result.output
    [s] = apps
    assert (s.api_max_active_jobs, s.api_max_problem_bytes, s.backend_context_length) == (3, 10, 2048)
    assert (s.api_passthrough_idle_s, s.api_passthrough_max_bytes) == (7.5, 2048)
    assert s.redis_url == REDIS and s.allow_no_auth is False
    monkeypatch.setenv("MRSA_BACKEND_KIND", "nope")
    result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 2 and "MRSA_BACKEND_KIND: unknown 'nope'" in " ".join(result.output.split())
