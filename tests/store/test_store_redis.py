"""The store contract against a real ``redis-server``, plus what only Redis does: TTLs after a job
ends, dead letters, persistence across a restart (AOF), StoreUnavailable when it is down, and the
number of round trips per candidate."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator

import pytest

from mrsa.cli.settings import Settings
from mrsa.domain import JobStatus
from mrsa.store.base import StoreUnavailable
from mrsa.store.opening import open_store
from mrsa.store.redis import RedisStore
from mrsa.urls import redact
from tests.plugins.redis_server import RedisServer
from tests.store_contract import (
    MAX_DELIVERIES,
    SETTINGS,
    StoreContract,
    make_candidate,
    make_job,
    make_result,
    take_all,
    tasks_of,
)

pytestmark = pytest.mark.redis


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    settings = Settings(max_deliveries=MAX_DELIVERIES, retention_s=3600)
    async with open_store(settings.model_copy(update={"redis_url": redis_server.url})) as opened:
        assert isinstance(opened, RedisStore)
        yield opened


class TestRedisStore(StoreContract):
    """The contract on the module's ``store`` fixture."""


async def test_finished_job_keys_get_the_retention_ttl(store: RedisStore) -> None:
    client = store.client
    await store.create_job(make_job("j1"), tasks_of("j1"))
    await store.save_candidate("j1", make_candidate(0, 0))
    await store.save_candidate("j1", make_candidate(1, 0))
    from mrsa.domain import ChunkCheckpoint, Event, RoundVotes

    await store.save_checkpoint("j1", 0, 1, ChunkCheckpoint(chunks=1, text="a"))
    await store.add_event("j1", Event(type="round", job_id="j1", round=1))
    await store.save_round_votes("j1", RoundVotes(round=0, tallied=1, groups=[[0]]))
    keys = sorted(await client.keys("mrsa:job:j1*"))
    assert keys == [
        "mrsa:job:j1",
        "mrsa:job:j1:checkpoints",
        "mrsa:job:j1:events",
        "mrsa:job:j1:round:0",
        "mrsa:job:j1:round:1",
        "mrsa:job:j1:votes",
    ]
    assert all([await client.ttl(k) == -1 for k in keys])  # no expiry while the job runs
    assert await store.finish_job("j1", make_result("j1")) is True
    for key in keys:
        assert 3500 < await client.ttl(key) <= 3600, key
    # Writes after the end (a late duplicate, the "done" event) inherit the TTL instead of leaking.
    await store.save_candidate("j1", make_candidate(2, 0))
    await store.add_event("j1", Event(type="done", job_id="j1"))
    await client.delete("mrsa:job:j1:votes")
    await store.save_round_votes("j1", RoundVotes(round=2, tallied=1, groups=[[0]]))
    for key in ("mrsa:job:j1:round:2", "mrsa:job:j1:events", "mrsa:job:j1:votes"):
        assert 3500 < await client.ttl(key) <= 3600, key
    # An expired job disappears from listings too.
    await client.delete(*await client.keys("mrsa:job:j1*"))
    await store.create_job(make_job("j2"), [])
    assert [j.id for j in await store.list_jobs()] == ["j2"]
    assert await client.zrange("mrsa:jobs", 0, -1) == ["j2"]


async def test_cancelled_job_keys_expire_and_its_queued_tasks_are_delivered(store: RedisStore) -> None:
    await store.create_job(make_job("j1"), tasks_of("j1", n=2))
    assert await store.cancel_job("j1", "no longer needed") is True
    assert 3500 < await store.client.ttl("mrsa:job:j1") <= 3600
    # Documented: Redis does not search the stream on cancel; the tasks come out and are skipped.
    assert [t.job_id for t in await take_all(store)] == ["j1", "j1"]


