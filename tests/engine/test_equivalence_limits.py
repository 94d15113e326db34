"""Answer clustering under a wall-clock limit (issue 9, item 2): a hostile model answer costs a
bounded time and stands alone in the votes; it never stalls a worker's event loop or the API's.

``9^{9^{9}}`` beside ``42`` makes sympy build a 370-million-digit integer: before the limit, clustering
never returned, froze the worker at 100% CPU (deaf to SIGTERM) and froze the API on the job's result.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

import mrsa.engine.equivalence as equivalence_module
from mrsa.api.app import create_app
from mrsa.api.deps import ApiConfig, ApiDeps, BackendHandle
from mrsa.backends.base import GenerationRequest
from mrsa.cli.settings import Settings
from mrsa.domain import Candidate, JobStatus
from mrsa.engine.equivalence import ROUND_LIMITS, Clustering, Equivalence, cluster, equivalent
from mrsa.engine.job_service import JobService
from mrsa.engine.runner import TaskRunner
from mrsa.servers.server_process import free_port
from mrsa.store.memory import MemoryStore
from testkit.processes import Child, child_processes, clean_env, http_ok
from testkit.simulator.process import running_simulator
from tests.fakes import FakeBackend
from tests.plugins.redis_server import RedisServer
from tests.support.builders import job_spec
from workers.loop import Worker, WorkerOptions

POISON = "9^{9^{9}}"
LIMIT_S = 3.0  # generous: a benign call must fit even on a loaded machine
# The documented bound of one round (5 limits) plus process restarts, generous for 2 loaded cores.
ROUND_BOUND_S = ROUND_LIMITS * LIMIT_S + 30
# The event loop must keep turning: no gap between ticks longer than this.
MAX_TICK_GAP_S = 3.0  # a loaded machine can pause a process; a blocked loop never ticks


@pytest.fixture(scope="module")
def limited() -> Iterator[Equivalence]:
    eq = Equivalence(timeout_s=LIMIT_S, workers=1)
    try:
        yield eq
    finally:
        eq.close()


class Ticker:
    """A coroutine that ticks every 50 ms: the largest gap shows whether the loop was blocked."""

    def __init__(self) -> None:
        self.ticks = 0
        self.max_gap = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            self.max_gap = max(self.max_gap, now - last)
            self.ticks += 1
            last = now

    async def __aenter__(self) -> Ticker:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@pytest.fixture(autouse=True)
def fresh_memory(limited: Equivalence) -> None:
    """Each test starts with no runaway and no verdict known (the pool is shared to save its
    start-up)."""
    limited.forget_runaways()
    limited.forget_verdicts()


# -- the clustering ------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_a_runaway_answer_is_its_own_class_within_the_limit(limited: Equivalence) -> None:
    started = time.monotonic()
    got = limited.cluster([POISON, "42", "42.0", "\\frac{84}{2}"])
    assert time.monotonic() - started < ROUND_BOUND_S
    assert got == Clustering(groups=[[0], [1, 2, 3]], timeouts=1)
    # the pool was recycled and works again
    assert limited.cluster(["0.5", "1/2", "3"]) == Clustering(groups=[[0, 1], [2]])


@pytest.mark.timeout(180)
def test_a_known_runaway_costs_no_limit_the_next_time(limited: Equivalence) -> None:
    """A running round is clustered again as its candidates arrive: a runaway found once stands
    alone at once the next time, with the same classes."""
    answers = [POISON, "42", "\\frac{84}{2}", "41"]
    first = limited.cluster(answers)
    started = time.monotonic()
    again = limited.cluster([*answers, "42.0"])
    elapsed = time.monotonic() - started
    assert first == Clustering(groups=[[0], [1, 2], [3]], timeouts=1)
    assert again == Clustering(groups=[[0], [1, 2, 4], [3]], timeouts=1)
    assert elapsed < LIMIT_S, f"{elapsed:.1f}s: the runaway was compared again"
    limited.forget_runaways()
    started = time.monotonic()
    assert limited.cluster(answers) == first
    assert time.monotonic() - started >= LIMIT_S  # forgotten: it costs its limit again


@pytest.mark.timeout(180)
def test_several_runaways_still_end_within_the_bound(limited: Equivalence) -> None:
    answers = [POISON, "8^{8^{8}}", "42", "7^{7^{9}}", "42", "0.5", "1/2"]
    started = time.monotonic()
    got = limited.cluster(answers)
    assert time.monotonic() - started < ROUND_BOUND_S
    assert [0] in got.groups and [1] in got.groups and [3] in got.groups
    assert [2, 4] in got.groups  # identical answers are one class without math-verify
    assert got.timeouts >= 3
    assert sorted(i for g in got.groups for i in g) == list(range(len(answers)))


@pytest.mark.timeout(120)
def test_the_bounded_clustering_agrees_with_the_in_process_one(limited: Equivalence) -> None:
    answers = ["\\frac{1}{2}", "42", "0.5", "7", "1/2", "42.0", " 7 ", "x+1", "1+x"]
    assert limited.cluster(answers) == Clustering(groups=cluster(answers))
    assert limited.cluster([]) == Clustering(groups=[])
    assert limited.cluster(["5", " 5"]) == Clustering(groups=[[0, 1]])


@pytest.mark.timeout(120)
def test_oversized_answers_are_compared_as_normalised_strings(limited: Equivalence) -> None:
    # a 200 KB boxed sum (froze a worker 14 s): equal to 100000, but never parsed
    big = "+".join(["1"] * 100_000)
    started = time.monotonic()
    assert not equivalent(big, "100000")
    assert equivalent(big, big + " ")
    got = limited.cluster([big, "2", big + " ", "100000", "2.0"])
    assert time.monotonic() - started < LIMIT_S
    assert got == Clustering(groups=[[0, 2], [1, 4], [3]], oversized=1)


@pytest.mark.timeout(120)
async def test_a_round_clustered_again_runs_inline_once_its_verdicts_are_known(
    limited: Equivalence, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker clusters a round each time a candidate arrives: the comparisons the pool made are
    remembered, so a later clustering over answers already compared calls no pool, with the
    classes the pool would give."""
    calls: list[object] = []
    run_many = limited.pool.run_many

    def counted(*args: Any, **kwargs: Any) -> list[tuple[Any] | None]:
        calls.append(args)
        return run_many(*args, **kwargs)

    monkeypatch.setattr(limited.pool, "run_many", counted)
    answers = ["\\frac{1}{2}", "42", "0.5", "7"]
    assert await limited.acluster(answers) == Clustering(groups=cluster(answers))
    assert len(calls) == 1
    grown = [*answers, " 7 ", "42", "0.5"]  # new candidates, every normal form compared before
    assert await limited.acluster(grown) == Clustering(groups=cluster(grown))
    assert limited.cluster(grown) == Clustering(groups=cluster(grown))
    assert len(calls) == 1, "a clustering whose comparisons are all known called the pool"
    more = [*grown, "x+1"]  # a new answer: its comparisons are not known
    assert await limited.acluster(more) == Clustering(groups=cluster(more))
    assert len(calls) == 2
    # A lower-indexed candidate arriving later turns the classes' order round: two plain numbers
    # were compared both ways, so that needs no pool either.
    turned = ["7", "42", " 7 "]
    assert await limited.acluster(turned) == Clustering(groups=cluster(turned))
    assert len(calls) == 2
    limited.forget_verdicts()
    assert limited.cluster(answers) == Clustering(groups=cluster(answers))
    assert len(calls) == 3


