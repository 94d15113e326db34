"""The worker task loop: take as many tasks as the backend can run, run them through the engine,
ack each once its result is stored, heartbeat the ones in flight, reclaim silent consumers' tasks
(failing the job of one delivered too often, then dead-lettering it), publish queue gauges, and
stop gracefully: finish what is in flight within a grace period, then release the rest unacked
for another worker.

When the store is unreachable the loop backs off (exponentially, with jitter) and tries again; a
task that hit the outage is left pending and is reclaimed after the idle timeout, so a Redis
restart costs time, never a candidate. A task whose request fails with an ``outage`` error (down,
restarting, saturated, timed out: after the HTTP client's retries) is kept — in flight and
heartbeated — and retried with the same backoff, and its job fails only once it has failed so for
``backend_hold_s``: a vLLM restart costs time, never a job. Whether the rest of the worker stops
taking tasks meanwhile is decided by :class:`~workers.backend_hold.BackendHold`: only when the
*backend* is out (several tasks failing in a row, or a failed health probe), not for one request
that stalls or fails while the backend serves the others.
With a :class:`~mrsa.backends.pressure.BackendPressure` (``MRSA_BACKEND_METRICS_URL``), the worker
also takes no new tasks while the router's or server's queue is longer than allowed; in-flight
tasks run on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mrsa import telemetry
from mrsa.backends.base import BackendError
from mrsa.backends.pressure import BackendPressure
from mrsa.backoff import backoff_delay
from mrsa.domain import Task
from mrsa.engine.runner import TaskRunner
from mrsa.store.base import Delivery, StoreUnavailable, TaskQueue
from workers.backend_hold import BackendHold

log = logging.getLogger("mrsa.worker")


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class WorkerOptions:
    capacity: int = 1
    block_ms: int = 1000
    reclaim_idle_ms: int = 60_000
    heartbeat_s: float = 10.0
    cancel_check_s: float = 1.0
    shutdown_grace_s: float = 30.0
    stats_interval_s: float = 5.0
    backoff_s: float = 0.5
    backoff_cap_s: float = 10.0
    reclaim_check_s: float = 5.0  # at most this long between reclaim checks (released tasks)
    backend_hold_s: float = 600.0  # hold a task this long while the backend is out; 0 = fail at once
    backend_out_after: int = 3  # distinct tasks failing in a row that mean the backend is out
    backend_probe_timeout_s: float = 10.0  # a health probe slower than this failed

    @property
    def reclaim_every_s(self) -> float:
        """How often to look for silent or released tasks: half the idle timeout, capped so a
        task released by a stopping worker is picked up quickly even with a long timeout."""
        return min(self.reclaim_idle_ms / 2000, self.reclaim_check_s)


def dead_letter_reason(delivery: Delivery) -> str:
    return (
        f"task {delivery.task.key} was moved to the dead-letter list after {delivery.deliveries} "
        "deliveries: every worker that took it stopped (crashed or was killed) before finishing it"
    )


async def cancel_until_done(tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until they are done. Python 3.11's ``asyncio.wait_for`` (redis-py
    wraps every send in it) can swallow a cancellation that lands just as its inner call completes,
    and the task then carries on: cancel again until it sticks (a task that ignores 100
    cancellations, 20 s, is left running and logged)."""
    for _ in range(100):
        still = [t for t in tasks if not t.done()]
        if not still:
            return
        for t in still:
            t.cancel()
        await asyncio.wait(still, timeout=0.2)
    left = [t.get_name() for t in tasks if not t.done()]
    if left:
        log.error("%d task(s) ignored cancellation and are left running: %s", len(left), ", ".join(left))


class _Outage:
    """Backoff while the store is unreachable; one log line when it starts and one when it ends."""

    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        self.failures = 0
        self.started = 0.0

    def delay(self, exc: StoreUnavailable) -> float:
        loop = asyncio.get_running_loop()
        if self.failures == 0:
            self.started = loop.time()
            log.warning("store unavailable (%s); retrying with backoff", exc)
        self.failures += 1
        return backoff_delay(self.options.backoff_s, self.options.backoff_cap_s, self.failures)

    def ok(self) -> None:
        if self.failures:
            elapsed = asyncio.get_running_loop().time() - self.started
            log.info("store reachable again after %.1fs (%d failed attempts)", elapsed, self.failures)
            self.failures = 0