async def test_dead_letters_are_kept_with_their_delivery_count(store: RedisStore) -> None:
    await store.create_job(make_job("j1"), tasks_of("j1", n=2))
    doomed, fine = await store.take("c1", 2, block_ms=0)
    await store.ack(fine)
    dead = []
    for _ in range(MAX_DELIVERIES):
        dead.extend((await store.reclaim("c2", idle_ms=0, count=5)).dead)
    assert [d.task for d in dead] == [doomed.task]
    assert await store.dead_letters() == []  # until its job is failed
    assert await store.move_to_dead_letters(dead[0]) is True
    letters = await store.dead_letters()
    assert [(d.id, d.task, d.deliveries) for d in letters] == [(doomed.id, doomed.task, MAX_DELIVERIES)]
    # Gone from the stream and from the pending list: never delivered again.
    assert await store.client.xlen("mrsa:tasks") == 0
    assert (await store.reclaim("c3", idle_ms=0, count=5)).deliveries == []


async def test_heartbeat_keeps_a_long_task_from_being_reclaimed(store: RedisStore) -> None:
    await store.create_job(make_job("j1"), tasks_of("j1", n=1))
    (delivery,) = await store.take("c1", 1, block_ms=0)
    for _ in range(5):  # a task running 5 × the idle timeout, heartbeating in between
        await asyncio.sleep(0.1)
        await store.heartbeat("c1", [delivery])
        assert (await store.reclaim("c2", idle_ms=150, count=5)).deliveries == []
    pending = await store.client.xpending_range("mrsa:tasks", "workers", "-", "+", 10)
    assert [(p["consumer"], p["times_delivered"]) for p in pending] == [("c1", 1)]  # no delivery counted
    await asyncio.sleep(0.2)  # silent now: reclaimable
    assert len((await store.reclaim("c2", idle_ms=150, count=5)).deliveries) == 1


async def test_one_heartbeat_and_one_release_cover_thousands_of_tasks(store: RedisStore) -> None:
    """The heartbeat script passes every id to XCLAIM (once only the first: Lua cuts ``unpack``
    short unless it is the last argument), in batches that stay inside Lua's stack."""
    await store.create_job(make_job("j1"), tasks_of("j1", n=2500))
    taken = await store.take("c1", 2500, block_ms=0)
    assert len(taken) == 2500
    await asyncio.sleep(0.15)
    await store.heartbeat("c1", taken)
    assert (await store.reclaim("c2", idle_ms=100, count=5000)).deliveries == []
    await store.release("c1", taken[:1500])
    reclaimed = (await store.reclaim("c2", idle_ms=60_000, count=5000)).deliveries
    assert sorted(d.id for d in reclaimed) == sorted(d.id for d in taken[:1500])


async def test_jobs_tasks_and_pending_entries_survive_a_restart(redis_server: RedisServer) -> None:
    async with open_store(SETTINGS.model_copy(update={"redis_url": redis_server.url})) as store:
        await store.create_job(make_job("j1"), tasks_of("j1", n=3))
        await store.save_candidate("j1", make_candidate(0, 2))
        taken = await store.take("c1", 2, block_ms=0)
        redis_server.restart()
        job = await _retry(store.get_job, "j1")
        assert job is not None and job.id == "j1"
        assert [c.index for c in await store.get_candidates("j1", 0)] == [2]
        assert await store.save_candidate("j1", make_candidate(0, 0)) == 2  # the counter survived
        stats = await store.stats()
        assert (stats.queued, stats.in_flight) == (1, 2)
        reclaimed = (await store.reclaim("c2", idle_ms=0, count=5)).deliveries
        assert sorted(d.id for d in reclaimed) == sorted(d.id for d in taken)
        assert all(d.deliveries == 2 for d in reclaimed)
        assert [d.task.index for d in await store.take("c2", 5, block_ms=0)] == [2]


async def _retry(fn, *args):  # type: ignore[no-untyped-def]
    """Redis may still be loading its AOF right after a restart."""
    for _ in range(50):
        try:
            return await fn(*args)
        except StoreUnavailable:
            await asyncio.sleep(0.1)
    return await fn(*args)


