"""Worker processes (``mrsa worker``) on a real ``redis-server`` and the real embedded model:
load sharing, SIGKILL and reclaim, SIGTERM, a Redis restart mid-job, and backend faults injected
by :mod:`tests.faultproxy`.

Jobs are tiny (N 2–3, β 16–24 tokens) because the embedded model serves one request at a time on
two cores. Every wait polls a condition with a deadline; every started process is killed (by its
PID) in ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mrsa.cli.settings import Settings
from mrsa.domain import Job, JobSpec, JobStatus
from mrsa.engine.job_service import JobService
from mrsa.engine.runner import TaskRunner
from mrsa.params import resolve_params
from mrsa.servers.server_process import free_port
from mrsa.store.base import StoreUnavailable
from mrsa.store.opening import open_store
from mrsa.store.redis import GROUP, RedisStore
from tests.fakes import FakeBackend
from tests.faultproxy import FaultProxy
from tests.plugins.redis_server import RedisServer

pytestmark = [pytest.mark.embedded, pytest.mark.redis]

JOB_TIMEOUT = 240.0
RECLAIM_IDLE = "3"
HEARTBEAT = "1"


_free_port = free_port


def tiny_params(population: int = 2, budget: int = 24) -> Any:
    """``smoke`` cut down to a few seconds per job on the embedded model."""
    return resolve_params("smoke", {"population": population, "subset": 2, "budget": budget, "tail": 16})


@dataclass
class WorkerProc:
    """One ``mrsa worker`` child process."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> dict[str, float]:
        """Scrape the worker's /metrics: ``{"name{label=value,...}": value}`` plus per-name sums."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}"] = sample.value
                out[sample.name] = out.get(sample.name, 0.0) + sample.value
        return out


@dataclass
class Cluster:
    """The workers a test started, and everything needed to start more."""

    redis_url: str
    tmp: Path
    workers: list[WorkerProc] = field(default_factory=list)

    def start(
        self,
        name: str,
        backend_url: str,
        *extra: str,
        kind: str = "llama-cpp-python",
        concurrency: int = 1,
        reclaim_idle: str = RECLAIM_IDLE,
        heartbeat: str = HEARTBEAT,
    ) -> WorkerProc:
        port = _free_port()
        log_path = self.tmp / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MRSA_")}
        cmd = [
            sys.executable,
            "-m",
            "mrsa",
            "worker",
            "--redis",
            self.redis_url,
            "--backend",
            backend_url,
            "--backend-kind",
            kind,
            "--concurrency",
            str(concurrency),
            "--consumer",
            name,
            "--reclaim-idle",
            reclaim_idle,
            "--heartbeat",
            heartbeat,
            "--metrics-port",
            str(port),
            "--metrics-host",
            "127.0.0.1",
            *extra,
        ]
        with log_path.open("wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        worker = WorkerProc(name, proc, log_path, port)
        self.workers.append(worker)
        return worker

    def kill_all(self) -> None:
        for w in self.workers:
            if w.proc.poll() is None:
                w.proc.kill()
        for w in self.workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.proc.wait(timeout=10)


@pytest.fixture
def cluster(redis_server: RedisServer, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(redis_server.url, tmp_path)
    try:
        yield c
    finally:
        c.kill_all()


@contextlib.asynccontextmanager
async def open_redis_store(url: str, **settings: Any) -> AsyncIterator[RedisStore]:
    async with open_store(Settings(redis_url=url, **settings)) as store:
        assert isinstance(store, RedisStore)
        yield store


async def until(
    condition: Callable[[], Awaitable[bool] | bool], what: str, within: float = 60.0, every: float = 0.2
) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            got = condition()
            if not isinstance(got, bool):
                got = await got
            if got:
                return
        except StoreUnavailable:
            pass  # Redis restarting: keep polling
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {within:.0f}s waiting for {what}")


async def wait_ready(*workers: WorkerProc, within: float = 60.0) -> None:
    for w in workers:

        def ready(w: WorkerProc = w) -> bool:
            assert w.proc.poll() is None, f"worker {w.name} exited ({w.proc.returncode}):\n{w.log}"
            return " ready: " in w.log

        await until(ready, f"worker {w.name} to be ready", within)


async def submit(store: RedisStore, n: int, params: Any) -> list[Job]:
    jobs = JobService(store)
    return [await jobs.submit(JobSpec(problem=f"What is {i} + {i + 1}?", params=params)) for i in range(n)]


async def wait_terminal(store: RedisStore, jobs: list[Job], within: float = JOB_TIMEOUT) -> list[Job]:
    done: dict[str, Job] = {}

    async def all_terminal() -> bool:
        for job in jobs:
            if job.id not in done:
                got = await store.get_job(job.id)
                if got is not None and got.status.terminal:
                    done[job.id] = got
        return len(done) == len(jobs)

    await until(all_terminal, f"{len(jobs)} job(s) to finish", within, every=0.5)
    return [done[j.id] for j in jobs]


async def assert_complete(store: RedisStore, job: Job) -> None:
    """Succeeded, and every round holds exactly candidates 0..N-1 (none lost, none duplicated)."""
    got = await store.get_job(job.id)
    assert got is not None and got.status == JobStatus.succeeded, (got.status, got.error) if got else None
    params = job.spec.params
    for r in range(params.rounds + 1):
        indices = [c.index for c in await store.get_candidates(job.id, r)]
        assert indices == list(range(params.population)), (job.id, r, indices)
    result = await store.get_result(job.id)
    assert result is not None and result.status == JobStatus.succeeded
    assert [len(r.candidates) for r in result.rounds] == [params.population] * (params.rounds + 1)
    assert result.usage.requests == params.population * (params.rounds + 1)


async def candidate_events(store: RedisStore, job_id: str) -> list[tuple[int | None, int | None]]:
    events = await store.read_events(job_id, None, block_ms=0, count=10_000)
    return sorted((e.round, e.index) for _, e in events if e.type == "candidate")


async def pending_of(store: RedisStore, consumer: str) -> int:
    rows = await store.client.xpending_range("mrsa:tasks", GROUP, "-", "+", 100, consumername=consumer)
    return len(rows)


# -- tests ----------------------------------------------------------------------------------------


async def test_two_workers_share_three_jobs(
    cluster: Cluster, redis_store: RedisStore, embedded_url: str
) -> None:
    store = redis_store
    a = cluster.start("a", embedded_url)
    b = cluster.start("b", embedded_url)
    await wait_ready(a, b)
    jobs = await submit(store, 3, tiny_params())
    await wait_terminal(store, jobs)
    for job in jobs:
        await assert_complete(store, job)
        # Each candidate was generated exactly once: one candidate event per (round, index).
        assert await candidate_events(store, job.id) == [(r, i) for r in range(2) for i in range(2)]
    done = {w.name: w.metrics().get("mrsa_candidates_total", 0.0) for w in (a, b)}
    assert sum(done.values()) == 12
    assert all(n >= 1 for n in done.values()), f"one worker did all the work: {done}"
    stats = await store.stats()
    assert (stats.queued, stats.in_flight, stats.dead) == (0, 0, 0)
    gauges = a.metrics()
    for name in ("queued", "in_flight", "pending_reclaim", "dead"):
        assert f"mrsa_queue_tasks_{name}" in gauges


async def test_sigkill_mid_task_is_reclaimed_by_the_survivor(
    cluster: Cluster, redis_store: RedisStore, embedded_url: str
) -> None:
    store = redis_store
    victim = cluster.start("victim", embedded_url)
    survivor = cluster.start("survivor", embedded_url)
    await wait_ready(victim, survivor)
    jobs = await submit(store, 2, tiny_params(population=3))
    # The victim is killed while a task of its is in flight (taken, not stored, not acked).
    await until(_has_pending(store, "victim"), "the victim to hold a task", within=30)
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(timeout=10)
    assert await pending_of(store, "victim") >= 1  # left pending in Redis
    await wait_terminal(store, jobs)
    for job in jobs:
        await assert_complete(store, job)
        assert await candidate_events(store, job.id) == [(r, i) for r in range(2) for i in range(3)]
    assert survivor.metrics()["mrsa_tasks_reclaimed_total"] >= 1, survivor.log
    assert "from silent consumers" in survivor.log
    assert await pending_of(store, "victim") == 0


def _has_pending(store: RedisStore, consumer: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await pending_of(store, consumer) >= 1

    return check


async def wait_exit(worker: WorkerProc, within: float) -> int:
    await until(lambda: worker.proc.poll() is not None, f"worker {worker.name} to exit", within)
    return worker.proc.returncode


async def test_sigterm_finishes_the_task_in_flight(
    cluster: Cluster, redis_store: RedisStore, embedded_url: str
) -> None:
    store = redis_store
    leaving = cluster.start("leaving", embedded_url, "--shutdown-grace", "120")
    staying = cluster.start("staying", embedded_url)
    await wait_ready(leaving, staying)
    (job,) = await submit(store, 1, tiny_params(population=3))
    await until(_has_pending(store, "leaving"), "the leaving worker to hold a task", within=30)
    leaving.proc.send_signal(signal.SIGTERM)
    assert await wait_exit(leaving, 120) == 0, leaving.log
    log = leaving.log
    assert "SIGTERM: no new tasks; finishing in-flight ones" in log
    assert "waiting up to 120s for 1 task(s) in flight" in log
    assert "0 released" in log and "Traceback" not in log
    assert await pending_of(store, "leaving") == 0  # finished and acked, nothing left behind
    await wait_terminal(store, [job])
    await assert_complete(store, job)


async def test_sigterm_past_the_grace_period_releases_the_tasks(
    cluster: Cluster, redis_store: RedisStore, embedded_url: str
) -> None:
    store = redis_store
    with FaultProxy(embedded_url, delay_s=120) as hold:  # the leaving worker's requests never end
        leaving = cluster.start("leaving", hold.url, "--shutdown-grace", "0", concurrency=3)
        await wait_ready(leaving)
        hold.fail_always("delay")
        (job,) = await submit(store, 1, tiny_params(population=3))
        await until(lambda: len(hold.injected) >= 3, "the leaving worker to call its backend 3 times", 30)
        staying = cluster.start("staying", embedded_url, reclaim_idle="600", heartbeat="5")
        await wait_ready(staying)
        leaving.proc.send_signal(signal.SIGTERM)
        assert await wait_exit(leaving, 30) == 0, leaving.log
    # All three, in one release (which once gave back only the first of a worker's tasks).
    assert "released 3 unfinished task(s)" in leaving.log, leaving.log
    # Released, not abandoned: the other worker takes them over within seconds although its
    # reclaim timeout (600 s) is far longer than this test.
    await wait_terminal(store, [job], within=120)
    await assert_complete(store, job)
    assert staying.metrics()["mrsa_tasks_reclaimed_total"] == 3


async def test_redis_restart_mid_job(
    cluster: Cluster,
    redis_server: RedisServer,
    redis_store: RedisStore,
    embedded_url: str,
) -> None:
    store = redis_store
    a = cluster.start("a", embedded_url)
    b = cluster.start("b", embedded_url)
    await wait_ready(a, b)
    (job,) = await submit(store, 1, tiny_params(population=3))

    async def started() -> bool:
        return len(await store.get_candidates(job.id, 0)) >= 1

    await until(started, "the first candidate", within=60)
    redis_server.restart()  # AOF (appendfsync always): nothing acknowledged is lost
    await wait_terminal(store, [job])
    await assert_complete(store, job)
    assert a.proc.poll() is None and b.proc.poll() is None, "a worker died with the Redis restart"


@pytest.fixture
def proxy(embedded_url: str) -> Iterator[FaultProxy]:
    with FaultProxy(embedded_url, delay_s=60) as p:
        yield p


async def test_transient_backend_faults_are_retried(
    cluster: Cluster, redis_store: RedisStore, proxy: FaultProxy
) -> None:
    store = redis_store
    w = cluster.start("w", proxy.url, "--timeout", "10", "--retries", "6")
    await wait_ready(w)
    faults: list[Any] = ["503", "500", "drop", "delay", "503"]
    proxy.fail_next(faults)
    (job,) = await submit(store, 1, tiny_params(budget=16))
    await wait_terminal(store, [job])
    await assert_complete(store, job)
    assert [f for f, _ in proxy.injected] == faults
    m = w.metrics()
    assert m["mrsa_backend_retries_total{backend=llama-cpp-python,kind=server}"] >= 3
    assert m["mrsa_backend_retries_total{backend=llama-cpp-python,kind=unavailable}"] >= 2
    assert m.get("mrsa_task_failures_total", 0.0) == 0


@pytest.mark.parametrize(("fault", "message"), [("503", "answered HTTP 503"), ("drop", "cannot connect")])
async def test_a_permanently_failing_backend_fails_the_job(
    cluster: Cluster,
    redis_store: RedisStore,
    proxy: FaultProxy,
    fault: Any,
    message: str,
) -> None:
    store = redis_store
    w = cluster.start("w", proxy.url, "--retries", "2", "--backend-hold", "0")  # no hold: fail at once
    await wait_ready(w)
    proxy.fail_always(fault)
    (job,) = await submit(store, 1, tiny_params(budget=16))
    (done,) = await wait_terminal(store, [job], within=120)
    assert done.status == JobStatus.failed
    assert done.error is not None and proxy.url in done.error and message in done.error, done.error
    assert "after 3 attempts" in done.error
    result = await store.get_result(job.id)
    assert result is not None and result.status == JobStatus.failed and result.error == done.error
    assert w.proc.poll() is None  # the job failed, not the worker
    assert w.metrics()["mrsa_task_failures_total"] >= 1
    assert "failing job" in w.log


async def test_a_task_that_keeps_killing_workers_is_dead_lettered_and_fails_its_job(
    redis_server: RedisServer,
) -> None:
    """In-process: two workers 'died' holding the same task; the next one to find it moves it to
    the dead-letter list and fails the job with a reason saying so."""
    from prometheus_client import REGISTRY

    from workers.loop import Worker, WorkerOptions

    async with open_redis_store(redis_server.url, max_deliveries=2) as store:
        (job,) = await submit(store, 1, tiny_params())
        (doomed,) = await store.take("ghost-1", 1, block_ms=0)
        assert [d.deliveries for d in (await store.reclaim("ghost-2", 0, 1)).deliveries] == [2]
        dead_before = REGISTRY.get_sample_value("mrsa_tasks_dead_lettered_total") or 0.0
        await asyncio.sleep(0.1)
        worker = Worker(
            TaskRunner(JobService(store), FakeBackend()),
            store,
            WorkerOptions(
                reclaim_idle_ms=50, block_ms=50, heartbeat_s=0.02, cancel_check_s=0.05, stats_interval_s=0.05
            ),
            consumer="live",
        )
        stop = asyncio.Event()
        running = asyncio.create_task(worker.run(stop))
        try:
            (done,) = await wait_terminal(store, [job], within=30)
        finally:
            stop.set()
            await asyncio.wait_for(running, 30)
        assert done.status == JobStatus.failed
        assert done.error is not None
        assert f"task {doomed.task.key} was moved to the dead-letter list after 2 deliveries" in done.error
        result = await store.get_result(job.id)
        assert result is not None and result.error == done.error
        assert [d.task for d in await store.dead_letters()] == [doomed.task]
        assert (REGISTRY.get_sample_value("mrsa_tasks_dead_lettered_total") or 0.0) == dead_before + 1
        stats = await store.stats()
        assert (stats.queued, stats.in_flight, stats.dead) == (0, 0, 1)  # the job's other task was skipped
        # The worker publishes the queue gauges from store.stats().
        assert REGISTRY.get_sample_value("mrsa_queue_tasks_dead") == 1
        assert REGISTRY.get_sample_value("mrsa_queue_tasks_queued") == 0


async def test_three_five_minute_candidates_on_two_workers(cluster: Cluster, redis_store: RedisStore) -> None:
    """Issue 9's "done when", at 1/60 of the time scale: a job of three candidates that each run
    "five minutes" (5 s on the simulator, i.e. five reclaim-idle periods of 1 s; the defaults are
    60 s and 10 s heartbeats) on two ``mrsa worker`` with four tasks each succeeds with one
    backend request per candidate, and nothing is reclaimed."""
    from testkit.simulator.process import running_simulator

    store = redis_store
    budget, step_ms = 50, 100  # every generation runs to max_tokens (runaway share 1): 5 s
    flags = [
        f"--step-base-ms={step_ms}",
        "--step-per-seq-ms=0",
        "--prefill-ms-per-token=0",
        "--runaway-share=1",
    ]
    with running_simulator(flags) as sim:
        workers = [
            cluster.start(name, sim, kind="vllm", concurrency=4, reclaim_idle="1", heartbeat="0.3")
            for name in ("a", "b")
        ]
        await wait_ready(*workers)
        params = resolve_params(
            "smoke", {"population": 3, "subset": 2, "rounds": 0, "budget": budget, "tail": 16}
        )
        (job,) = await submit(store, 1, params)
        await wait_terminal(store, [job], within=120)
        async with httpx.AsyncClient(timeout=5) as client:
            served = (await client.get(f"{sim}/sim/stats")).json()
            trace = (await client.get(f"{sim}/sim/trace")).json()["points"]
        reclaimed = {w.name: w.metrics().get("mrsa_tasks_reclaimed_total", 0.0) for w in workers}
    await assert_complete(store, job)
    result = await store.get_result(job.id)
    assert result is not None
    assert [c.decode_tokens for c in result.rounds[0].candidates] == [budget] * 3
    assert result.elapsed_s >= budget * step_ms / 1000  # each candidate ran five idle periods
    assert served["http_requests"]["/v1/chat/completions"] == 3, served
    assert served["requests"] == 3, served
    # All three ran at once, so some worker held at least two long tasks (the case that broke).
    assert max(running for _t, running, _waiting in trace) == 3, trace
    assert reclaimed == {"a": 0.0, "b": 0.0}, [w.log for w in workers]
    assert await candidate_events(store, job.id) == [(0, i) for i in range(3)]


@contextlib.asynccontextmanager
async def inprocess_workers(
    store: RedisStore, backend: FakeBackend, n: int, **options: Any
) -> AsyncIterator[list[Any]]:
    """``n`` in-process workers (consumers ``w0``, ``w1``...) on one Redis, stopped on exit."""
    from workers.loop import Worker, WorkerOptions

    defaults: dict[str, Any] = {"block_ms": 50, "cancel_check_s": 0.2, "stats_interval_s": 0.5}
    workers = [
        Worker(
            TaskRunner(JobService(store), backend),
            store,
            WorkerOptions(**{**defaults, **options}),
            consumer=f"w{i}",
        )
        for i in range(n)
    ]
    stop = asyncio.Event()
    running = [asyncio.create_task(w.run(stop)) for w in workers]
    try:
        yield workers
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*running), 60)


async def test_a_worker_keeps_all_its_long_tasks(redis_server: RedisServer) -> None:
    """Issue 9: the heartbeat kept only the first of a worker's in-flight tasks alive, so a worker
    running several long candidates lost the others to reclaim and they ran twice (and, at ZAYA1
    budgets, were dead-lettered). Two workers, four tasks each at a time, every candidate held by
    the backend for four reclaim-idle periods: nothing is reclaimed, every candidate is requested
    once, the job succeeds."""
    hold_s, idle_ms = 3.2, 800
    async with open_redis_store(redis_server.url) as store:
        backend = FakeBackend(capacity=4)

        async def slow(_request: Any) -> None:
            await asyncio.sleep(hold_s)

        backend.before_answer = slow
        params = resolve_params(
            "smoke", {"population": 4, "subset": 2, "rounds": 1, "budget": 24, "tail": 16}
        )
        (job,) = await submit(store, 1, params)
        async with inprocess_workers(
            store, backend, 2, capacity=4, reclaim_idle_ms=idle_ms, heartbeat_s=0.15
        ) as workers:
            await wait_terminal(store, [job], within=120)
        await assert_complete(store, job)
        requested = sorted((int(r.tag["round"]), int(r.tag["index"])) for r in backend.requests)
        assert requested == [(r, i) for r in range(2) for i in range(4)], "a candidate was requested twice"
        assert [w.reclaimed for w in workers] == [0, 0]
        assert await candidate_events(store, job.id) == [(r, i) for r in range(2) for i in range(4)]
        assert (await store.stats()).dead == 0


async def test_a_worker_whose_heartbeats_lapsed_keeps_running_its_task(redis_server: RedisServer) -> None:
    """Heartbeats that lapse (a store outage longer than the idle timeout; here: none at all) let
    the worker's own reclaim find its running task. It is neither started twice nor, once its
    delivery count passes the maximum, reported dead and its job failed under it."""
    async with open_redis_store(redis_server.url, max_deliveries=2) as store:
        backend = FakeBackend(capacity=2)

        async def slow(_request: Any) -> None:
            await asyncio.sleep(1.5)

        backend.before_answer = slow
        params = resolve_params(
            "smoke", {"population": 1, "subset": 1, "rounds": 0, "budget": 24, "tail": 16}
        )
        (job,) = await submit(store, 1, params)
        async with inprocess_workers(store, backend, 1, capacity=2, reclaim_idle_ms=100, heartbeat_s=60) as (
            worker,
        ):
            (done,) = await wait_terminal(store, [job], within=60)
        assert (done.status, done.error) == (JobStatus.succeeded, None)
        assert len(backend.requests) == 1
        assert worker.reclaimed == 0
        assert (await store.stats()).dead == 0


async def test_a_dead_letter_whose_reclaimer_died_still_fails_its_job(redis_server: RedisServer) -> None:
    """Issue 9: dead-lettering a task and failing its job were two steps; a worker that died in
    between left the job running for ever, its last task gone from the queue. The task now stays
    pending until its job is failed: the next worker to reclaim it fails the job and only then
    moves it to the dead-letter list."""
    async with open_redis_store(redis_server.url, max_deliveries=2) as store:
        (job,) = await submit(store, 1, tiny_params())
        (doomed,) = await store.take("ghost-1", 1, block_ms=0)
        assert [d.deliveries for d in (await store.reclaim("ghost-2", 0, 1)).deliveries] == [2]
        # ghost-3 finds it dead-lettered and dies before failing the job.
        assert [d.task for d in (await store.reclaim("ghost-3", 0, 1)).dead] == [doomed.task]
        got = await store.get_job(job.id)
        assert got is not None and not got.status.terminal
        await asyncio.sleep(0.1)
        async with inprocess_workers(store, FakeBackend(), 1, reclaim_idle_ms=50, heartbeat_s=0.02) as (
            worker,
        ):
            (done,) = await wait_terminal(store, [job], within=20)
        assert done.status == JobStatus.failed
        assert done.error is not None
        assert f"task {doomed.task.key} was moved to the dead-letter list after 2 deliveries" in done.error
        assert [d.task for d in await store.dead_letters()] == [doomed.task]  # once
        stats = await store.stats()
        assert (stats.queued, stats.in_flight, stats.dead) == (0, 0, 1)
        assert worker.reclaimed == 0


async def test_solve_through_redis(redis_server: RedisServer, embedded_url: str) -> None:
    """``mrsa solve --redis`` runs the job through the service's store (it is there afterwards)."""
    import json

    env = {k: v for k, v in os.environ.items() if not k.startswith("MRSA_")}
    env["MRSA_REDIS_URL"] = redis_server.url  # the env twin of --redis
    proc = await asyncio.create_subprocess_exec(
        *[
            sys.executable,
            "-m",
            "mrsa",
            "solve",
            "--backend",
            embedded_url,
            "--backend-kind",
            "llama-cpp-python",
        ],
        *[
            "--preset",
            "smoke",
            "--population",
            "2",
            "--budget",
            "16",
            "--tail",
            "8",
            "--json",
            "What is 2+2?",
        ],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), JOB_TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    result = json.loads(out)
    async with open_redis_store(redis_server.url) as store:
        job = await store.get_job(result["job_id"])
        assert job is not None and job.status == JobStatus.succeeded
        stored = await store.get_result(job.id)
        assert stored is not None and stored.model_dump(mode="json") == result


async def test_a_worker_waits_for_redis_and_leaves_the_group_on_exit(
    cluster: Cluster, redis_server: RedisServer, embedded_url: str
) -> None:
    """Compose starts everything at once: a worker started before Redis waits for it; a clean
    exit removes its (empty) consumer entry from the group."""
    redis_server.stop()
    w = cluster.start("early", embedded_url)
    await until(lambda: "waiting for redis" in w.log, "the worker to wait for redis", within=30)
    redis_server.start()
    await wait_ready(w)
    async with open_redis_store(redis_server.url) as store:

        async def consumers() -> set[str]:
            return {c["name"] for c in await store.client.xinfo_consumers("mrsa:tasks", GROUP)}

        (job,) = await submit(store, 1, tiny_params(budget=16))
        await wait_terminal(store, [job])
        await assert_complete(store, job)
        assert "early" in await consumers()
        w.proc.send_signal(signal.SIGTERM)
        assert await wait_exit(w, 30) == 0, w.log
        assert "early" not in await consumers()
