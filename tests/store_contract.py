"""The Store contract (job state, task queue and lifecycle), written once for every implementation.

Use it by subclassing :class:`StoreContract` in a ``test_*.py`` module and providing a ``store``
fixture that yields a fresh, empty store opened for :data:`MAX_DELIVERIES` deliveries::

    class TestMemoryStore(StoreContract):
        @pytest.fixture
        async def store(self) -> AsyncIterator[Store]:
            async with open_store(SETTINGS.model_copy(update={"redis_url": None})) as store:
                yield store

Only behaviour promised by :mod:`mrsa.store.base` is tested here (event ids are opaque strings,
reclaim is timed with short real sleeps) so a Redis implementation runs the same class.
"""

from __future__ import annotations

import asyncio
import time

from mrsa.cli.settings import Settings
from mrsa.domain import (
    Candidate,
    ChunkCheckpoint,
    Event,
    Job,
    JobResult,
    JobSpec,
    JobStatus,
    RoundVotes,
    Task,
    Usage,
)
from mrsa.params import RSAParams
from mrsa.store.base import ActiveLimitReached, IdempotencyClaim, ReclaimResult, Store, TaskQueue

MAX_DELIVERIES = 3
SETTINGS = Settings(max_deliveries=MAX_DELIVERIES)

PARAMS = RSAParams(population=3, subset=2, rounds=2, budget=64, tail=16)


def make_job(job_id: str, owner: str = "local", created_at: float | None = None) -> Job:
    job = Job(id=job_id, spec=JobSpec(problem="What is 6*7?", params=PARAMS), owner=owner)
    if created_at is not None:
        job.created_at = created_at
    return job


def tasks_of(job_id: str, round_index: int = 0, n: int = 3) -> list[Task]:
    return [Task(job_id=job_id, round=round_index, index=i) for i in range(n)]


def make_candidate(round_index: int, index: int, answer: str = "42") -> Candidate:
    return Candidate(
        round=round_index,
        index=index,
        content=f"\\boxed{{{answer}}}",
        trace=f"\\boxed{{{answer}}}",
        answer=answer,
        usage=Usage(decode_tokens=5, prompt_tokens=7, requests=1),
    )


def make_result(job_id: str, status: JobStatus = JobStatus.succeeded, answer: str | None = "42") -> JobResult:
    return JobResult(
        job_id=job_id,
        status=status,
        answer=answer,
        selection="majority",
        error=None if status == JobStatus.succeeded else "boom",
        params=PARAMS,
        usage=Usage(),
        votes=[],
        rounds=[],
    )


async def take_all(queue: TaskQueue, consumer: str = "c1", count: int = 100) -> list[Task]:
    return [d.task for d in await queue.take(consumer, count, block_ms=0)]


