"""A killable process pool with a wall-clock limit per call: where untrusted mathematics runs.

sympy can spend minutes (and gigabytes) in C code on an answer like ``9^{9^{9}}`` and nothing in the
process can interrupt it: math-verify's own timeouts use ``signal.alarm``, which only works on a
main thread and not inside a long C call. So the limit is enforced from outside: calls run in
worker processes, and a worker that overruns its deadline is killed and the pool recycled. One
hostile call costs one timeout, never a hung caller. Used by :class:`mrsa.engine.equivalence.Equivalence`,
which serves both answer clustering and grading (:mod:`evals.grading`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

# Address-space cap of a pool worker: a runaway expansion fails fast instead of swapping.
WORKER_MEMORY_BYTES = 4 << 30
# How long a fresh pool may take to start every worker (imports, warm-up) before it is an error.
START_TIMEOUT_S = 300.0

Call = tuple[Callable[..., Any], tuple[Any, ...]]


def _ping() -> bool:
    return True


def _init_worker(initializer: Callable[[], None] | None, memory_bytes: int | None) -> None:
    # Ctrl-C reaches the whole process group: the parent decides, a worker must not die mid-call.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import resource

        # No orphan may go on computing when the pool's owner dies: die with our parent (the fork
        # server), and let the fork server see its owner go (it exits when the last holder of its
        # "alive" pipe closes it, and every child inherits a copy).
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        with contextlib.suppress(Exception):
            from multiprocessing import forkserver

            server: Any = forkserver._forkserver
            alive = getattr(server, "_forkserver_alive_fd", None)
            if alive is not None:
                os.close(alive)
                server._forkserver_alive_fd = None
        if memory_bytes is not None:
            with contextlib.suppress(ValueError, OSError):
                _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
                cap = memory_bytes if hard == resource.RLIM_INFINITY else min(hard, memory_bytes)
                resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    if initializer is not None:
        initializer()


def _context(preload: Sequence[str]) -> multiprocessing.context.BaseContext:
    # Never fork: the parent runs an event loop and threads. forkserver is cheap where it exists, and
    # with ``preload`` imported in the server a recycled pool starts in milliseconds, not seconds.
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        if preload:
            ctx.set_forkserver_preload(list(preload))
        return ctx
    return multiprocessing.get_context("spawn")


class DeadlinePool:
    """Worker processes that run picklable calls, each under a wall-clock limit.

    Thread-safe (calls are serialised), so async code uses it through ``asyncio.to_thread``. Calls
    are sent in batches of at most ``workers`` so every call of a batch starts at once and its
    deadline measures its own work, not time spent queued behind others. Processes start on the
    first call and are killed (and restarted on the next call) when one overruns.
    """

    def __init__(
        self,
        workers: int = 2,
        timeout_s: float = 10.0,
        *,
        initializer: Callable[[], None] | None = None,
        preload: Sequence[str] = (),
        memory_bytes: int | None = WORKER_MEMORY_BYTES,
        name: str = "pool",
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be ≥ 1")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.workers = workers
        self.timeout_s = timeout_s
        self.name = name
        self.recycled = 0
        self.startup_s = 0.0  # total time spent starting processes (not counted in any deadline)
        self._initializer = initializer
        self._preload = tuple(preload)
        self._memory_bytes = memory_bytes
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> DeadlinePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            began = time.monotonic()
            init = functools.partial(_init_worker, self._initializer, self._memory_bytes)
            pool = ProcessPoolExecutor(self.workers, mp_context=_context(self._preload), initializer=init)
            # Start every worker (and its warm-up) before any deadline runs. A pool that cannot
            # start is an installation problem: say so instead of reporting every call a timeout.
            pings = [pool.submit(_ping) for _ in range(self.workers)]
            wait(pings, timeout=START_TIMEOUT_S)
            try:
                for ping in pings:
                    ping.result(timeout=0)
            except Exception as exc:
                pool.shutdown(wait=False, cancel_futures=True)
                raise RuntimeError(f"the {self.name} processes failed to start: {exc!r}") from exc
            finally:
                self.startup_s += time.monotonic() - began
            self._pool = pool
        return self._pool

    def _kill_pool(self) -> None:
        """Kill the workers (a stuck one cannot be cancelled) and drop the pool."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        self.recycled += 1
        kill = getattr(pool, "kill_workers", None)  # public from Python 3.14
        if callable(kill):
            kill()
        else:
            for proc in list(getattr(pool, "_processes", {}).values()):
                with contextlib.suppress(Exception):
                    proc.kill()
        pool.shutdown(wait=True, cancel_futures=True)

    def _run_batches(self, calls: Sequence[Call], timeout_s: float) -> list[tuple[Any] | None]:
        results: list[tuple[Any] | None] = [None] * len(calls)
        todo = deque(range(len(calls)))
        while todo:
            pool = self._ensure_pool()
            batch = [todo.popleft() for _ in range(min(self.workers, len(todo)))]
            futures: dict[Future[Any], int] = {}
            try:
                for i in batch:
                    fn, args = calls[i]
                    futures[pool.submit(fn, *args)] = i
            except BrokenProcessPool:
                self._kill_pool()
                todo.extendleft(reversed([i for i in batch if i not in futures.values()]))
            done, not_done = wait(futures, timeout=timeout_s)
            broken = False
            for fut in done:
                try:
                    results[futures[fut]] = (fut.result(),)
                except BrokenProcessPool:
                    broken = True
            if not_done or broken:
                self._kill_pool()
        return results

    def run_many(self, calls: Sequence[Call], timeout_s: float | None = None) -> list[tuple[Any] | None]:
        """Run ``(fn, args)`` calls: ``(result,)`` each, ``None`` for a call that overran its
        deadline (``timeout_s``, default the pool's) or killed its worker. An exception raised by a
        call is raised here."""
        with self._lock:
            return self._run_batches(calls, self.timeout_s if timeout_s is None else timeout_s)
