"""The composition root is the one function the entry points open their store and backend with:
``mrsa solve``, ``mrsa bench``, ``mrsa worker`` / ``python -m workers`` and ``mrsa serve`` each
hand their settings to :func:`mrsa.runtime.open_runtime`, and nothing else in ``mrsa``,
``workers`` or ``evals`` opens a store or builds a backend client.

(That a setting then reaches every entry point's requests is shown end to end by
``test_runtime_settings_reach``.)"""

from __future__ import annotations

import ast
import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

import evals.session
import mrsa.api.app
import mrsa.runtime
import workers.worker_process
from mrsa.api.settings import ApiSettings
from mrsa.domain import JobSpec
from mrsa.params import RSAParams
from mrsa.runtime import RuntimeSettings
from workers.settings import WorkerSettings

solve_module = __import__("importlib").import_module("mrsa.cli.solve")
ROOT = Path(__file__).resolve().parents[2]
ENTRY_MODULES = [solve_module, evals.session, workers.worker_process, mrsa.api.app]
# What opens a store or builds a backend client; only the root (and the store's own opening) may call these.
OPENERS = {"open_store", "open_backend", "make_backend", "backend_client", "open_runtime"}
ALLOWED = {"mrsa/runtime.py"}


class Opened(Exception):
    """Raised by the recording root: the entry point got as far as opening its runtime."""


def recording_root(calls: list[Any]) -> Callable[..., Any]:
    def open_runtime(settings: RuntimeSettings, **options: Any) -> Any:
        calls.append(settings)
        raise Opened

    return open_runtime


def test_each_entry_module_holds_the_one_root() -> None:
    for module in ENTRY_MODULES:
        assert module.open_runtime is mrsa.runtime.open_runtime, module.__name__


def test_nothing_but_the_root_opens_a_store_or_a_backend() -> None:
    callers = []
    for package in ("mrsa", "workers", "evals"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Call):
                    func = node.func
                    name = (
                        func.id
                        if isinstance(func, ast.Name)
                        else func.attr
                        if isinstance(func, ast.Attribute)
                        else ""
                    )
                    if name in OPENERS and rel not in ALLOWED:
                        callers.append((rel, name))
    entry_files = {
        "mrsa/cli/solve.py",
        "evals/session.py",
        "workers/worker_process.py",
        "mrsa/api/app.py",
    }
    assert {(rel, name) for rel, name in callers if name != "open_runtime"} == set(), callers
    assert {rel for rel, name in callers if name == "open_runtime"} == entry_files


def test_solve_bench_worker_and_serve_hand_their_settings_to_the_root(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[Any] = []
    for module in ENTRY_MODULES:
        monkeypatch.setattr(module, "open_runtime", recording_root(calls))
    url = "http://127.0.0.1:9"
    solve_settings = RuntimeSettings(backend_url=url, backend_routing_header="x-a")
    bench_settings = RuntimeSettings(backend_url=url, backend_priority=True)
    worker_settings = WorkerSettings(redis_url="redis://127.0.0.1:9/0", backend_context_length=512)
    serve_settings = ApiSettings(redis_url="redis://127.0.0.1:9/0", backend_url=url, backend_timeout_s=7)
    spec = JobSpec(problem="x", params=RSAParams())

    with pytest.raises(Opened):
        asyncio.run(solve_module._solve(spec, solve_settings, None, False))
    session = evals.session.SessionOptions()
    with pytest.raises(Opened):
        run = cast(Any, None)
        asyncio.run(
            evals.session.run_session(run, cast(Any, None), [], {}, cast(Any, None), session, bench_settings)
        )
    with pytest.raises(Opened):
        asyncio.run(workers.worker_process.serve(worker_settings, asyncio.Event()))

    async def start_api() -> None:
        app = mrsa.api.app.create_app(serve_settings)
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(app.router.lifespan_context(app))

    with pytest.raises(Opened):
        asyncio.run(start_api())
    assert calls == [solve_settings, bench_settings, worker_settings, serve_settings]