def test_a_pool_that_cannot_run_leaves_the_answers_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    eq = Equivalence(timeout_s=LIMIT_S)

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("the equivalence processes failed to start")

    monkeypatch.setattr(eq.pool, "run_many", broken)
    got = eq.cluster(["0.5", "1/2", "0.5 "])
    assert got == Clustering(groups=[[0, 2], [1]], timeouts=2)


ORPHAN_SCRIPT = """
import os, signal, sys, threading, time
from mrsa.engine.equivalence import Equivalence

if __name__ == "__main__":
    eq = Equivalence(timeout_s=600)
    threading.Thread(target=eq.cluster, args=([sys.argv[1], "42"],), daemon=True).start()
    time.sleep(float(sys.argv[2]))
    children = os.popen(f"pgrep -P {os.getpid()}").read().split()
    grandchildren = [g for c in children for g in os.popen(f"pgrep -P {c}").read().split()]
    print(" ".join(children + grandchildren), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
@pytest.mark.timeout(120)
def test_no_orphan_goes_on_computing_when_its_owner_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "owner.py"
    script.write_text(ORPHAN_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), POISON, "8"], capture_output=True, text=True, timeout=90, env=_env()
    )
    assert proc.returncode == -9, proc.stderr
    started = [int(pid) for pid in proc.stdout.split()]
    assert len(started) >= 2, "the owner had not started its fork server and pool worker"
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in started) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in started if _alive(pid)], "pool processes outlived their owner"


@pytest.mark.timeout(120)
async def test_clustering_runs_off_the_event_loop(limited: Equivalence) -> None:
    async with Ticker() as ticker:
        got = await asyncio.wait_for(limited.acluster([POISON, "42"]), ROUND_BOUND_S)
    assert got.groups == [[0], [1]] and got.timeouts >= 1
    assert ticker.ticks > 0 and ticker.max_gap < MAX_TICK_GAP_S


# -- a job: the engine and its worker ------------------------------------------------------------


def hostile_script(request: GenerationRequest) -> str:
    """Candidate 0 of a problem that asks for it answers the runaway; the rest answer 42."""
    hostile = "HOSTILE" in str(request.messages[0].content) and request.tag.get("index") == 0
    return f"Thinking it over, the answer is \\boxed{{{POISON if hostile else '42'}}}"


spec = partial(
    job_spec, params={"population": 3, "subset": 2, "rounds": 1, "budget": 64, "tail": 16, "seed": 3}
)


@pytest.mark.timeout(240)
async def test_a_job_with_a_runaway_answer_finishes_while_other_jobs_flow(limited: Equivalence) -> None:
    store = MemoryStore()
    backend = FakeBackend(hostile_script)
    jobs = JobService(store, limited)
    options = WorkerOptions(capacity=2, block_ms=20, cancel_check_s=0.05, heartbeat_s=0.2, shutdown_grace_s=5)
    stop = asyncio.Event()
    worker = asyncio.create_task(Worker(TaskRunner(jobs, backend), store, options).run(stop))
    try:
        async with Ticker() as ticker:
            started = time.monotonic()
            poisoned = await jobs.submit(spec("HOSTILE: what is 6*7?", rounds=0))
            others = [await jobs.submit(spec(f"What is {i}*7?")) for i in range(3)]
            done: dict[str, float] = {}
            while len(done) < 4 and time.monotonic() - started < 2 * ROUND_BOUND_S:
                for job in (poisoned, *others):
                    got = await store.get_job(job.id)
                    if job.id not in done and got is not None and got.status.terminal:
                        done[job.id] = time.monotonic() - started
                await asyncio.sleep(0.05)
        assert len(done) == 4, f"jobs still running after {2 * ROUND_BOUND_S:.0f}s: {done}"
        assert done[poisoned.id] < ROUND_BOUND_S
        assert ticker.max_gap < MAX_TICK_GAP_S, f"the event loop stalled {ticker.max_gap:.1f}s"
        result = await store.get_result(poisoned.id)
        assert result is not None and result.status == JobStatus.succeeded
        assert result.answer == "42"
        assert [(v.answer, v.count) for v in result.votes] == [("42", 2), (POISON, 1)]
        assert result.rounds[0].equivalence_timeouts == 1
        assert any("could not be compared" in w for w in result.warnings)
        for job in others:
            other = await store.get_result(job.id)
            assert other is not None and other.status == JobStatus.succeeded and other.answer == "42"
            assert other.warnings == []
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)


# -- the API's result path -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def api_client(deps: ApiDeps) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(), deps)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test", timeout=120) as client:
        yield client


@pytest.mark.timeout(180)
async def test_the_result_of_a_cancelled_poisoned_job_is_bounded(
    limited: Equivalence, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cancelled job has no stored result: the API builds one from the votes its workers stored
    # with each round (it clustered the answers on every read: 11.4 s with a hostile one).
    monkeypatch.setattr(equivalence_module, "_SHARED", limited)
    store = MemoryStore()
    key = "equiv-test-key-41c2"
    deps = ApiDeps(store=store, backend=BackendHandle(None), config=ApiConfig(api_keys=[key]))
    headers = {"Authorization": f"Bearer {key}"}
    async with api_client(deps) as api:
        body = {
            "problem": "HOSTILE",
            "params": {"population": 3, "subset": 2, "rounds": 0, "budget": 64, "tail": 16},
        }
        r = await api.post("/v1/jobs", json=body, headers=headers)
        assert r.status_code in (200, 201, 202), r.text
        job_id = r.json()["id"]
        for i, answer in enumerate([POISON, "42"]):  # as a worker saves them
            await store.save_candidate(
                job_id, Candidate(round=0, index=i, answer=answer, finish_reason="stop")
            )
            await JobService(store, limited).tally(job_id, 0)
        assert (await api.post(f"/v1/jobs/{job_id}/cancel", headers=headers)).status_code == 200
        async with Ticker() as ticker:
            started = time.monotonic()
            r = await api.get(f"/v1/jobs/{job_id}/result", headers=headers)
            elapsed = time.monotonic() - started
    assert r.status_code == 200, r.text
    assert elapsed < 1.0  # read, not clustered: clustering POISON costs at least one limit (3 s)
    assert ticker.max_gap < MAX_TICK_GAP_S, f"the API's event loop stalled {ticker.max_gap:.1f}s"
    result = r.json()
    assert result["status"] == "cancelled"
    assert sorted(v["answer"] for v in result["rounds"][0]["votes"]) == sorted([POISON, "42"])
    assert result["rounds"][0]["equivalence_timeouts"] >= 1


# -- as a user runs it: separate processes on the simulator ----------------------------------------

KEY = "equiv-e2e-key-7a90"
SIM_FLAGS = ["--max-num-seqs=8", "--step-base-ms=0.2", "--median-tokens=60", "--max-model-len=4096"]
MRSA = [sys.executable, "-m", "mrsa"]
WORKER_FLAGS = ["--backend-kind", "vllm", "--concurrency", "4", "--consumer", "equiv-w1"]
SMALL = [
    "--seed",
    "5",
    "--preset",
    "smoke",
    "--population",
    "4",
    "--subset",
    "2",
    "--rounds",
    "0",
    "--budget",
    "256",
]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MRSA_")}
    env.update(extra)
    return env


@pytest.mark.timeout(300)
def test_mrsa_solve_prints_no_math_verify_noise() -> None:
    # math-verify warned "Timeout is disabled…" (twice) into `make demo`'s output.
    with running_simulator(SIM_FLAGS) as sim:
        proc = subprocess.run(
            [*MRSA, "solve", "--backend", sim, "--backend-kind", "vllm", "--json", *SMALL, "What is 2+2?"],
            capture_output=True,
            text=True,
            timeout=240,
            env=_env(),
        )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert len(result["votes"]) >= 2, "the run must need math-verify to cluster its answers"
    assert "Timeout is disabled" not in proc.stderr
    assert "math_verify" not in proc.stderr and "math-verify" not in proc.stderr


class HealthProbe:
    """Asks ``/healthz`` every 0.2 s from a thread: the slowest answer and every failure."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.slowest = 0.0
        self.failures: list[str] = []
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    r = client.get(f"{self.url}/healthz")
                    if r.status_code != 200:
                        self.failures.append(f"{r.status_code} {r.text[:200]}")
                    else:
                        self.answered += 1
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                self.slowest = max(self.slowest, time.monotonic() - started)
                self._stop.wait(0.2)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


