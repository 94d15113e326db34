"""Flags shared by the commands (:mod:`mrsa.cli.options`): backend concurrency stays the server's
unless the user sets one, and the help shows the environment variables."""

from __future__ import annotations

import importlib
import inspect
import os
import re
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from mrsa.backends.base import BackendError
from mrsa.backends.http import HttpOptions, with_default_concurrency
from mrsa.cli import app, bench_cmd
from mrsa.cli.common import settings_from_flags
from mrsa.settings import Settings, get_settings

solve_cmd = importlib.import_module("mrsa.cli.solve")  # mrsa.cli.solve is also the command function
SERVER_CAPACITY = 64  # what a backend would report (vLLM: far more than the old fixed 8)
UNUSED = "http://127.0.0.1:9"  # never contacted: the run itself is replaced


@pytest.fixture(autouse=True)
def clean_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in [k for k in os.environ if k.startswith("MRSA_")]:
        monkeypatch.delenv(key)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def capture_options(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[HttpOptions]:
    """Replace ``module.name`` (the command's async run) with one that records its ``options`` and
    fails like an unreachable backend, so the command stops right after building them."""
    real: Callable[..., Coroutine[Any, Any, Any]] = getattr(module, name)
    seen: list[HttpOptions] = []

    async def fake(*args: Any, **kwargs: Any) -> Any:
        seen.append(inspect.signature(real).bind(*args, **kwargs).arguments["options"])
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
    seen = capture_options(monkeypatch, bench_cmd, "_bench")
    result = CliRunner().invoke(app, bench(tmp_path, "--quiet"))
    assert result.exit_code == 1 and "stopped by the test" in result.output, result.output
    [options] = seen
    assert "concurrency" not in options.model_fields_set  # not capped at 8 any more
    assert with_default_concurrency(options, SERVER_CAPACITY).concurrency == SERVER_CAPACITY


def test_bench_concurrency_from_the_flag_or_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen = capture_options(monkeypatch, bench_cmd, "_bench")
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
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import workers.service

    seen: list[Any] = []

    async def fake_serve(config: Any, stop: Any = None) -> None:
        seen.append(config)

    monkeypatch.setattr(workers.service, "serve", fake_serve)
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
