"""Answer clustering under a wall-clock limit (issue 9, item 2): a hostile model answer costs a
bounded time and stands alone in the votes; it never stalls a worker's event loop or the API's.

``9^{9^{9}}`` beside ``42`` makes sympy build a 370-million-digit integer: before the limit, clustering
never returned, froze the worker at 100% CPU (deaf to SIGTERM) and froze the API on the job's result.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

import mrsa.engine.equivalence as equivalence_module
from mrsa.api.app import create_app
from mrsa.api.deps import ApiConfig, ApiDeps, BackendHandle
from mrsa.backends.base import GenerationRequest
from mrsa.domain import Candidate, JobSpec, JobStatus
from mrsa.engine.equivalence import ROUND_LIMITS, Clustering, Equivalence, cluster, equivalent
from mrsa.engine.runner import Engine
from mrsa.params import RSAParams
from mrsa.settings import Settings
from mrsa.store.memory import open_memory
from tests.fakes import FakeBackend
from workers.loop import Worker, WorkerOptions

POISON = "9^{9^{9}}"
LIMIT_S = 2.0
# The documented bound of one round (5 limits) plus process restarts, generous for 2 loaded cores.
ROUND_BOUND_S = ROUND_LIMITS * LIMIT_S + 30
# The event loop must keep turning: no gap between ticks longer than this.
MAX_TICK_GAP_S = 1.5


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


def spec(problem: str, **params: Any) -> JobSpec:
    base: dict[str, Any] = {"population": 3, "subset": 2, "rounds": 1, "budget": 64, "tail": 16, "seed": 3}
    base.update(params)
    return JobSpec(problem=problem, params=RSAParams.model_validate(base))


@pytest.mark.timeout(240)
async def test_a_job_with_a_runaway_answer_finishes_while_other_jobs_flow(limited: Equivalence) -> None:
    store, queue = open_memory()
    backend = FakeBackend(hostile_script)
    engine = Engine(store, backend, limited)
    options = WorkerOptions(capacity=2, block_ms=20, cancel_check_s=0.05, heartbeat_s=0.2, shutdown_grace_s=5)
    stop = asyncio.Event()
    worker = asyncio.create_task(Worker(engine, queue, options).run(stop))
    try:
        async with Ticker() as ticker:
            started = time.monotonic()
            poisoned = await engine.submit(spec("HOSTILE: what is 6*7?", rounds=0))
            others = [await engine.submit(spec(f"What is {i}*7?")) for i in range(3)]
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
    # A cancelled job has no stored result: the API builds one, clustering its answers.
    monkeypatch.setattr(equivalence_module, "_SHARED", limited)
    store, queue = open_memory()
    key = "equiv-test-key-41c2"
    deps = ApiDeps(store=store, queue=queue, backend=BackendHandle(None), config=ApiConfig(api_keys=[key]))
    headers = {"Authorization": f"Bearer {key}"}
    async with api_client(deps) as api:
        body = {
            "problem": "HOSTILE",
            "params": {"population": 3, "subset": 2, "rounds": 0, "budget": 64, "tail": 16},
        }
        r = await api.post("/v1/jobs", json=body, headers=headers)
        assert r.status_code in (200, 201, 202), r.text
        job_id = r.json()["id"]
        for i, answer in enumerate([POISON, "42"]):
            await store.save_candidate(
                job_id, Candidate(round=0, index=i, answer=answer, finish_reason="stop")
            )
        assert (await api.post(f"/v1/jobs/{job_id}/cancel", headers=headers)).status_code == 200
        async with Ticker() as ticker:
            started = time.monotonic()
            r = await api.get(f"/v1/jobs/{job_id}/result", headers=headers)
            elapsed = time.monotonic() - started
    assert r.status_code == 200, r.text
    assert elapsed < ROUND_BOUND_S
    assert ticker.max_gap < MAX_TICK_GAP_S, f"the API's event loop stalled {ticker.max_gap:.1f}s"
    result = r.json()
    assert result["status"] == "cancelled"
    assert sorted(v["answer"] for v in result["rounds"][0]["votes"]) == sorted([POISON, "42"])
    assert result["rounds"][0]["equivalence_timeouts"] >= 1