async def test_store_unavailable_when_redis_is_down(redis_server: RedisServer) -> None:
    async with open_store(Settings(redis_url=redis_server.url)) as store:
        await store.create_job(make_job("j1"), tasks_of("j1", n=1))
        redis_server.stop()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(StoreUnavailable, match=r"redis at redis://127\.0\.0\.1:\d+/0 is unavailable"):
            await store.get_job("j1")
        with pytest.raises(StoreUnavailable):
            await store.take("c1", 1, block_ms=100)
        with pytest.raises(StoreUnavailable):
            await store.save_candidate("j1", make_candidate(0, 0))
        assert loop.time() - started < 10
    with pytest.raises(StoreUnavailable):
        async with open_store(Settings(redis_url=redis_server.url)):
            pytest.fail("opened a store on a stopped redis")


async def test_open_store_waits_for_a_starting_redis(redis_server: RedisServer) -> None:
    """The API and the workers may start before Redis answers: ``wait_s`` retries meanwhile."""
    redis_server.stop()

    def start_later() -> None:
        time.sleep(1.0)
        redis_server.start()

    starting = asyncio.create_task(asyncio.to_thread(start_later))
    async with open_store(Settings(redis_url=redis_server.url), wait_s=60) as store:
        assert await store.ping() is True
        assert starting.done()  # it waited for the start instead of failing
    await starting


async def test_open_store_stops_waiting_when_told(redis_server: RedisServer) -> None:
    """A worker stopped (SIGTERM) while Redis is down gives up at once instead of waiting on."""
    redis_server.stop()
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.5, stop.set)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        async with open_store(Settings(redis_url=redis_server.url), wait_s=math.inf, stop=stop):
            pytest.fail("opened a store on a stopped redis")
    assert 0.4 < time.monotonic() - started < 10


async def test_event_reads_can_have_a_pool_of_their_own(redis_server: RedisServer) -> None:
    """With ``events_connections``, blocked event reads do not take the other commands' connections."""
    async with open_store(
        Settings(redis_url=redis_server.url), max_connections=2, events_connections=4
    ) as store:
        await store.create_job(make_job("j1"), [])
        readers = [asyncio.create_task(store.read_events("j1", None, block_ms=1500)) for _ in range(4)]
        await asyncio.sleep(0.2)  # all four blocked in XREAD
        started = time.monotonic()
        for i in range(20):
            await store.save_candidate("j1", make_candidate(0, i))
        assert time.monotonic() - started < 1.0  # not waiting for a reader's connection
        assert all(r == [] for r in await asyncio.gather(*readers))


def test_redact_hides_the_password() -> None:
    assert redact("redis://:s3cret@db:6379/0") == "redis://:***@db:6379/0"
    assert redact("redis://user:s3cret@db/1") == "redis://user:***@db/1"
    assert redact("redis://db:6379/0") == "redis://db:6379/0"


# -- round trips per candidate --------------------------------------------------------------------