class Worker:
    """One consumer: at most ``capacity`` tasks in flight."""

    def __init__(
        self,
        runner: TaskRunner,
        queue: TaskQueue,
        options: WorkerOptions | None = None,
        consumer: str | None = None,
        pressure: BackendPressure | None = None,
    ) -> None:
        self.runner = runner
        self.pressure = pressure
        self.queue = queue
        self.options = options or WorkerOptions()
        self.consumer = consumer or consumer_name()
        self._running: dict[str, tuple[Delivery, asyncio.Task[None]]] = {}
        self._cancelled_jobs: set[str] = set()
        self._dead: list[Delivery] = []  # reported dead by reclaim: fail their jobs, then dead-letter
        self._outage = _Outage(self.options)
        self.hold = BackendHold(
            runner.backend.health,
            out_after=self.options.backend_out_after,
            probe_timeout_s=self.options.backend_probe_timeout_s,
        )
        self._force = asyncio.Event()
        self._finished = asyncio.Event()  # set when a task in flight ends: a slot may be free
        self.completed = 0
        self.reclaimed = 0
        self.released = 0

    @property
    def in_flight(self) -> int:
        return len(self._running)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then finish in-flight tasks within the grace period."""
        side = [
            asyncio.create_task(self._heartbeat_loop()),
            asyncio.create_task(self._cancel_loop()),
            asyncio.create_task(self._stats_loop()),
        ]
        if self.pressure is not None:
            side.append(asyncio.create_task(self.pressure.run()))
        try:
            await self._take_loop(stop)
        finally:
            await self._drain()
            await self.hold.aclose()
            await cancel_until_done(side)
            for t in side:
                if t.done() and not t.cancelled():
                    t.result()  # a side loop that crashed: surface it

    async def _take_loop(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        last_reclaim = float("-inf")
        while not stop.is_set():
            # While the backend is out, or its queue is long, take no new tasks (another worker's
            # backend may have room). One task retrying after its own failure holds nothing.
            pressed = self.pressure is not None and self.pressure.holding
            free = 0 if self.hold.holding or pressed else self.options.capacity - len(self._running)
            if free <= 0:
                await self._wait_for_slot(stop, pressed)
                continue
            try:
                await self._fail_dead_jobs()
                got: list[Delivery] = []
                if loop.time() - last_reclaim >= self.options.reclaim_every_s:
                    last_reclaim = loop.time()
                    got = await self._reclaim(free)
                if not got:
                    got = await self.queue.take(self.consumer, free, self._block_ms(stop))
                self._outage.ok()
            except StoreUnavailable as exc:
                telemetry.STORE_UNAVAILABLE.inc()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._outage.delay(exc))
                continue
            if stop.is_set() and got:  # taken while stopping: hand them straight back
                await self._release(got)
                break
            for delivery in got:
                self._start(delivery)

    async def _reclaim(self, free: int) -> list[Delivery]:
        result = await self.queue.reclaim(self.consumer, self.options.reclaim_idle_ms, free)
        # Our own tasks come back only when our heartbeats lapsed (a long store outage): they are
        # still running here, so neither start them again nor fail the job of one reported dead
        # (acking it when it finishes removes it; if we die, the next reclaim reports it again).
        result.deliveries = [d for d in result.deliveries if d.id not in self._running]
        result.dead = [d for d in result.dead if d.id not in self._running]
        if result.deliveries:
            self.reclaimed += len(result.deliveries)
            telemetry.TASKS_RECLAIMED.inc(len(result.deliveries))
            log.info(
                "reclaimed %d task(s) from silent consumers: %s",
                len(result.deliveries),
                ", ".join(f"{d.task.key} (delivery {d.deliveries})" for d in result.deliveries),
            )
        if result.dead:
            known = {d.id for d in self._dead}
            self._dead.extend(d for d in result.dead if d.id not in known)
            await self._fail_dead_jobs()
        return result.deliveries

    async def _fail_dead_jobs(self) -> None:
        """Fail the job of each task reclaim found delivered too often, then move the task to the
        dead-letter list: in that order, so a worker dying in between leaves the task pending for
        the next reclaim instead of a running job whose last task is gone. Kept (and retried on the
        next loop) while the store is unreachable; failing a job twice is a no-op."""
        while self._dead:
            d = self._dead[0]
            try:
                await self.runner.jobs.fail(d.task.job_id, dead_letter_reason(d))
            except StoreUnavailable:
                raise
            except Exception:  # bad data must not crash every worker that meets this task
                log.exception("could not fail job %s of dead-lettered task %s", d.task.job_id, d.task.key)
            if await self.queue.move_to_dead_letters(d):
                telemetry.TASKS_DEAD.inc()
                log.error("dead-lettered %s", dead_letter_reason(d))
            self._dead.pop(0)

    def _block_ms(self, stop: asyncio.Event) -> int:
        return 0 if stop.is_set() else self.options.block_ms

    async def _wait_for_slot(self, stop: asyncio.Event, pressed: bool = False) -> None:
        """Until a task finishes or ``stop``; when the backend's queue holds the worker
        (``pressed``), also until it opens, and at most one reading interval (a reading that
        goes stale holds nothing, and no event says so)."""
        # One event for "a task ended" instead of waiting on every task in flight: asyncio.wait
        # adds and removes a callback on each of them, O(capacity) work on every freed slot.
        self._finished.clear()
        stopper = asyncio.create_task(stop.wait())
        waiters = [stopper, asyncio.create_task(self._finished.wait())]
        timeout: float | None = None
        if pressed and self.pressure is not None:
            waiters.append(asyncio.create_task(self.pressure.opened.wait()))
            timeout = self.pressure.interval_s
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _start(self, delivery: Delivery) -> None:
        if delivery.id in self._running:
            return
        task = asyncio.create_task(self._handle(delivery))
        task.add_done_callback(self._task_ended)
        self._running[delivery.id] = (delivery, task)
        telemetry.TASKS_IN_FLIGHT.set(len(self._running))
        log.debug("started %s (delivery %d)", delivery.task.key, delivery.deliveries)

    def _task_ended(self, _task: asyncio.Task[None]) -> None:
        self._finished.set()

    async def _handle(self, delivery: Delivery) -> None:
        task = delivery.task
        ack = True
        try:
            await self._run_holding(task)
        except asyncio.CancelledError:
            # Cancelled job: drop the task. Shutdown past the grace period: release it (no ack).
            ack = task.job_id in self._cancelled_jobs
            if not ack:
                raise
        except StoreUnavailable as exc:
            ack = False
            telemetry.STORE_UNAVAILABLE.inc()
            log.warning("task %s left pending, store unavailable: %s", task.key, exc)
        except BackendError as exc:
            telemetry.TASK_FAILURES.labels(exc.kind).inc()
            log.error("task %s failed, failing job %s: %s", task.key, task.job_id, exc)
            ack = await self._fail(task.job_id, exc)
        except Exception as exc:  # a bug or bad data: fail the job with the reason, never hang it
            telemetry.TASK_FAILURES.labels("internal").inc()
            log.exception("task %s crashed", task.key)
            ack = await self._fail(task.job_id, exc)
        finally:
            self._running.pop(delivery.id, None)
            telemetry.TASKS_IN_FLIGHT.set(len(self._running))
            if ack:
                try:
                    await self.queue.ack(delivery)
                    self.completed += 1
                except StoreUnavailable:
                    log.warning("ack of %s failed (store unavailable); it will be redelivered", task.key)

    async def _run_holding(self, task: Task) -> None:
        """Run ``task``; on an outage error, keep it and try again with backoff until it runs or it
        has failed so for ``backend_hold_s`` (then the error, saying so, fails the job). Each
        failure is reported to :attr:`hold`, which decides whether the backend is out."""
        hold_s = self.options.backend_hold_s
        loop = asyncio.get_running_loop()
        since: float | None = None
        tries = 0
        try:
            while True:
                try:
                    await self.runner.run_task(task)
                except BackendError as exc:
                    if not exc.outage or hold_s <= 0:
                        raise
                    if since is None:
                        since = loop.time()
                        self.hold.retrying(+1)
                    out = await self.hold.failed(task.key, exc)
                    waited = loop.time() - since
                    if waited >= hold_s:
                        why = (
                            "the backend stayed out"
                            if out
                            else "the request kept failing while the backend answered its health probe"
                        )
                        exc.args = (f"{exc}; {why} for {waited:.0f}s (backend hold)",)
                        raise
                    if tries == 0 and not out:
                        log.warning(
                            "task %s failed (%s); the backend answers its health probe: retrying this "
                            "task alone for up to %.0fs, taking tasks on",
                            task.key,
                            exc,
                            hold_s,
                        )
                    tries += 1
                    await asyncio.sleep(
                        backoff_delay(self.options.backoff_s, self.options.backoff_cap_s, tries)
                    )
                else:
                    self.hold.succeeded()
                    if since is not None:
                        log.info("task %s ran after failing for %.1fs", task.key, loop.time() - since)
                    return
        finally:
            if since is not None:
                self.hold.retrying(-1)

    async def _fail(self, job_id: str, error: BaseException) -> bool:
        """Fail the job; ``False`` (leave the task pending, to fail it again later) when the store
        is unreachable, so a job is never left running with nobody working on it."""
        try:
            await self.runner.jobs.fail(job_id, error)
        except StoreUnavailable as exc:
            log.warning("could not fail job %s, store unavailable: %s", job_id, exc)
            return False
        except Exception:
            log.exception("could not fail job %s", job_id)
        return True

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.heartbeat_s)
            if self._running:
                with contextlib.suppress(StoreUnavailable):
                    await self.queue.heartbeat(self.consumer, [d for d, _ in self._running.values()])

    async def _stats_loop(self) -> None:
        while True:
            with contextlib.suppress(StoreUnavailable):
                telemetry.observe_queue(await self.queue.stats(idle_ms=self.options.reclaim_idle_ms))
            await asyncio.sleep(self.options.stats_interval_s)

    async def _cancel_loop(self) -> None:
        """Cancel in-flight backend requests of jobs that were cancelled (or failed) meanwhile."""
        while True:
            await asyncio.sleep(self.options.cancel_check_s)
            jobs = sorted({d.task.job_id for d, _ in self._running.values()})
            try:
                statuses = await self.runner.store.get_statuses(jobs)
            except StoreUnavailable:
                continue
            for job_id, status in statuses.items():
                if status is None or status.terminal:
                    self._cancelled_jobs.add(job_id)
                    for d, t in list(self._running.values()):
                        if d.task.job_id == job_id:
                            log.info("job %s is %s: stopping %s", job_id, status or "gone", d.task.key)
                            t.cancel()

    async def _release(self, deliveries: list[Delivery]) -> None:
        try:
            await self.queue.release(self.consumer, deliveries)
        except StoreUnavailable:
            log.warning(
                "could not release %d task(s); they will be reclaimed after the idle timeout", len(deliveries)
            )
            return
        self.released += len(deliveries)
        telemetry.TASKS_RELEASED.inc(len(deliveries))
        log.info(
            "released %d unfinished task(s): %s", len(deliveries), ", ".join(d.task.key for d in deliveries)
        )

    def force_stop(self) -> None:
        """Cut the grace period short: in-flight tasks are cancelled and released at once."""
        self._force.set()

    async def _drain(self) -> None:
        """Graceful stop: let in-flight tasks finish for a grace period, then release the rest."""
        running = list(self._running.values())
        if not running:
            return
        log.info(
            "stopping: waiting up to %.0fs for %d task(s) in flight",
            self.options.shutdown_grace_s,
            len(running),
        )
        tasks = [t for _, t in running]
        all_done: asyncio.Future[list[BaseException | None]] = asyncio.gather(*tasks, return_exceptions=True)
        forced: asyncio.Future[bool] = asyncio.ensure_future(self._force.wait())
        waiting: list[asyncio.Future[Any]] = [all_done, forced]
        await asyncio.wait(
            waiting, timeout=self.options.shutdown_grace_s, return_when=asyncio.FIRST_COMPLETED
        )
        forced.cancel()
        await cancel_until_done(tasks)
        if all(t.done() for t in tasks):
            await all_done
        unfinished = [d for d, t in running if t.cancelled()]
        if unfinished:
            await self._release(unfinished)
