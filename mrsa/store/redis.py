"""The Redis :class:`~mrsa.store.base.Store` (the service's transport), on redis-py's asyncio client.

Layout (``p`` is the key prefix, ``mrsa`` by default)::

    p:tasks                    Stream of tasks (field ``task``: Task JSON), consumer group ``workers``
    p:dead                     List of dead-lettered tasks (JSON: id, task, deliveries)
    p:jobs                     Sorted set of job ids by creation time (all owners)
    p:owner:{owner}:jobs       Sorted set of one owner's job ids by creation time
    p:owner:{owner}:active     Set of one owner's non-terminal job ids
    p:idem:{owner}:{key}       Idempotency key → "{job id} {request fingerprint}" (with its own TTL)
    p:status:{queued,running}  Sets of the job ids in that status (the jobs-by-status gauge)
    p:status:{terminal status} Sorted sets of finished job ids by finish time (pruned past retention)
    p:job:{id}                 Hash: spec, owner, status, round, timestamps, error, answer, result,
                               and ``done:{round}`` counters of stored candidates
    p:job:{id}:round:{r}       Hash: candidate index → Candidate JSON
    p:job:{id}:released        Set of "{round}:{index}" tasks already enqueued by ``save_candidate``
    p:job:{id}:checkpoints     Hash: "{round}:{index}" → ChunkCheckpoint JSON (+ ":n" = its chunks)
    p:job:{id}:events          Stream of progress events (MAXLEN ~ 10000)

Atomicity: every write that must be all-or-nothing or conditional is one Lua script (atomic in
Redis, and one round trip; the scripts live in :mod:`mrsa.store.redis_scripts`): ``create_job``
(store + index + the candidates it already has, for a resumed sweep + enqueue round 0; a second
create is a no-op; with ``max_active`` the owner's in-flight count is checked in the same step),
``save_candidate`` (HSETNX, then HINCRBY of the round's counter only when new, then XADD of
each next-round task whose parents are now all stored and that is not in the released set),
``complete_rounds`` (moves the round pointer over complete rounds, XADD of the selection task when
it passes the last one), ``finish_job``/``cancel_job`` (once; then a TTL of ``retention_s`` on every key
of the job), ``reclaim`` (XAUTOCLAIM + delivery counts from XPENDING; a task delivered too often
is reported, not run), ``move_to_dead_letters`` (XACK + XDEL + RPUSH, once), ``heartbeat`` and
``release`` (XCLAIM ... JUSTID of the ids the consumer still owns). Keys a
script builds itself (round hashes, in ``finish_job``) are not declared, so this needs a single Redis (or a primary
with replicas), not Redis Cluster.

Delivery (see :mod:`mrsa.store.base`: a task may run more than once): XREADGROUP hands tasks to a
consumer; ``ack`` is XACK + XDEL in one script (so the stream holds only queued and in-flight
tasks); ``heartbeat`` re-claims the consumer's own pending ids with XCLAIM ... JUSTID, which resets
their idle time without counting a delivery (every id in one call: one script per heartbeat,
whatever the number of tasks in flight); ``release`` does the same with IDLE set to ten years;
``reclaim`` takes over tasks idle for ``idle_ms`` (XAUTOCLAIM). A task already delivered
``max_deliveries`` times is returned as dead instead and stays pending, owned by the reclaimer
with its count held, until the worker has failed its job and calls ``move_to_dead_letters``
(``p:dead``); a worker dying in between leaves it to the next reclaim.

Cancellation does not search the stream for the job's queued tasks (that would cost a scan of the
whole queue): ``cancel_job`` only marks the job cancelled. Its queued tasks are still delivered;
the engine returns at once for a task of a terminal job (no backend request) and the worker acks
it. ``stats().queued`` counts them until then.

Connections (:mod:`mrsa.store.redis_clients`, to a plain URL or to the master Sentinel names, following
a failover): one blocking pool (``max_connections``); with ``events_connections``, event reads
(XREAD, which blocks) get a pool of their own, so however many event streams wait, the other
commands keep theirs (the API's streams and waiting chat completions).

Errors: a connection error or timeout (also Redis still loading its AOF after a restart) raises
:class:`~mrsa.store.base.StoreUnavailable`, so a worker leaves its task pending and retries later.

Round trips per candidate (counted by ``tests/store/test_store_redis.py::test_round_trips_per_candidate``,
which counts what the client sends, a pipeline, a MULTI or a script being one): a worker running
one candidate task makes **6** — XREADGROUP (``take``), one pipeline of HMGET job / HGET stored
candidate / HMGET parents (``load_task``), EVALSHA (``save_candidate``, which also releases the
next round's ready tasks), EVALSHA (``get_candidates`` with ``exclude``: the round's candidates
this worker has not read yet), EVALSHA (``save_round_votes`` with the candidate's event: the
round's answers clustered and stored with it, so round views and results never cluster, then the
event), EVALSHA (``ack``: XACK + XDEL); candidates that arrive while their round is being
clustered share the next run: they skip the read, and send their event alone. On top, per
round 1 (``complete_rounds``) plus its event (none after the last round), and per job 4 + (T+1) + 3
(create + event; first ``mark_running`` + event; ``finish``: get_job, one HGETALL per round, the
finish script, the event; plus one HGET per round whose votes another worker stored) — amortised over the job's N·(T+1) candidates that is less than one more
per candidate. Nothing grows with N, T or the number of jobs. Time-driven calls (heartbeats,
reclaim, one pipelined status check per second for cancellations, queue stats) come on top per
worker and per second, not per candidate.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Collection, Iterator, Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

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
)
from mrsa.store import redis_scripts as lua
from mrsa.store.base import (
    ActiveLimitReached,
    Delivery,
    IdempotencyClaim,
    QueueStats,
    ReclaimResult,
    StoreUnavailable,
    TaskContext,
)
from mrsa.store.redis_clients import NOT_A_MASTER, RedisClients, open_clients
from mrsa.urls import redact

GROUP = "workers"
EVENTS_MAXLEN = 10_000
# Blocking reads are capped below the socket timeout; callers loop (the protocol says "up to").
MAX_BLOCK_MS = 10_000  # below redis_clients.SOCKET_TIMEOUT_S
MAX_CONNECTIONS = 64  # commands are short: a few dozen connections serve hundreds of tasks
# XCLAIM ... IDLE for released tasks: ten years, i.e. "silent for longer than any reclaim timeout".
RELEASED_IDLE_MS = 10 * 365 * 86_400_000
_PENDING_SCAN = 10_000

# How redis-py (RESP2, decode_responses) returns XREAD/XREADGROUP: [stream, [(id, fields)]] per stream.
_StreamReply = list[tuple[str, list[tuple[str, dict[str, str]]]]]


def task_stream(prefix: str) -> str:
    """The name of the task stream under a key prefix (also what a KEDA trigger reads)."""
    return f"{prefix}:tasks"


def _now() -> str:
    return repr(time.time())


def _opt_json(value: str | None) -> Any:
    return None if value is None else json.loads(value)


class _Redis:
    """The connections, key names and scripts of one :class:`RedisStore`."""

    def __init__(self, clients: RedisClients, url: str, prefix: str) -> None:
        self.clients = clients
        self.client = clients.client
        self.events_client = clients.events  # event reads (blocking XREAD); ``client`` when not separate
        self.url = redact(url)
        self.p = prefix
        self.tasks = task_stream(prefix)
        self.dead = f"{prefix}:dead"
        self.jobs = f"{prefix}:jobs"
        s = self.client.register_script
        self.create = s(lua.CREATE)
        self.mark_running = s(lua.MARK_RUNNING)
        self.save_candidate = s(lua.SAVE_CANDIDATE)
        self.complete_rounds = s(lua.COMPLETE_ROUNDS)
        self.terminate = s(lua.TERMINATE)
        self.save_newest = s(lua.SAVE_NEWEST)  # checkpoints
        self.save_votes = s(lua.SAVE_VOTES)  # round votes, and the event announcing them
        self.round_except = s(lua.ROUND_EXCEPT)
        self.add_event = s(lua.ADD_EVENT)
        self.claim_key = s(lua.CLAIM_KEY)
        self.ack = s(lua.ACK)
        self.touch = s(lua.TOUCH)
        self.reclaim = s(lua.RECLAIM)
        self.bury = s(lua.BURY)
        self.forget_consumer = s(lua.FORGET_CONSUMER)

    def job(self, job_id: str) -> str:
        return f"{self.p}:job:{job_id}"

    def round(self, job_id: str, round_index: int) -> str:
        return f"{self.p}:job:{job_id}:round:{round_index}"

    def votes(self, job_id: str) -> str:
        """A hash: round → its clustered answers (JSON), and ``round:n`` → how many candidates they cover."""
        return f"{self.p}:job:{job_id}:votes"

    def released(self, job_id: str) -> str:
        return f"{self.p}:job:{job_id}:released"

    def checkpoints(self, job_id: str) -> str:
        return f"{self.p}:job:{job_id}:checkpoints"

    def events(self, job_id: str) -> str:
        return f"{self.p}:job:{job_id}:events"

    def owner_jobs(self, owner: str) -> str:
        return f"{self.p}:owner:{owner}:jobs"

    def owner_active(self, owner: str) -> str:
        return f"{self.p}:owner:{owner}:active"

    def status_index(self, status: JobStatus) -> str:
        """Jobs in ``status``: a set for queued/running, a sorted set by finish time otherwise."""
        return f"{self.p}:status:{status.value}"

    def idempotency(self, owner: str, key: str) -> str:
        return f"{self.p}:idem:{owner}:{key}"

    @contextlib.contextmanager
    def unavailable(self) -> Iterator[None]:
        """Turn connection trouble into :class:`StoreUnavailable` (the task stays pending).

        So is a server that is no master (any more): ``READONLY`` (a replica) and the
        :data:`~mrsa.store.redis_clients.NOT_A_MASTER` replies last until the failover is done, or
        until whoever points a plain URL at a replica fixes it. Behind Sentinel the connection layer
        has turned them into connection errors already (:mod:`mrsa.store.redis_clients`)."""
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError, ReadOnlyError) as exc:
            raise StoreUnavailable(
                f"redis at {self.url} is unavailable: {type(exc).__name__}: {exc}"
            ) from exc
        except ResponseError as exc:
            if not str(exc).startswith(NOT_A_MASTER):
                raise
            raise StoreUnavailable(f"redis at {self.url} is not the master: {exc}") from exc

    async def load_scripts(self) -> None:
        """Load every script up front (one round trip), so no call pays NOSCRIPT + SCRIPT LOAD;
        after a Redis restart redis-py reloads a script on its first NOSCRIPT."""
        scripts = [
            self.create,
            self.mark_running,
            self.save_candidate,
            self.complete_rounds,
            self.terminate,
            self.save_newest,
            self.save_votes,
            self.round_except,
            self.add_event,
            self.claim_key,
            self.ack,
            self.touch,
            self.reclaim,
            self.bury,
            self.forget_consumer,
        ]
        async with self.client.pipeline(transaction=False) as pipe:
            for script in scripts:
                pipe.script_load(script.script)
            await pipe.execute()

    async def ensure_group(self) -> None:
        try:
            await self.client.xgroup_create(self.tasks, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


_JOB_FIELDS = (
    "spec",
    "owner",
    "status",
    "round",
    "created_at",
    "updated_at",
    "finished_at",
    "error",
    "answer",
    "warnings",
)


def _job_from_fields(job_id: str, values: Sequence[str | None]) -> Job | None:
    if values[0] is None:
        return None
    spec, owner, status, rnd, created, updated, finished, error, answer, warnings = values
    assert spec is not None and status is not None and rnd is not None
    return Job(
        id=job_id,
        spec=JobSpec.model_validate_json(spec),
        owner=owner or "local",
        status=JobStatus(status),
        round=int(rnd),
        created_at=float(created or 0),
        updated_at=float(updated or 0),
        finished_at=_opt_json(finished),
        error=_opt_json(error),
        answer=_opt_json(answer),
        warnings=_opt_json(warnings) or [],
    )


class RedisStore:
    """Job state in hashes, tasks on one Stream with one consumer group: see the module docstring.
    Built by :func:`connect` (through :func:`mrsa.store.opening.open_store`)."""

    def __init__(self, r: _Redis, max_deliveries: int = 5, retention_s: int = 7 * 86400) -> None:
        self._r = r
        self.max_deliveries = max_deliveries
        self.retention_s = retention_s

    @property
    def client(self) -> aioredis.Redis:
        return self._r.client

    # -- lifecycle --------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the connection pools (and the Sentinel connections, behind Sentinel)."""
        await self._r.clients.aclose()

    async def ping(self) -> bool:
        """Whether Redis answers (for readiness checks)."""
        try:
            with self._r.unavailable():
                return bool(await self._r.client.ping())
        except StoreUnavailable:
            return False

    async def forget_consumer(self, consumer: str) -> bool:
        """Remove a stopped worker's entry from the consumer group (kept when it still holds tasks,
        which stay reclaimable)."""
        with self._r.unavailable():
            return bool(await self._r.forget_consumer(keys=[self._r.tasks], args=[GROUP, consumer]))

    async def dead_letters(self, limit: int = 1000) -> list[Delivery]:
        with self._r.unavailable():
            rows = await self._r.client.lrange(self._r.dead, 0, limit - 1)
        out = []
        for row in rows:
            data = json.loads(row)
            out.append(
                Delivery(
                    id=data["id"], task=Task.model_validate_json(data["task"]), deliveries=data["deliveries"]
                )
            )
        return out

    async def forget(self, job_id: str) -> None:
        """Nothing to do at once: a finished job's keys expire after ``retention_s`` (a write now
        could race a task still unwinding, which would re-create a key without its TTL)."""

    # -- tasks ------------------------------------------------------------------------------------

    async def take(self, consumer: str, count: int, block_ms: int) -> list[Delivery]:
        if count <= 0:
            return []
        block = min(block_ms, MAX_BLOCK_MS) if block_ms > 0 else None  # BLOCK 0 would wait forever
        with self._r.unavailable():
            try:
                reply = await self._r.client.xreadgroup(
                    GROUP, consumer, {self._r.tasks: ">"}, count=count, block=block
                )
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self._r.ensure_group()  # the data was lost (no AOF): start a fresh group
                return []
        out: list[Delivery] = []
        for _stream, entries in cast(_StreamReply, reply or []):
            for entry_id, fields in entries:
                out.append(Delivery(id=entry_id, task=Task.model_validate_json(fields["task"]), deliveries=1))
        return out

    async def ack(self, delivery: Delivery) -> None:
        # One script, atomic as MULTI/EXEC was, but one command to pack and one reply to parse
        # instead of four of each on every candidate's hot path.
        with self._r.unavailable():
            await self._r.ack(keys=[self._r.tasks], args=[GROUP, delivery.id])

    async def _touch(self, consumer: str, deliveries: Sequence[Delivery], idle_ms: int) -> None:
        if not deliveries:
            return
        with self._r.unavailable():
            await self._r.touch(
                keys=[self._r.tasks], args=[GROUP, consumer, idle_ms, *(d.id for d in deliveries)]
            )

    async def heartbeat(self, consumer: str, deliveries: Sequence[Delivery]) -> None:
        await self._touch(consumer, deliveries, 0)

    async def release(self, consumer: str, deliveries: Sequence[Delivery]) -> None:
        await self._touch(consumer, deliveries, RELEASED_IDLE_MS)

    async def reclaim(self, consumer: str, idle_ms: int, count: int) -> ReclaimResult:
        if count <= 0:
            return ReclaimResult()
        with self._r.unavailable():
            try:
                claimed, dead = await self._r.reclaim(
                    keys=[self._r.tasks],
                    args=[GROUP, consumer, max(0, idle_ms), count, self.max_deliveries],
                )
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self._r.ensure_group()
                return ReclaimResult()

        def deliveries(rows: list[list[Any]]) -> list[Delivery]:
            return [Delivery(id=i, task=Task.model_validate_json(t), deliveries=int(n)) for i, t, n in rows]

        return ReclaimResult(deliveries=deliveries(claimed), dead=deliveries(dead))

    async def move_to_dead_letters(self, delivery: Delivery) -> bool:
        with self._r.unavailable():
            moved = await self._r.bury(
                keys=[self._r.tasks, self._r.dead], args=[GROUP, delivery.id, delivery.deliveries]
            )
        return bool(moved)

    async def stats(self, idle_ms: int | None = None) -> QueueStats:
        with self._r.unavailable():
            async with self._r.client.pipeline(transaction=False) as pipe:
                pipe.xlen(self._r.tasks)
                pipe.xpending(self._r.tasks, GROUP)
                pipe.llen(self._r.dead)
                if idle_ms is not None:
                    pipe.xpending_range(
                        self._r.tasks, GROUP, min="-", max="+", count=_PENDING_SCAN, idle=idle_ms
                    )
                try:
                    replies = await pipe.execute()
                except ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        raise
                    await self._r.ensure_group()
                    return QueueStats(queued=0, in_flight=0)
        length, pending, dead = int(replies[0]), int(replies[1]["pending"]), int(replies[2])
        stale = len(replies[3]) if idle_ms is not None else 0
        return QueueStats(queued=max(0, length - pending), in_flight=pending, dead=dead, reclaimable=stale)

    # -- jobs -------------------------------------------------------------------------------------

    async def create_job(
        self,
        job: Job,
        tasks: Sequence[Task],
        max_active: int | None = None,
        stored: Sequence[Candidate] = (),
    ) -> bool:
        fields: dict[str, str] = {
            "spec": job.spec.model_dump_json(),
            "owner": job.owner,
            "status": job.status.value,
            "round": str(job.round),
            "created_at": repr(job.created_at),
            "updated_at": repr(job.updated_at),
            "finished_at": json.dumps(job.finished_at),
            "error": json.dumps(job.error),
            "answer": json.dumps(job.answer),
            "warnings": json.dumps(job.warnings),
        }
        flat = [x for kv in fields.items() for x in kv]
        candidates: list[str | int] = []
        for cand in stored:
            candidates += [cand.round, cand.index, cand.model_dump_json()]
        with self._r.unavailable():
            created = await self._r.create(
                keys=[
                    self._r.job(job.id),
                    self._r.jobs,
                    self._r.owner_jobs(job.owner),
                    self._r.owner_active(job.owner),
                    self._r.tasks,
                    self._r.status_index(job.status),
                ],
                args=[
                    job.id,
                    repr(job.created_at),
                    "0" if job.status.terminal else "1",
                    -1 if max_active is None else max_active,
                    len(fields),
                    *flat,
                    len(stored),
                    *candidates,
                    *(t.model_dump_json() for t in tasks),
                ],
            )
        if int(created) < 0:
            assert max_active is not None
            raise ActiveLimitReached(-int(created), max_active)
        return int(created) == 1

    async def get_job(self, job_id: str) -> Job | None:
        with self._r.unavailable():
            values = cast(
                list[str | None], await self._r.client.hmget(self._r.job(job_id), list(_JOB_FIELDS))
            )
        return _job_from_fields(job_id, values)

    async def load_task(self, task: Task) -> TaskContext | None:
        parents = [str(p) for p in task.parents] if task.round > 0 else []
        with self._r.unavailable():
            async with self._r.client.pipeline(transaction=False) as pipe:
                pipe.hmget(self._r.job(task.job_id), list(_JOB_FIELDS))
                pipe.hget(self._r.round(task.job_id, task.round), str(task.index))
                if parents:
                    pipe.hmget(self._r.round(task.job_id, task.round - 1), parents)
                replies = await pipe.execute()
        job = _job_from_fields(task.job_id, cast(list[str | None], replies[0]))
        if job is None:
            return None
        if replies[1] is not None:
            return TaskContext(job=job, stored=Candidate.model_validate_json(replies[1]))
        found = cast(list[str | None], replies[2]) if parents else []
        return TaskContext(
            job=job, parents=[Candidate.model_validate_json(v) for v in found if v is not None]
        )

    async def get_statuses(self, job_ids: Sequence[str]) -> dict[str, JobStatus | None]:
        ids = list(job_ids)
        if not ids:
            return {}
        with self._r.unavailable():
            async with self._r.client.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hget(self._r.job(job_id), "status")
                values = cast(list[str | None], await pipe.execute())
        return {j: JobStatus(v) if v is not None else None for j, v in zip(ids, values, strict=True)}

    async def list_jobs(self, owner: str | None = None, limit: int = 100) -> list[Job]:
        index = self._r.jobs if owner is None else self._r.owner_jobs(owner)
        out: list[Job] = []
        start = 0
        with self._r.unavailable():
            while len(out) < limit:
                ids = cast(
                    list[str], await self._r.client.zrevrange(index, start, start + limit - len(out) - 1)
                )
                if not ids:
                    break
                start += len(ids)
                async with self._r.client.pipeline(transaction=False) as pipe:
                    for job_id in ids:
                        pipe.hmget(self._r.job(job_id), list(_JOB_FIELDS))
                    rows = await pipe.execute()
                expired = []
                for job_id, values in zip(ids, rows, strict=True):
                    job = _job_from_fields(job_id, values)
                    if job is None:
                        expired.append(job_id)
                    else:
                        out.append(job)
                if expired:  # retention TTL ran out: drop the index entries too
                    await self._r.client.zrem(index, *expired)
                    start -= len(expired)
        return out

    async def count_active(self, owner: str) -> int:
        with self._r.unavailable():
            return int(await self._r.client.scard(self._r.owner_active(owner)))

    async def count_by_status(self) -> dict[JobStatus, int]:
        """From the status index the scripts keep at every transition (one pipeline): the queued
        and running sets, and the finished jobs not yet past their retention."""
        expired = time.time() - self.retention_s
        with self._r.unavailable():
            async with self._r.client.pipeline(transaction=False) as pipe:
                for status in JobStatus:
                    key = self._r.status_index(status)
                    if status.terminal:
                        pipe.zremrangebyscore(key, "-inf", expired)
                        pipe.zcard(key)
                    else:
                        pipe.scard(key)
                replies = await pipe.execute()
        counts = iter(replies)
        out: dict[JobStatus, int] = {}
        for status in JobStatus:
            if status.terminal:
                next(counts)  # what ZREMRANGEBYSCORE pruned
            out[status] = int(next(counts))
        return out

    async def claim_idempotency_key(
        self, owner: str, key: str, job_id: str, fingerprint: str, ttl_s: int
    ) -> IdempotencyClaim | None:
        with self._r.unavailable():
            old = await self._r.claim_key(
                keys=[self._r.idempotency(owner, key)], args=[f"{job_id} {fingerprint}", max(1, ttl_s)]
            )
        if old is None:
            return None
        # "{job id} {fingerprint}"; a bare job id was claimed before fingerprints were stored.
        earlier, _, earlier_fingerprint = cast(str, old).partition(" ")
        return IdempotencyClaim(earlier, earlier_fingerprint or None)

    async def mark_running(self, job_id: str) -> bool:
        with self._r.unavailable():
            keys = [
                self._r.job(job_id),
                self._r.status_index(JobStatus.queued),
                self._r.status_index(JobStatus.running),
            ]
            return bool(await self._r.mark_running(keys=keys, args=[_now(), job_id]))

    async def save_candidate(self, job_id: str, candidate: Candidate, release: Sequence[Task] = ()) -> int:
        children: list[str | int] = []
        for t in release:
            children += [f"{t.round}:{t.index}", len(t.parents), *t.parents, t.model_dump_json()]
        with self._r.unavailable():
            count = int(
                await self._r.save_candidate(
                    keys=[
                        self._r.job(job_id),
                        self._r.round(job_id, candidate.round),
                        self._r.tasks,
                        self._r.released(job_id),
                    ],
                    args=[candidate.index, candidate.model_dump_json(), candidate.round, _now(), *children],
                )
            )
        if count < 0:
            raise KeyError(f"unknown job {job_id!r}")
        return count

    async def get_candidates(
        self,
        job_id: str,
        round_index: int,
        indices: Sequence[int] | None = None,
        *,
        exclude: Collection[int] = (),
    ) -> list[Candidate]:
        key = self._r.round(job_id, round_index)
        with self._r.unavailable():
            if indices is None:
                if exclude:  # one script: the round's other candidates only
                    args = [str(i) for i in exclude]
                    pairs = cast(list[str], await self._r.round_except(keys=[key], args=args))
                    found = dict(zip(pairs[::2], pairs[1::2], strict=True))
                else:
                    found = cast(dict[str, str], await self._r.client.hgetall(key))
                return [Candidate.model_validate_json(found[k]) for k in sorted(found, key=int)]
            if not indices:
                return []
            values = await self._r.client.hmget(key, [str(i) for i in indices])
        return [Candidate.model_validate_json(v) for v in values if v is not None]

    async def save_round_votes(self, job_id: str, votes: RoundVotes, event: Event | None = None) -> bool:
        with self._r.unavailable():
            saved = int(
                await self._r.save_votes(
                    keys=[self._r.job(job_id), self._r.votes(job_id), self._r.events(job_id)],
                    args=[
                        votes.round,
                        votes.tallied,
                        votes.model_dump_json(),
                        event.model_dump_json() if event is not None else "",
                        EVENTS_MAXLEN,
                    ],
                )
            )
        if saved < 0:
            raise KeyError(f"unknown job {job_id!r}")
        return saved == 1

    async def get_round_votes(self, job_id: str, round_index: int) -> RoundVotes | None:
        with self._r.unavailable():
            raw = await self._r.client.hget(self._r.votes(job_id), str(round_index))
        return RoundVotes.model_validate_json(raw) if raw else None

    async def complete_rounds(
        self,
        job_id: str,
        population: int,
        last_round: int,
        final_tasks: Sequence[Task] = (),
        last_population: int | None = None,
    ) -> tuple[int, int]:
        last_size = population if last_population is None else last_population
        with self._r.unavailable():
            before, after = await self._r.complete_rounds(
                keys=[self._r.job(job_id), self._r.tasks],
                args=[population, last_round, _now(), last_size, *(t.model_dump_json() for t in final_tasks)],
            )
        if int(before) == -2:
            raise KeyError(f"unknown job {job_id!r}")
        return int(before), int(after)

    async def _terminate(
        self, job_id: str, status: JobStatus, error: str | None, result: JobResult | None
    ) -> bool:
        answer = result.answer if result is not None else None
        with self._r.unavailable():
            done = int(
                await self._r.terminate(
                    keys=[self._r.job(job_id), self._r.checkpoints(job_id), self._r.events(job_id)],
                    args=[
                        job_id,
                        status.value,
                        json.dumps(error),
                        json.dumps(answer),
                        result.model_dump_json() if result is not None else "",
                        _now(),
                        self.retention_s,
                        self._r.p,
                    ],
                )
            )
        if done < 0:
            raise KeyError(f"unknown job {job_id!r}")
        return done == 1

    async def finish_job(self, job_id: str, result: JobResult) -> bool:
        return await self._terminate(job_id, result.status, result.error, result)

    async def get_result(self, job_id: str) -> JobResult | None:
        with self._r.unavailable():
            raw = await self._r.client.hget(self._r.job(job_id), "result")
        return JobResult.model_validate_json(raw) if raw else None

    async def cancel_job(self, job_id: str, reason: str = "cancelled") -> bool:
        """Mark the job cancelled. Its queued tasks stay on the stream and are skipped when taken
        (the engine returns early for a terminal job; the worker acks them)."""
        return await self._terminate(job_id, JobStatus.cancelled, reason, None)

    async def save_checkpoint(self, job_id: str, round_index: int, index: int, cp: ChunkCheckpoint) -> None:
        with self._r.unavailable():
            saved = int(
                await self._r.save_newest(
                    keys=[self._r.job(job_id), self._r.checkpoints(job_id)],
                    args=[f"{round_index}:{index}", cp.chunks, cp.model_dump_json()],
                )
            )
        if saved < 0:
            raise KeyError(f"unknown job {job_id!r}")

    async def load_checkpoint(self, job_id: str, round_index: int, index: int) -> ChunkCheckpoint | None:
        with self._r.unavailable():
            raw = await self._r.client.hget(self._r.checkpoints(job_id), f"{round_index}:{index}")
        return ChunkCheckpoint.model_validate_json(raw) if raw else None

    # -- events -----------------------------------------------------------------------------------

    async def add_event(self, job_id: str, event: Event) -> None:
        with self._r.unavailable():
            event_id = await self._r.add_event(
                keys=[self._r.job(job_id), self._r.events(job_id)],
                args=[event.model_dump_json(), EVENTS_MAXLEN],
            )
        if event_id is None:
            raise KeyError(f"unknown job {job_id!r}")

    async def read_events(
        self, job_id: str, after: str | None, block_ms: int, count: int = 100
    ) -> list[tuple[str, Event]]:
        """Events after ``after``; blocks at most ``MAX_BLOCK_MS`` per call (callers loop)."""
        block = min(block_ms, MAX_BLOCK_MS) if block_ms > 0 else None
        with self._r.unavailable():
            reply = await self._r.events_client.xread(
                {self._r.events(job_id): after or "0-0"}, count=count, block=block
            )
        out: list[tuple[str, Event]] = []
        for _stream, entries in cast(_StreamReply, reply or []):
            for entry_id, fields in entries:
                out.append((entry_id, Event.model_validate_json(fields["event"])))
        return out