class RoundTrips:
    """Counts what the client sends to Redis: one ``send_packed_command`` is one round trip (a
    single command, a whole pipeline/MULTI, or one EVALSHA)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from redis.asyncio.connection import AbstractConnection

        self.count = 0
        original = AbstractConnection.send_packed_command

        async def counting(conn: AbstractConnection, command: object, check_health: bool = True) -> None:
            self.count += 1
            await original(conn, command, check_health)  # type: ignore[arg-type]

        monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)


async def _run_sequentially(store: RedisStore, specs: list[object]) -> int:
    """Submit jobs, then run every task as a worker does (take one, run it, ack it)."""
    from mrsa.engine.job_service import JobService
    from mrsa.engine.runner import TaskRunner
    from tests.fakes import FakeBackend

    runner = TaskRunner(JobService(store), FakeBackend())
    jobs = [await runner.jobs.submit(spec) for spec in specs]  # type: ignore[arg-type]
    while deliveries := await store.take("w", 1, block_ms=0):
        await runner.run_task(deliveries[0].task)
        await store.ack(deliveries[0])
    for job in jobs:
        assert (await store.get_job(job.id)).status.value == "succeeded"  # type: ignore[union-attr]
    return len(jobs)


@pytest.mark.parametrize(("population", "rounds", "jobs"), [(2, 1, 1), (4, 2, 1), (8, 3, 1), (3, 1, 4)])
async def test_round_trips_per_candidate(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch, population: int, rounds: int, jobs: int
) -> None:
    """The count documented in mrsa/store/redis.py: 6 per candidate (5, and 1 to read its round's
    answers to cluster: the votes are stored with the candidate's event), per round one ``complete_rounds`` and its event (none after the
    last), and per job 2 to submit, 2 to mark it running and T+1 + 3 to finish it (the votes it
    stored are not read back); plus the final empty take. Nothing grows with N, T or the number of
    jobs except through these terms."""
    from mrsa.domain import JobSpec
    from mrsa.params import RSAParams

    await store.ping()  # a warm connection: connecting is not counted
    params = RSAParams(population=population, subset=min(2, population), rounds=rounds, budget=32, tail=8)
    specs: list[object] = [JobSpec(problem=f"What is {i}+1?", params=params) for i in range(jobs)]
    trips = RoundTrips(monkeypatch)
    assert await _run_sequentially(store, specs) == jobs
    candidates = jobs * population * (rounds + 1)
    expected = (
        6 * candidates
        + jobs * (rounds + 1)  # complete_rounds, once per round
        + jobs * rounds  # the round event (none after the last round)
        + jobs * (2 + 2 + (rounds + 1) + 3)  # submit; mark running; finish
        + 1  # the take that finds the queue empty
        + jobs  # the status checks of the test itself
    )
    assert trips.count == expected


async def test_forget_consumer_keeps_one_that_holds_tasks(store: RedisStore) -> None:
    await store.create_job(make_job("j1"), tasks_of("j1", n=1))
    (delivery,) = await store.take("busy", 1, block_ms=0)
    await store.take("idle", 1, block_ms=0)
    assert await store.forget_consumer("busy") is False  # its task must stay reclaimable
    assert await store.forget_consumer("idle") is True
    names = {c["name"] for c in await store.client.xinfo_consumers("mrsa:tasks", "workers")}
    assert names == {"busy"}
    await store.ack(delivery)
    assert await store.forget_consumer("busy") is True


async def test_more_concurrent_commands_than_connections_wait_for_one(redis_server: RedisServer) -> None:
    """A worker with hundreds of tasks in flight issues more concurrent commands than its pool
    holds: they queue for a connection instead of failing (redis-py's default pool raises
    MaxConnectionsError past its limit, which left tasks pending until reclaim)."""
    async with open_store(
        Settings(redis_url=redis_server.url, redis_prefix="burst"), max_connections=4
    ) as store:
        await store.create_job(make_job("j1"), [])
        blocking = asyncio.create_task(store.read_events("j1", None, block_ms=300))  # holds one
        saves = [store.save_candidate("j1", make_candidate(0, i)) for i in range(200)]
        counts = await asyncio.gather(*saves)
        assert sorted(counts) == list(range(1, 201))
        assert await blocking == []


async def test_status_index_drops_finished_jobs_with_their_retention(store: RedisStore) -> None:
    """The jobs-by-status count of finished jobs ends when the job's keys expire."""
    await store.create_job(make_job("old"), [])
    await store.create_job(make_job("new"), [])
    await store.finish_job("old", make_result("old"))
    await store.finish_job("new", make_result("new"))
    assert (await store.count_by_status())[JobStatus.succeeded] == 2
    store.retention_s = 0  # as if the retention had passed for both
    await asyncio.sleep(0.01)
    assert (await store.count_by_status())[JobStatus.succeeded] == 0
