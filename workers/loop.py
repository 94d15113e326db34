"""The worker task loop: take as many tasks as the backend can run, run them through the engine,
ack each once its result is stored, heartbeat the ones in flight, reclaim silent consumers' tasks,
and stop gracefully (finish or release what is in flight)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass

from mrsa import metrics
from mrsa.backends.base import BackendError
from mrsa.engine.runner import Engine
from mrsa.store.base import Delivery, StoreUnavailable, TaskQueue

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


class Worker:
    """One consumer: at most ``capacity`` tasks in flight."""

    def __init__(
        self,
        engine: Engine,
        queue: TaskQueue,
        options: WorkerOptions | None = None,
        consumer: str | None = None,
    ) -> None:
        self.engine = engine
        self.queue = queue
        self.options = options or WorkerOptions()
        self.consumer = consumer or consumer_name()
        self._running: dict[str, tuple[Delivery, asyncio.Task[None]]] = {}
        self._cancelled_jobs: set[str] = set()
        self.completed = 0

    @property
    def in_flight(self) -> int:
        return len(self._running)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then finish in-flight tasks within the grace period."""
        side = [
            asyncio.create_task(self._heartbeat_loop(stop)),
            asyncio.create_task(self._cancel_loop(stop)),
        ]
        try:
            await self._take_loop(stop)
        finally:
            await self._drain()
            for t in side:
                t.cancel()
            for t in side:
                with contextlib.suppress(asyncio.CancelledError):
                    await t

    async def _take_loop(self, stop: asyncio.Event) -> None:
        since_reclaim = float("inf")
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            free = self.options.capacity - len(self._running)
            if free <= 0:
                await self._wait_for_slot(stop)
                continue
            try:
                got: list[Delivery] = []
                if (
                    loop.time() - since_reclaim >= self.options.reclaim_idle_ms / 2000
                    or since_reclaim == float("inf")
                ):
                    since_reclaim = loop.time()
                    got = await self.queue.reclaim(self.consumer, self.options.reclaim_idle_ms, free)
                    if got:
                        metrics.TASKS_RECLAIMED.inc(len(got))
                        log.info("reclaimed %d task(s) from silent consumers", len(got))
                if not got:
                    got = await self.queue.take(self.consumer, free, self._block_ms(stop))
            except StoreUnavailable as exc:
                log.warning("store unavailable: %s; retrying", exc)
                await asyncio.sleep(1.0)
                continue
            for delivery in got:
                self._start(delivery)

    def _block_ms(self, stop: asyncio.Event) -> int:
        return 0 if stop.is_set() else self.options.block_ms

    async def _wait_for_slot(self, stop: asyncio.Event) -> None:
        tasks = [t for _, t in self._running.values()]
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()

    def _start(self, delivery: Delivery) -> None:
        if delivery.id in self._running:
            return
        task = asyncio.create_task(self._handle(delivery))
        self._running[delivery.id] = (delivery, task)
        metrics.TASKS_IN_FLIGHT.set(len(self._running))

    async def _handle(self, delivery: Delivery) -> None:
        task = delivery.task
        ack = True
        try:
            await self.engine.run_task(task)
        except asyncio.CancelledError:
            # Cancelled job: drop the task. Shutdown past the grace period: release it (no ack).
            ack = task.job_id in self._cancelled_jobs
            if not ack:
                raise
        except StoreUnavailable as exc:
            ack = False
            log.warning("task %s left pending, store unavailable: %s", task.key, exc)
        except BackendError as exc:
            metrics.TASK_FAILURES.labels(exc.kind).inc()
            log.error("task %s failed: %s", task.key, exc)
            await self.engine.fail(task.job_id, exc)
        except Exception as exc:  # a bug or bad data: fail the job with the reason, never hang it
            metrics.TASK_FAILURES.labels("internal").inc()
            log.exception("task %s crashed", task.key)
            await self.engine.fail(task.job_id, exc)
        finally:
            self._running.pop(delivery.id, None)
            metrics.TASKS_IN_FLIGHT.set(len(self._running))
            if ack:
                with contextlib.suppress(StoreUnavailable):
                    await self.queue.ack(delivery)
                    self.completed += 1

    async def _heartbeat_loop(self, stop: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self.options.heartbeat_s)
            if self._running:
                with contextlib.suppress(StoreUnavailable):
                    await self.queue.heartbeat(self.consumer, [d for d, _ in self._running.values()])

    async def _cancel_loop(self, stop: asyncio.Event) -> None:
        """Cancel in-flight backend requests of jobs that were cancelled (or failed) meanwhile."""
        while True:
            await asyncio.sleep(self.options.cancel_check_s)
            jobs = {d.task.job_id for d, _ in self._running.values()}
            for job_id in jobs:
                try:
                    job = await self.engine.store.get_job(job_id)
                except StoreUnavailable:
                    continue
                if job is None or job.status.terminal:
                    self._cancelled_jobs.add(job_id)
                    for d, t in list(self._running.values()):
                        if d.task.job_id == job_id:
                            t.cancel()

    async def _drain(self) -> None:
        """Graceful stop: let in-flight tasks finish for a grace period, then release them."""
        pending = [t for _, t in self._running.values()]
        if not pending:
            return
        _, still = await asyncio.wait(pending, timeout=self.options.shutdown_grace_s)
        for t in still:
            t.cancel()
        for t in still:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