@pytest.mark.redis
@pytest.mark.timeout(600)
def test_a_worker_given_a_runaway_answer_finishes_the_job_and_keeps_serving(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The issue's done-when: a worker given 9^{9^{9}} finishes that job within the documented
    limit while other jobs keep flowing; the API's /healthz answers throughout."""
    limit = {"MRSA_EQUIVALENCE_TIMEOUT_S": str(LIMIT_S)}

    def wait_for(what: str, condition: Any, within: float, child: Child) -> None:
        child.wait_until(what, condition, within)

    def api_ready(url: str) -> bool:
        return http_ok(f"{url}/readyz")

    with (
        running_simulator([*SIM_FLAGS, f"--hostile-answer={POISON}", "--correct-share=0.5"]) as sim,
        child_processes(tmp_path, env=clean_env(**limit)) as start,
    ):
        port = free_port()
        api_url = f"http://127.0.0.1:{port}"
        api = start(
            "api",
            ["-m", "mrsa", "serve", "--port", str(port), "--redis", redis_server.url, "--api-keys", KEY],
        )
        wait_for("mrsa serve ready", lambda: api_ready(api_url), 60, api)
        worker = start(
            "worker",
            ["-m", "mrsa", "worker", "--redis", redis_server.url, "--backend", sim, *WORKER_FLAGS],
        )
        wait_for("worker ready", lambda: " ready: " in worker.log, 60, worker)
        headers = {"Authorization": f"Bearer {KEY}"}
        params = {"population": 4, "subset": 2, "rounds": 0, "budget": 256, "tail": 64, "seed": 1}

        def submit(client: httpx.Client, problem: str, **overrides: Any) -> str:
            body = {"problem": problem, "preset": "smoke", "params": {**params, **overrides}}
            r = client.post(f"{api_url}/v1/jobs", json=body, headers=headers)
            assert r.status_code in (200, 201, 202), r.text
            job_id: str = r.json()["id"]
            return job_id

        def status(client: httpx.Client, job_id: str) -> str:
            r = client.get(f"{api_url}/v1/jobs/{job_id}", headers=headers)
            assert r.status_code == 200, r.text
            state: str = r.json()["status"]
            return state

        with httpx.Client(timeout=30) as client, HealthProbe(api_url) as health:
            started = time.monotonic()
            poisoned = submit(client, "HOSTILE: what is 6*7?")
            others = [submit(client, f"What is {i}*7?", rounds=1) for i in range(4)]
            finished: dict[str, float] = {}
            deadline = started + 4 * ROUND_BOUND_S
            while len(finished) < 1 + len(others) and time.monotonic() < deadline:
                for job_id in (poisoned, *others):
                    if job_id not in finished and status(client, job_id) in (
                        "succeeded",
                        "failed",
                        "cancelled",
                    ):
                        finished[job_id] = time.monotonic() - started
                time.sleep(0.2)
            # and the worker keeps taking new work after the poisoned job
            late = submit(client, "What is 9*7?")
            wait_for(
                "a job submitted after the poisoned one",
                lambda: status(client, late) == "succeeded",
                120,
                worker,
            )
            results = {
                j: client.get(f"{api_url}/v1/jobs/{j}/result", headers=headers) for j in (poisoned, *others)
            }
        assert len(finished) == 1 + len(others), (
            f"unfinished after {4 * ROUND_BOUND_S:.0f}s:\n{worker.log[-3000:]}"
        )
        assert finished[poisoned] < ROUND_BOUND_S + 60  # the documented bound plus the job itself
        assert health.failures == [] and health.answered > 0
        assert health.slowest < 5.0, f"/healthz took {health.slowest:.1f}s"
        for r in results.values():
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "succeeded", r.json().get("error")
        poisoned_result = results[poisoned].json()
        answers = poisoned_result["rounds"][0]["candidates"]
        assert POISON in [c["answer"] for c in answers] and any(c["answer"] != POISON for c in answers)
        assert poisoned_result["rounds"][0]["equivalence_timeouts"] >= 1
        assert poisoned_result["warnings"]
        assert worker.proc.poll() is None
        metrics = httpx.get(f"{api_url}/metrics", timeout=10).text
        assert "mrsa_jobs" in metrics  # the API still serves its other routes

        # SIGTERM while a worker clusters a poisoned round (it used to be deaf to it): it finishes
        # that job within its grace period and exits. A fresh worker: this one remembers the
        # runaway answer, and a task clusters its round as soon as its candidate is stored.
        worker.stop()
        fresh = [*WORKER_FLAGS[:-1], "equiv-w2"]
        worker = start(
            "worker2", ["-m", "mrsa", "worker", "--redis", redis_server.url, "--backend", sim, *fresh]
        )
        wait_for("the second worker ready", lambda: " ready: " in worker.log, 60, worker)
        with httpx.Client(timeout=30) as client:
            again = submit(client, "HOSTILE: what is 7*6?", seed=2)

            def clustering() -> bool:  # its candidates are being stored (and their round clustered)
                job = client.get(f"{api_url}/v1/jobs/{again}", headers=headers).json()
                return bool(job["status"] != "queued" and (job["progress"]["done"] or 0) >= 1)

            wait_for("the second poisoned job's candidates", clustering, 120, worker)
            worker.proc.send_signal(signal.SIGTERM)
            try:
                code = worker.proc.wait(timeout=ROUND_BOUND_S + 30)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"the worker ignored SIGTERM:\n{worker.log[-3000:]}") from None
            assert code == 0, worker.log[-3000:]
            assert status(client, again) == "succeeded", worker.log[-3000:]
