"""mrsa on five hosts of its own: network namespaces on one bridge (:mod:`tests.netns`).

Redis (a master, its replica and three Sentinels) on one host, ``mrsa serve`` on another, two
``mrsa worker`` on two more, the simulator (the backend) on a fifth; every address is in the
private range the test creates. Jobs go in through the API. One worker's link is cut while it holds
tasks and healed after the other has reclaimed them; then the Redis master is killed and Sentinel
promotes the replica. Every job still succeeds with exactly N candidates per round, each stored
once. Namespaces and processes are removed by name and PID in ``finally`` (and ``atexit``).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mrsa.cli.settings import Settings
from mrsa.servers.server_process import free_port
from mrsa.store.opening import open_store
from mrsa.store.redis import GROUP, RedisStore
from testkit.processes import Child, child_processes, clean_env, http_ok
from tests.netns import Hosts, NetnsUnavailable
from tests.sentinel_group import SentinelGroup
from tests.workers.test_workers import assert_complete, until, wait_terminal

pytestmark = [pytest.mark.redis]

KEY = "netns-key-8d21"
HOST_NAMES = ("redis", "api", "worker1", "worker2", "backend")
POPULATION, ROUNDS, BUDGET = 4, 1, 24
STEP_MS = 100  # every generation runs to max_tokens: BUDGET steps of 100 ms, 2.4 s per candidate
JOBS = 4


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    created = Hosts(HOST_NAMES)
    try:
        created.create()
    except NetnsUnavailable as exc:
        pytest.fail(f"this test needs network namespaces: {exc}", pytrace=False)
    try:
        yield created
    finally:
        created.remove()


def _kill_on_exit(child: Child) -> Child:
    """An interrupted run (no ``finally``) still ends the child, by its PID."""

    def kill() -> None:
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGKILL)

    atexit.register(kill)
    return child


async def _pending(store: RedisStore, consumer: str | None) -> list[dict[str, Any]]:
    """The task stream's pending entries (of ``consumer``, or everyone's)."""
    rows = await store.client.xpending_range("mrsa:tasks", GROUP, "-", "+", 1000, consumername=consumer)
    return list(rows)


async def _get(client: httpx.AsyncClient, url: str) -> Any:
    """``GET url`` (through the API), waiting out a 503 while Redis fails over."""
    deadline = time.monotonic() + 30
    while True:
        reply = await client.get(url, headers={"Authorization": f"Bearer {KEY}"})
        if reply.status_code == 200:
            return reply.json()
        if reply.status_code != 503 or time.monotonic() > deadline:
            raise AssertionError(f"GET {url}: {reply.status_code} {reply.text}")
        await asyncio.sleep(0.3)


@pytest.mark.timeout(180)
async def test_partition_heal_and_redis_failover_across_five_hosts(tmp_path: Path, hosts: Hosts) -> None:
    group = SentinelGroup(
        tmp_path / "redis", sentinels=3, redis_host=hosts.address("redis"), launcher=hosts.launcher("redis")
    )
    atexit.register(group.stop)
    async with contextlib.AsyncExitStack() as stack:
        try:
            group.start()
        except RuntimeError as exc:
            pytest.fail(str(exc), pytrace=False)
        stack.callback(group.stop)
        start = stack.enter_context(child_processes(tmp_path, clean_env()))
        redis_url = group.url()

        sim_url = f"http://{hosts.address('backend')}:{free_port()}"
        sim_flags = [f"--step-base-ms={STEP_MS}", "--step-per-seq-ms=0", "--prefill-ms-per-token=0"]
        simulator = _kill_on_exit(
            start(
                "simulator",
                ["-m", "testkit.simulator", "--host", hosts.address("backend"),
                 "--port", sim_url.rsplit(":", 1)[1], *sim_flags, "--runaway-share=1"],
                launcher=hosts.launcher("backend"),
            )
        )  # fmt: skip
        api_url = f"http://{hosts.address('api')}:{free_port()}"
        api = _kill_on_exit(
            start(
                "api",
                ["-m", "mrsa", "serve", "--host", hosts.address("api"), "--port", api_url.rsplit(":", 1)[1],
                 "--redis", redis_url, "--api-keys", KEY, "--backend", sim_url, "--backend-kind", "vllm"],
                launcher=hosts.launcher("api"),
            )
        )  # fmt: skip
        workers = {
            name: _kill_on_exit(
                start(
                    name,
                    ["-m", "mrsa", "worker", "--redis", redis_url, "--backend", sim_url,
                     "--backend-kind", "vllm", "--concurrency", "4", "--consumer", name,
                     "--reclaim-idle", "2", "--heartbeat", "0.5", "--shutdown-grace", "2"],
                    launcher=hosts.launcher(name),
                )
            )
            for name in ("worker1", "worker2")
        }  # fmt: skip
        simulator.wait_until("the simulator answers", lambda: http_ok(f"{sim_url}/health"), 60)
        api.wait_until("mrsa serve is ready", lambda: http_ok(f"{api_url}/readyz"), 60)
        for worker in workers.values():
            worker.wait_for_log(" ready: ", 60)

        params = {"population": POPULATION, "subset": 2, "rounds": ROUNDS, "budget": BUDGET, "tail": 12}
        ids = []
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=30))
        for i in range(JOBS):
            reply = await http.post(
                f"{api_url}/v1/jobs",
                json={"problem": f"What is {i} + {i + 1}?", "preset": "smoke", "params": params},
                headers={"Authorization": f"Bearer {KEY}"},
            )
            assert reply.status_code in (200, 201, 202), reply.text
            ids.append(reply.json()["id"])

        async with open_store(Settings(redis_url=redis_url)) as store:
            assert isinstance(store, RedisStore)

            async def worker1_holds_tasks() -> bool:
                return len(await _pending(store, "worker1")) >= 1

            await until(worker1_holds_tasks, "worker1 to hold a task", within=60)
            hosts.cut("worker1")  # mid-task: its backend requests and Redis commands go nowhere
            held = {row["message_id"] for row in await _pending(store, "worker1")}
            workers["worker2"].wait_for_log("from silent consumers", 30)
            hosts.heal("worker1")

            # Both have run the cut-off tasks now: worker1 resumes its requests and writes late (or
            # worker2 does, second): wait until every one is acked, then the duplicates are in.
            async def held_tasks_acked() -> bool:
                return not held & {row["message_id"] for row in await _pending(store, None)}

            await until(held_tasks_acked, "the cut-off tasks to be finished", within=40)

            jobs = [job for job in [await store.get_job(i) for i in ids] if job is not None]
            assert len(jobs) == JOBS
            running = [j.id for j in jobs if not j.status.terminal]
            assert running, "every job finished before the failover: make the candidates longer"
            old_master = group.master()
            master = group.server_at(old_master)
            assert master.process is not None
            master.process.kill()  # the master dies; the Sentinels promote the replica
            new_master = group.wait_new_master(old_master, 30)
            assert new_master != old_master

            finished = await wait_terminal(store, jobs, within=90)
            for job in finished:
                await assert_complete(store, job)
            # The API followed the failover too: it serves every result.
            for job_id in ids:
                result = await _get(http, f"{api_url}/v1/jobs/{job_id}/result")
                assert [len(r["candidates"]) for r in result["rounds"]] == [POPULATION] * (ROUNDS + 1)
            # Work was done twice (the reclaimed tasks, what the failover lost), stored once.
            served = await _get(http, f"{sim_url}/sim/stats")
            assert served["requests"] > JOBS * POPULATION * (ROUNDS + 1), served

            async def worker1_holds_nothing() -> bool:
                return not await _pending(store, "worker1")

            await until(worker1_holds_nothing, "worker1 to let go of its tasks", within=30)
        for name, worker in workers.items():
            assert worker.proc.poll() is None, f"{name} exited:\n{worker.log_tail()}"
        assert api.proc.poll() is None, api.log_tail()