async def connect(
    url: str,
    *,
    prefix: str = "mrsa",
    max_deliveries: int = 5,
    retention_s: int = 7 * 86400,
    max_connections: int = MAX_CONNECTIONS,
    events_connections: int | None = None,
    sentinel_password: str | None = None,
) -> RedisStore:
    """Connect to Redis at ``url`` and make sure the task stream and its consumer group exist (one
    attempt: :func:`mrsa.store.opening.open_store` retries and closes).

    ``url`` is a plain ``redis://``/``rediss://`` URL or a ``redis+sentinel://`` URL
    (:mod:`mrsa.store.redis_address`; ``sentinel_password`` is then the Sentinels' own password):
    behind Sentinel every connection goes to the current master and follows a failover.

    Raises :class:`StoreUnavailable` when Redis cannot be reached. The client retries a failed
    command twice with a short backoff (a pooled connection that a Redis restart broke is replaced
    transparently); longer outages surface as StoreUnavailable.

    At most ``max_connections`` connections; a command that finds them all busy waits for one
    (up to ``redis_clients.POOL_WAIT_S``). redis-py's default pool instead fails the 101st concurrent command,
    and a worker with 256 tasks in flight issues more than that at once. ``events_connections``:
    a second pool of that size for event reads (see the module docstring).
    """
    if max_deliveries < 1:
        raise ValueError("max_deliveries must be ≥ 1")
    clients = open_clients(
        url,
        max_connections=max_connections,
        events_connections=events_connections,
        sentinel_password=sentinel_password,
    )
    store = RedisStore(_Redis(clients, url, prefix), max_deliveries, retention_s)
    try:
        with store._r.unavailable():
            await store._r.ensure_group()
            await store._r.load_scripts()
    except BaseException:
        await store.aclose()
        raise
    return store