class StoreContract:
    """Contract tests; subclasses provide the ``store`` fixture."""

    # -- queue: take / ack --------------------------------------------------------------------------

    async def test_take_delivers_in_order_up_to_count(self, store: Store) -> None:
        await store.create_job(make_job("j1"), tasks_of("j1", n=3))
        first = await store.take("c1", 2, block_ms=0)
        assert [d.task.index for d in first] == [0, 1]
        assert all(d.deliveries == 1 and d.task.job_id == "j1" for d in first)
        assert len({d.id for d in first}) == 2
        rest = await store.take("c2", 5, block_ms=0)
        assert [d.task.index for d in rest] == [2]
        assert await store.take("c1", 5, block_ms=0) == []
        stats = await store.stats()
        assert (stats.queued, stats.in_flight, stats.dead) == (0, 3, 0)

    async def test_take_on_empty_queue_times_out(self, store: Store) -> None:
        started = time.monotonic()
        assert await store.take("c1", 1, block_ms=50) == []
        assert time.monotonic() - started < 2.0
        assert await store.take("c1", 0, block_ms=0) == []

    async def test_take_wakes_up_when_a_task_arrives(self, store: Store) -> None:
        waiting = asyncio.create_task(store.take("c1", 5, block_ms=3000))
        await asyncio.sleep(0.02)
        started = time.monotonic()
        await store.create_job(make_job("j1"), tasks_of("j1", n=1))
        got = await asyncio.wait_for(waiting, 3)
        assert [d.task.key for d in got] == ["j1:candidate:0:0"]
        assert time.monotonic() - started < 1.0

    async def test_ack_forgets_the_task(self, store: Store) -> None:
        await store.create_job(make_job("j1"), tasks_of("j1", n=2))
        a, b = await store.take("c1", 2, block_ms=0)
        await store.ack(a)
        assert (await store.stats()).in_flight == 1
        await store.ack(a)  # acking twice is harmless
        assert (await store.stats()).in_flight == 1
        reclaimed = (await store.reclaim("c2", idle_ms=0, count=10)).deliveries
        assert [d.id for d in reclaimed] == [b.id]  # the acked task is never redelivered

    # -- queue: reclaim / heartbeat / dead letters --------------------------------------------------

    async def test_reclaim_takes_over_silent_tasks(self, store: Store) -> None:
        await store.create_job(make_job("j1"), tasks_of("j1", n=2))
        taken = await store.take("dead-worker", 2, block_ms=0)
        assert (await store.reclaim("c2", idle_ms=60_000, count=10)).deliveries == []  # not idle long enough
        reclaimed = (await store.reclaim("c2", idle_ms=0, count=1)).deliveries
        assert len(reclaimed) == 1
        assert reclaimed[0].id in {d.id for d in taken}
        assert reclaimed[0].deliveries == 2
        assert reclaimed[0].task in [d.task for d in taken]
        # The reclaimer now owns it: acking by id works and it is gone.
        await store.ack(reclaimed[0])
        assert (await store.stats()).in_flight == 1

    async def test_heartbeat_keeps_tasks_from_being_reclaimed(self, store: Store) -> None:
        await store.create_job(make_job("j1"), tasks_of("j1", n=4))
        *alive, silent = await store.take("c1", 4, block_ms=0)
        await asyncio.sleep(0.12)
        await store.heartbeat("c1", alive)  # one call for all of a worker's tasks: each one counts
        reclaimed = (await store.reclaim("c2", idle_ms=100, count=10)).deliveries
        assert [d.id for d in reclaimed] == [silent.id]

    async def test_dead_letter_after_max_deliveries(self, store: Store) -> None:
        await store.create_job(make_job("j1"), tasks_of("j1", n=1))
        (delivery,) = await store.take("c1", 1, block_ms=0)
        seen = [delivery.deliveries]
        dead = []
        for _ in range(MAX_DELIVERIES + 2):
            result = await store.reclaim("c2", idle_ms=0, count=10)
            seen.extend(d.deliveries for d in result.deliveries)
            dead.extend(result.dead)
        assert seen == list(range(1, MAX_DELIVERIES + 1))
        # Never delivered again; reported dead (to fail its job) by every reclaim that finds it idle
        # until it is moved to the dead letters, with the same delivery count each time.
        expected = (delivery.id, delivery.task, MAX_DELIVERIES)
        assert [(d.id, d.task, d.deliveries) for d in dead] == [expected] * 3
        stats = await store.stats()
        assert (stats.queued, stats.in_flight, stats.dead) == (0, 1, 0)
        (again,) = (await store.reclaim("c3", idle_ms=0, count=10)).dead
        assert (again.id, again.deliveries) == (delivery.id, MAX_DELIVERIES)
        assert await store.move_to_dead_letters(again) is True
        assert await store.move_to_dead_letters(dead[0]) is False  # moved once, whoever asks
        stats = await store.stats()
        assert (stats.queued, stats.in_flight, stats.dead) == (0, 0, 1)
        assert await store.reclaim("c2", idle_ms=0, count=10) == ReclaimResult()

    async def test_a_dead_task_is_held_by_its_reclaimer_for_the_idle_time(self, store: Store) -> None:
        await store.create_job(make_job("j1"), tasks_of("j1", n=1))
        await store.take("c1", 1, block_ms=0)
        for _ in range(MAX_DELIVERIES - 1):
            await store.reclaim("c2", idle_ms=0, count=10)
        assert len((await store.reclaim("c2", idle_ms=0, count=10)).dead) == 1
        # c2 is failing its job: nobody else is told about it while c2 is not silent for long.
        assert await store.reclaim("c3", idle_ms=60_000, count=10) == ReclaimResult()

    async def test_heartbeat_does_not_steal_a_reclaimed_task(self, store: Store) -> None:
        await store.create_job(make_job("j1"), tasks_of("j1", n=1))
        (mine,) = await store.take("c1", 1, block_ms=0)
        (theirs,) = (await store.reclaim("c2", idle_ms=0, count=1)).deliveries
        await store.heartbeat("c1", [mine])  # c1 was too slow: the task is c2's now
        await store.release("c1", [mine])  # and c1 cannot give away what is not its own
        assert (await store.reclaim("c3", idle_ms=60_000, count=1)).deliveries == []
        await store.ack(theirs)
        assert (await store.stats()).in_flight == 0

    async def test_release_makes_tasks_reclaimable_at_once(self, store: Store) -> None:
        await store.create_job(make_job("j1"), tasks_of("j1", n=4))
        *given_back, kept = await store.take("c1", 4, block_ms=0)
        await store.release("c1", given_back)
        stats = await store.stats(idle_ms=60_000)
        assert (stats.in_flight, stats.reclaimable) == (4, 3)
        reclaimed = (await store.reclaim("c2", idle_ms=60_000, count=10)).deliveries
        assert sorted((d.id, d.deliveries) for d in reclaimed) == sorted((d.id, 2) for d in given_back)
        assert kept.id not in {d.id for d in reclaimed}

    async def test_stats_count_silent_tasks(self, store: Store) -> None:
        await store.create_job(make_job("j1"), tasks_of("j1", n=3))
        await store.take("c1", 2, block_ms=0)
        assert (await store.stats()).reclaimable == 0
        await asyncio.sleep(0.06)
        stats = await store.stats(idle_ms=50)
        assert (stats.queued, stats.in_flight, stats.reclaimable) == (1, 2, 2)
        assert (await store.stats(idle_ms=60_000)).reclaimable == 0

    async def test_dead_letters_lists_moved_tasks_oldest_first(self, store: Store) -> None:
        await store.create_job(make_job("j1"), tasks_of("j1", n=2))
        await store.take("c1", 2, block_ms=0)
        dead = []
        for _ in range(MAX_DELIVERIES):
            dead += (await store.reclaim("c2", idle_ms=0, count=10)).dead
        assert await store.dead_letters() == []  # reported dead, not moved yet
        for d in sorted(dead, key=lambda d: d.task.index):
            assert await store.move_to_dead_letters(d) is True
        letters = await store.dead_letters()
        assert [(d.task.key, d.deliveries) for d in letters] == [
            ("j1:candidate:0:0", MAX_DELIVERIES),
            ("j1:candidate:0:1", MAX_DELIVERIES),
        ]
        assert [d.task.index for d in await store.dead_letters(limit=1)] == [0]

    async def test_forget_consumer_keeps_one_that_holds_tasks(self, store: Store) -> None:
        await store.create_job(make_job("j1"), tasks_of("j1", n=1))
        (busy,) = await store.take("busy", 1, block_ms=0)
        assert await store.take("idle", 1, block_ms=0) == []
        assert await store.forget_consumer("busy") is False  # its task must stay reclaimable
        assert await store.forget_consumer("idle") is True
        assert [d.id for d in (await store.reclaim("c2", idle_ms=0, count=10)).deliveries] == [busy.id]
        assert await store.forget_consumer("busy") is True  # it holds nothing now

    # -- lifecycle --------------------------------------------------------------------------------

    async def test_ping(self, store: Store) -> None:
        assert await store.ping() is True

    async def test_forget_keeps_the_job_readable(self, store: Store) -> None:
        await store.create_job(make_job("j1"), [])
        await store.save_candidate("j1", make_candidate(0, 0))
        await store.finish_job("j1", make_result("j1"))
        await store.forget("j1")
        await store.forget("nope")  # an unknown job: nothing to forget
        job = await store.get_job("j1")
        assert job is not None and job.status == JobStatus.succeeded and job.answer == "42"
        # a task still unwinding may write a late duplicate: no error, the job stays finished
        await store.save_candidate("j1", make_candidate(0, 0))
        assert (await store.get_statuses(["j1"]))["j1"] == JobStatus.succeeded

    # -- jobs -------------------------------------------------------------------------------------

    async def test_create_get_and_list_jobs(self, store: Store) -> None:
        assert await store.get_job("nope") is None
        await store.create_job(make_job("a", owner="alice", created_at=1.0), [])
        await store.create_job(make_job("b", owner="bob", created_at=2.0), [])
        await store.create_job(make_job("c", owner="alice", created_at=3.0), [])
        job = await store.get_job("a")
        assert job is not None and job.owner == "alice" and job.status == JobStatus.queued
        assert job.spec.params == PARAMS
        assert [j.id for j in await store.list_jobs()] == ["c", "b", "a"]  # newest first
        assert [j.id for j in await store.list_jobs(owner="alice")] == ["c", "a"]
        assert [j.id for j in await store.list_jobs(limit=1)] == ["c"]

    async def test_create_job_twice_enqueues_once(self, store: Store) -> None:
        assert await store.create_job(make_job("a"), tasks_of("a", n=3)) is True
        assert await store.create_job(make_job("a", owner="mallory"), tasks_of("a", n=3)) is False
        assert (await store.stats()).queued == 3
        assert (await store.get_job("a")).owner == "local"

    async def test_create_job_with_stored_candidates(self, store: Store) -> None:
        """A resumed job: what was already made is stored before any task is enqueued."""
        stored = [make_candidate(0, 0, "1"), make_candidate(0, 2, "3"), make_candidate(1, 1, "5")]
        await store.create_job(make_job("j1"), tasks_of("j1", n=3), stored=stored)
        assert (await store.stats()).queued == 3
        got = await store.load_task(Task(job_id="j1", round=0, index=2))
        assert got is not None and got.stored is not None and got.stored.answer == "3"
        assert [c.index for c in await store.get_candidates("j1", 0)] == [0, 2]
        assert [c.answer for c in await store.get_candidates("j1", 1)] == ["5"]
        # they count towards their round as any stored candidate does
        assert await store.save_candidate("j1", make_candidate(0, 1)) == 3
        assert await store.save_candidate("j1", make_candidate(0, 0, "other")) == 3  # stored already
        assert (await store.get_candidates("j1", 0, [0]))[0].answer == "1"
        assert await store.complete_rounds("j1", 3, 1) == (0, 1)
        # a second create (a redelivered resume) changes nothing
        await store.create_job(make_job("j1"), tasks_of("j1", n=3), stored=[make_candidate(0, 0, "9")])
        assert (await store.get_candidates("j1", 0, [0]))[0].answer == "1"
        assert (await store.stats()).queued == 3

    async def test_count_active_per_owner(self, store: Store) -> None:
        assert await store.count_active("alice") == 0
        for job_id, owner in [("a1", "alice"), ("a2", "alice"), ("a3", "alice"), ("b1", "bob")]:
            await store.create_job(make_job(job_id, owner=owner), [])
        await store.mark_running("a2")
        assert (await store.count_active("alice"), await store.count_active("bob")) == (3, 1)
        await store.finish_job("a1", make_result("a1"))
        await store.cancel_job("a2")
        assert await store.count_active("alice") == 1
        await store.finish_job("a1", make_result("a1"))  # a second finish changes nothing
        assert await store.count_active("alice") == 1

    async def test_create_job_within_the_in_flight_limit_is_atomic(self, store: Store) -> None:
        await store.create_job(make_job("x0", owner="zoe"), tasks_of("x0", n=1), max_active=2)
        outcomes = await asyncio.gather(
            *(
                store.create_job(make_job(f"x{i}", owner="zoe"), tasks_of(f"x{i}", n=1), max_active=2)
                for i in range(1, 9)
            ),
            return_exceptions=True,
        )
        refused = [o for o in outcomes if isinstance(o, ActiveLimitReached)]
        assert len(refused) == 7 and all(o.active == 2 and o.limit == 2 for o in refused)
        assert await store.count_active("zoe") == 2
        assert (await store.stats()).queued == 2  # a refused job enqueued nothing
        assert await store.count_active("ann") == 0  # other owners have their own count
        await store.create_job(make_job("y", owner="ann"), [], max_active=1)
        await store.cancel_job("x0")  # a slot frees up
        await store.create_job(make_job("x9", owner="zoe"), [], max_active=2)
        assert await store.count_active("zoe") == 2

    async def test_count_by_status_follows_every_transition(self, store: Store) -> None:
        for job_id in ("s1", "s2", "s3", "s4", "s5"):
            await store.create_job(make_job(job_id), [])
        await store.mark_running("s1")
        await store.mark_running("s2")
        await store.finish_job("s2", make_result("s2"))
        await store.cancel_job("s3")
        await store.cancel_job("s3")  # once
        await store.mark_running("s3")  # a terminal job does not come back
        counts = await store.count_by_status()
        assert counts == {
            JobStatus.queued: 2,
            JobStatus.running: 1,
            JobStatus.succeeded: 1,
            JobStatus.failed: 0,
            JobStatus.cancelled: 1,
        }

    async def test_idempotency_key_claims(self, store: Store) -> None:
        assert await store.claim_idempotency_key("alice", "k1", "job-1", "fp-a", ttl_s=60) is None
        earlier = await store.claim_idempotency_key("alice", "k1", "job-2", "fp-b", ttl_s=60)
        assert earlier == IdempotencyClaim("job-1", "fp-a")  # the first claim's id and fingerprint
        assert await store.claim_idempotency_key("bob", "k1", "job-3", "fp-a", ttl_s=60) is None  # per owner
        assert await store.claim_idempotency_key("alice", "k2", "job-4", "fp-a", ttl_s=60) is None
        claims = await asyncio.gather(
            *(store.claim_idempotency_key("carol", "k", f"j{i}", f"fp{i}", 60) for i in range(8))
        )
        assert claims.count(None) == 1
        winner = claims.index(None)
        assert all(c in (None, IdempotencyClaim(f"j{winner}", f"fp{winner}")) for c in claims)

    async def test_idempotency_key_expires(self, store: Store) -> None:
        assert await store.claim_idempotency_key("alice", "k", "job-1", "fp", ttl_s=1) is None
        await asyncio.sleep(1.2)
        assert await store.claim_idempotency_key("alice", "k", "job-2", "fp", ttl_s=1) is None

    async def test_mark_running_only_from_queued(self, store: Store) -> None:
        await store.create_job(make_job("j1"), [])
        await store.mark_running("j1")
        assert (await store.get_job("j1")).status == JobStatus.running
        await store.finish_job("j1", make_result("j1"))
        await store.mark_running("j1")
        assert (await store.get_job("j1")).status == JobStatus.succeeded

    async def test_save_candidate_is_idempotent(self, store: Store) -> None:
        await store.create_job(make_job("j1"), [])
        assert await store.save_candidate("j1", make_candidate(0, 1)) == 1
        assert await store.save_candidate("j1", make_candidate(0, 0)) == 2
        # A duplicate (a redelivered task) is a no-op: same count, the first version is kept.
        assert await store.save_candidate("j1", make_candidate(0, 1, answer="other")) == 2
        assert await store.save_candidate("j1", make_candidate(1, 1)) == 1  # counts are per round
        stored = await store.get_candidates("j1", 0)
        assert [c.index for c in stored] == [0, 1]  # ordered by index
        assert stored[1].answer == "42"
        assert stored[1].usage == Usage(decode_tokens=5, prompt_tokens=7, requests=1)
        assert [c.index for c in await store.get_candidates("j1", 1)] == [1]
        assert await store.get_candidates("j1", 2) == []

    async def test_get_candidates_by_indices(self, store: Store) -> None:
        await store.create_job(make_job("j1"), [])
        for i in range(3):
            await store.save_candidate("j1", make_candidate(0, i, answer=str(i)))
        some = await store.get_candidates("j1", 0, [2, 0])
        assert sorted(c.index for c in some) == [0, 2]
        assert {c.index: c.answer for c in some} == {0: "0", 2: "2"}
        missing = await store.get_candidates("j1", 0, [1, 7])
        assert [c.index for c in missing] == [1]  # unknown indices are skipped
        assert await store.get_candidates("j1", 0, []) == []

    async def test_get_candidates_but_the_ones_already_read(self, store: Store) -> None:
        """A worker clustering a round again reads only the candidates stored since."""
        await store.create_job(make_job("j1"), [])
        for i in (3, 0, 11, 2):
            await store.save_candidate("j1", make_candidate(0, i, answer=str(i)))
        others = await store.get_candidates("j1", 0, exclude={0, 2, 7})
        assert [(c.index, c.answer) for c in others] == [(3, "3"), (11, "11")]  # ordered by index
        assert await store.get_candidates("j1", 0, exclude=[0, 2, 3, 11]) == []
        assert [c.index for c in await store.get_candidates("j1", 0, exclude=())] == [0, 2, 3, 11]
        assert await store.get_candidates("j1", 1, exclude=[0]) == []

    async def test_save_candidate_releases_a_child_once_its_parents_are_stored(self, store: Store) -> None:
        await store.create_job(make_job("j1"), [])
        child_a = Task(job_id="j1", round=1, index=0, parents=[0, 2])
        child_b = Task(job_id="j1", round=1, index=1, parents=[1, 2])
        await store.save_candidate("j1", make_candidate(0, 0), [child_a])
        assert await take_all(store) == []  # parent 2 is missing
        await store.save_candidate("j1", make_candidate(0, 2), [child_a, child_b])
        assert [(t.round, t.index, t.parents) for t in await take_all(store)] == [(1, 0, [0, 2])]
        # A redelivered save releases nothing twice; the last parent of b releases b.
        await store.save_candidate("j1", make_candidate(0, 2), [child_a, child_b])
        await store.save_candidate("j1", make_candidate(0, 0), [child_a])
        assert await take_all(store) == []
        assert await store.save_candidate("j1", make_candidate(0, 1), [child_b]) == 3
        assert [t.index for t in await take_all(store)] == [1]

    async def test_concurrent_saves_release_a_child_exactly_once(self, store: Store) -> None:
        await store.create_job(make_job("j1"), [])
        child = Task(job_id="j1", round=1, index=0, parents=[0, 1, 2])
        await asyncio.gather(
            *(store.save_candidate("j1", make_candidate(0, i % 3), [child]) for i in range(9))
        )
        assert len(await take_all(store)) == 1

    async def test_nothing_is_released_for_a_terminal_job(self, store: Store) -> None:
        await store.create_job(make_job("j1"), [])
        await store.cancel_job("j1")
        child = Task(job_id="j1", round=1, index=0, parents=[0])
        await store.save_candidate("j1", make_candidate(0, 0), [child])
        assert await take_all(store) == []

    async def test_complete_rounds_moves_the_pointer_over_complete_rounds(self, store: Store) -> None:
        await store.create_job(make_job("j1"), [])
        select = [Task(job_id="j1", kind="select", round=3, index=0, parents=[0, 1])]
        assert await store.complete_rounds("j1", 3, 2, select) == (0, 0)  # nothing complete
        for i in range(3):  # round 1 completes before round 0 (rounds run ahead of the pointer)
            await store.save_candidate("j1", make_candidate(1, i))
        assert await store.complete_rounds("j1", 3, 2, select) == (0, 0)
        for i in range(3):
            await store.save_candidate("j1", make_candidate(0, i))
        assert await store.complete_rounds("j1", 3, 2, select) == (0, 2)
        assert (await store.get_job("j1")).round == 2
        assert await take_all(store) == []  # the final tasks wait for the last round
        for i in range(3):
            await store.save_candidate("j1", make_candidate(2, i))
        results = await asyncio.gather(*(store.complete_rounds("j1", 3, 2, select) for _ in range(4)))
        assert sorted(results) == [(2, 3)] + [(3, 3)] * 3  # one caller moves it
        assert [t.kind for t in await take_all(store)] == ["select"]

    async def test_complete_rounds_counts_the_last_round_at_its_own_size(self, store: Store) -> None:
        """final_population: round 2 (the last) completes with 2 candidates, rounds 0-1 need 3."""
        await store.create_job(make_job("j1"), [])
        select = [Task(job_id="j1", kind="select", round=3, index=0, parents=[0, 1])]
        for r in (0, 1):
            for i in range(2):
                await store.save_candidate("j1", make_candidate(r, i))
        assert await store.complete_rounds("j1", 3, 2, select, last_population=2) == (0, 0)
        for r in (0, 1):
            await store.save_candidate("j1", make_candidate(r, 2))
        assert await store.complete_rounds("j1", 3, 2, select, last_population=2) == (0, 2)
        await store.save_candidate("j1", make_candidate(2, 0))
        assert await store.complete_rounds("j1", 3, 2, select, last_population=2) == (2, 2)
        assert await take_all(store) == []
        await store.save_candidate("j1", make_candidate(2, 1))
        assert await store.complete_rounds("j1", 3, 2, select, last_population=2) == (2, 3)
        assert [t.kind for t in await take_all(store)] == ["select"]
        # A larger last stage waits for all of its candidates.
        await store.create_job(make_job("j2"), [])
        for i in range(3):
            await store.save_candidate("j2", make_candidate(0, i))
        assert await store.complete_rounds("j2", 3, 0, last_population=5) == (0, 0)
        for i in range(3, 5):
            await store.save_candidate("j2", make_candidate(0, i))
        assert await store.complete_rounds("j2", 3, 0, last_population=5) == (0, 1)

    async def test_complete_rounds_leaves_a_terminal_job_alone(self, store: Store) -> None:
        await store.create_job(make_job("j1"), [])
        for i in range(3):
            await store.save_candidate("j1", make_candidate(0, i))
        await store.finish_job("j1", make_result("j1", JobStatus.failed, None))
        assert await store.complete_rounds("j1", 3, 0, tasks_of("j1", 1)) == (0, 0)
        assert await take_all(store) == []

    async def test_load_task(self, store: Store) -> None:
        assert await store.load_task(Task(job_id="nope", round=0, index=0)) is None
        await store.create_job(make_job("j1"), [])
        for i in (0, 2):
            await store.save_candidate("j1", make_candidate(0, i, answer=str(i)))
        first = await store.load_task(Task(job_id="j1", round=0, index=1))
        assert first.job.id == "j1" and first.stored is None and first.parents == []
        again = await store.load_task(Task(job_id="j1", round=0, index=2))
        assert again.stored is not None and again.stored.answer == "2"
        child = await store.load_task(Task(job_id="j1", round=1, index=0, parents=[2, 1, 0]))
        assert child.stored is None
        assert sorted(p.index for p in child.parents) == [0, 2]  # the missing parent is left out

    async def test_get_statuses(self, store: Store) -> None:
        await store.create_job(make_job("j1"), [])
        await store.create_job(make_job("j2"), [])
        await store.cancel_job("j2")
        assert await store.get_statuses(["j1", "j2", "nope"]) == {
            "j1": JobStatus.queued,
            "j2": JobStatus.cancelled,
            "nope": None,
        }
        assert await store.get_statuses([]) == {}

    async def test_finish_job_once(self, store: Store) -> None:
        await store.create_job(make_job("j1"), [])
        assert await store.get_result("j1") is None
        assert await store.finish_job("j1", make_result("j1", answer="42")) is True
        assert await store.finish_job("j1", make_result("j1", JobStatus.failed, None)) is False
        job = await store.get_job("j1")
        assert job.status == JobStatus.succeeded and job.answer == "42" and job.finished_at is not None
        result = await store.get_result("j1")
        assert result is not None and result.status == JobStatus.succeeded and result.answer == "42"
        assert await take_all(store) == []

    async def test_failed_job_keeps_the_error(self, store: Store) -> None:
        await store.create_job(make_job("j1"), [])
        assert await store.finish_job("j1", make_result("j1", JobStatus.failed, None)) is True
        job = await store.get_job("j1")
        assert job.status == JobStatus.failed and job.error == "boom"

    async def test_cancel_job(self, store: Store) -> None:
        await store.create_job(make_job("j1"), tasks_of("j1", n=3))
        await store.create_job(make_job("j2"), tasks_of("j2", n=2))
        assert await store.cancel_job("j1", "stop it") is True
        job = await store.get_job("j1")
        assert job.status == JobStatus.cancelled and job.error == "stop it"
        # Its queued tasks are dropped, or delivered to be skipped (the job is terminal); other
        # jobs' stay.
        taken = await take_all(store)
        assert [t.index for t in taken if t.job_id == "j2"] == [0, 1]
        assert {t.job_id for t in taken} <= {"j1", "j2"}
        assert await store.cancel_job("j1") is False
        assert await store.finish_job("j1", make_result("j1")) is False
        assert (await store.get_job("j1")).status == JobStatus.cancelled
        await store.finish_job("j2", make_result("j2"))
        assert await store.cancel_job("j2") is False  # already terminal

    async def test_checkpoints_keep_the_newest(self, store: Store) -> None:
        await store.create_job(make_job("j1"), [])
        assert await store.load_checkpoint("j1", 0, 0) is None
        cp2 = ChunkCheckpoint(chunks=2, text="ab", token_ids=[1, 2], usage=Usage(decode_tokens=2, requests=2))
        await store.save_checkpoint("j1", 0, 0, cp2)
        await store.save_checkpoint("j1", 0, 0, ChunkCheckpoint(chunks=1, text="a"))  # a stale writer
        assert await store.load_checkpoint("j1", 0, 0) == cp2
        cp3 = ChunkCheckpoint(chunks=3, text="abc", finish_reason="stop")
        await store.save_checkpoint("j1", 0, 0, cp3)
        assert await store.load_checkpoint("j1", 0, 0) == cp3
        assert await store.load_checkpoint("j1", 0, 1) is None  # keyed by (round, index)
        assert await store.load_checkpoint("j1", 1, 0) is None

    async def test_round_votes_keep_the_newest_state(self, store: Store) -> None:
        """Workers clustering one round at once: the votes covering the most candidates win,
        whatever order the writes land in."""
        await store.create_job(make_job("j1"), [])
        assert await store.get_round_votes("j1", 0) is None
        three = RoundVotes(round=0, tallied=3, groups=[[0, 2], [1]], timeouts=1)
        assert await store.save_round_votes("j1", three) is True
        assert await store.save_round_votes("j1", RoundVotes(round=0, tallied=2, groups=[[0, 1]])) is False
        assert await store.save_round_votes("j1", three) is False  # the same state again: a no-op
        assert await store.get_round_votes("j1", 0) == three
        assert await store.get_round_votes("j1", 1) is None  # per round
        four = RoundVotes(round=0, tallied=4, groups=[[0, 2, 3], [1]])
        assert await store.save_round_votes("j1", four) is True
        assert await store.get_round_votes("j1", 0) == four

    async def test_round_votes_carry_the_event_that_announces_them(self, store: Store) -> None:
        """The worker that saved a candidate stores the round's votes and its event in one step:
        the event is appended after the votes, also when newer votes were already stored."""
        await store.create_job(make_job("j1"), [])
        two = RoundVotes(round=0, tallied=2, groups=[[0, 1]])
        first = Event(type="candidate", job_id="j1", round=0, index=1, answer="7", done=2)
        assert await store.save_round_votes("j1", two, first) is True
        assert await store.get_round_votes("j1", 0) == two
        late = Event(type="candidate", job_id="j1", round=0, index=0, answer="7", done=1)
        stale = RoundVotes(round=0, tallied=1, groups=[[0]])
        assert await store.save_round_votes("j1", stale, late) is False
        assert await store.get_round_votes("j1", 0) == two
        assert [e for _, e in await store.read_events("j1", None, block_ms=0)] == [first, late]
        try:
            await store.save_round_votes("nope", two, first)
        except KeyError:
            return
        raise AssertionError("an event was stored for a job that does not exist")

    async def test_round_votes_of_an_unknown_job_are_refused(self, store: Store) -> None:
        try:
            await store.save_round_votes("nope", RoundVotes(round=0, tallied=1, groups=[[0]]))
        except KeyError:
            return
        raise AssertionError("votes were stored for a job that does not exist")

    # -- events -----------------------------------------------------------------------------------

    async def test_read_events_after(self, store: Store) -> None:
        await store.create_job(make_job("j1"), [])
        for r in range(3):
            await store.add_event("j1", Event(type="round", job_id="j1", round=r))
        events = await store.read_events("j1", None, block_ms=0)
        assert [e.round for _, e in events] == [0, 1, 2]
        ids = [i for i, _ in events]
        assert len(set(ids)) == 3
        later = await store.read_events("j1", ids[0], block_ms=0)
        assert [(i, e.round) for i, e in later] == [(ids[1], 1), (ids[2], 2)]
        assert await store.read_events("j1", ids[2], block_ms=0) == []
        assert [e.round for _, e in await store.read_events("j1", None, block_ms=0, count=2)] == [0, 1]

    async def test_read_events_blocks_until_timeout(self, store: Store) -> None:
        await store.create_job(make_job("j1"), [])
        await store.add_event("j1", Event(type="status", job_id="j1", status=JobStatus.queued))
        (first_id, _), *_ = await store.read_events("j1", None, block_ms=0)
        started = time.monotonic()
        assert await store.read_events("j1", first_id, block_ms=50) == []
        elapsed = time.monotonic() - started
        assert 0.03 <= elapsed < 2.0

    async def test_read_events_wakes_up_on_a_new_event(self, store: Store) -> None:
        await store.create_job(make_job("j1"), [])
        waiting = asyncio.create_task(store.read_events("j1", None, block_ms=3000))
        await asyncio.sleep(0.02)
        started = time.monotonic()
        await store.add_event("j1", Event(type="done", job_id="j1", status=JobStatus.succeeded, answer="42"))
        got = await asyncio.wait_for(waiting, 3)
        assert [(e.type, e.answer) for _, e in got] == [("done", "42")]
        assert time.monotonic() - started < 1.0

    async def test_events_are_per_job(self, store: Store) -> None:
        await store.create_job(make_job("j1"), [])
        await store.create_job(make_job("j2"), [])
        await store.add_event("j1", Event(type="round", job_id="j1", round=1))
        assert await store.read_events("j2", None, block_ms=0) == []
        assert len(await store.read_events("j1", None, block_ms=0)) == 1
