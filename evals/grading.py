"""Symbolic grading with ``math-verify``, in a process pool with a wall-clock limit per answer.

math-verify's own timeouts use ``signal.alarm``, which only works on a process's main thread, so
they are disabled here (``parsing_timeout=None``, ``timeout_seconds=None``) and the limit is
enforced from outside instead: answers are graded in worker processes, and a worker that overruns
its deadline (``9^{9^{9}}`` makes sympy build a 370-million-digit integer) is killed and the pool
is recycled, so one hostile answer costs one timeout, never a hung sweep.

Grading is strict: a candidate is graded on the content of its last ``\\boxed{}`` (the answer part
first, then the whole trace). The engine's fallback for unboxed answers ("the answer is 42") serves
a user's answer, not a score.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import re
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Literal, TypeVar

from math_verify import LatexExtractionConfig, parse, verify
from pydantic import BaseModel

from mrsa.engine.answers import last_boxed, normalise_answer

Reason = Literal["correct", "wrong", "no_boxed", "parse_error", "timeout"]
REASONS: tuple[Reason, ...] = ("correct", "wrong", "no_boxed", "parse_error", "timeout")

# A decimal prediction counts only when it agrees with the gold to this many decimal places:
# 0.5 = 1/2, but 0.001736 is not 1/576 (math-verify's default of 6 places would accept it).
FLOAT_ROUNDING = 10
DEFAULT_TIMEOUT_S = 10.0
# Address-space cap of a grading worker: a runaway expansion fails fast instead of swapping.
WORKER_MEMORY_BYTES = 4 << 30

_CONFIG = [LatexExtractionConfig(boxed_match_priority=0)]

T = TypeVar("T")


class Grade(BaseModel):
    """The verdict on one answer, with why."""

    correct: bool
    reason: Reason
    answer: str | None = None
    detail: str | None = None


def boxed_answer(content: str, trace: str = "") -> str | None:
    """The strictly extracted answer of a candidate: its last ``\\boxed{}`` (answer part first)."""
    return last_boxed(content) or last_boxed(trace)


# Thin spaces and braced commas used as thousands separators (``3\,375``, ``1{,}000``): latex2sympy
# reads ``1\,000`` as a product, 1·0.
_DIGIT_GROUP = re.compile(r"(?<=\d)(?:\\[,;:!]|\\ |\{,\}|~)(?=\d{3}(?!\d))")


def _expand_pm(answer: str) -> str:
    """``\\frac{-1\\pm\\sqrt{17}}{2}`` → the two-value list math-verify reads as a set (it cannot
    parse a ``\\pm`` inside an expression). Only for one ``\\pm`` in an answer without commas."""
    if answer.count("\\pm") != 1 or "\\mp" in answer or "," in answer:
        return answer
    plus, minus = answer.replace("\\pm", "+"), answer.replace("\\pm", "-")
    return f"{plus}, {minus}"


def _parse(answer: str) -> list[Any]:
    """math-verify's parse of an answer as if boxed; no string fallback, so an answer that is not
    mathematics comes back empty (a ``parse_error``) instead of as a raw string."""
    answer = _expand_pm(_DIGIT_GROUP.sub("", answer))
    return list(
        parse(
            f"\\boxed{{{answer}}}",
            extraction_config=_CONFIG,
            fallback_mode="no_fallback",
            parsing_timeout=None,
        )
    )


def grade_answer(gold: str, answer: str | None) -> Grade:
    """Grade an extracted answer against ``gold`` in this process, without a time limit (the
    :class:`Grader` adds one). Gold first, as math-verify wants: its comparison is asymmetric."""
    if answer is None or not answer.strip():
        return Grade(correct=False, reason="no_boxed", answer=answer)
    if normalise_answer(gold) == normalise_answer(answer):
        return Grade(correct=True, reason="correct", answer=answer)
    return _verify(gold, answer)


def _verify(gold: str, answer: str) -> Grade:
    try:
        parsed_gold = _parse(gold)
    except Exception as exc:  # math-verify raises many kinds on malformed LaTeX
        return Grade(correct=False, reason="parse_error", answer=answer, detail=f"gold: {exc}")
    if not parsed_gold:
        return Grade(correct=False, reason="parse_error", answer=answer, detail="gold did not parse")
    try:
        parsed = _parse(answer)
    except Exception as exc:
        return Grade(correct=False, reason="parse_error", answer=answer, detail=str(exc)[:200])
    if not parsed:
        return Grade(correct=False, reason="parse_error", answer=answer, detail="answer did not parse")
    try:
        ok = verify(parsed_gold, parsed, float_rounding=FLOAT_ROUNDING, timeout_seconds=None)
    except Exception as exc:
        return Grade(correct=False, reason="parse_error", answer=answer, detail=str(exc)[:200])
    return Grade(correct=bool(ok), reason="correct" if ok else "wrong", answer=answer)


def symbolic_equal(gold: str, answer: str) -> bool:
    """math-verify's verdict alone (no string shortcut): used by tests to show the symbolic path
    accepts every shipped gold answer."""
    return _verify(gold, answer).correct


def grade_text(gold: str, text: str) -> Grade:
    """Grade a whole model output strictly: the last ``\\boxed{}``, else ``no_boxed``."""
    return grade_answer(gold, last_boxed(text))


def _init_worker() -> None:
    # Ctrl-C reaches the whole process group: the parent decides, a worker must not die mid-grade.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout is disabled" is on purpose
    if sys.platform.startswith("linux"):
        import resource

        with contextlib.suppress(ValueError, OSError):
            _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
            cap = WORKER_MEMORY_BYTES if hard == resource.RLIM_INFINITY else min(hard, WORKER_MEMORY_BYTES)
            resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    _parse("1")  # import and warm up sympy/antlr before the first deadline starts


def _ping() -> bool:
    return True


def _context() -> multiprocessing.context.BaseContext:
    # Never fork: the parent runs an event loop and threads. forkserver is cheap where it exists.
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(method)


class GraderTimeout(Exception):
    """A call to :meth:`Grader.call` overran its deadline (its worker was killed)."""


class Grader:
    """A pool of grading processes with a per-answer wall-clock limit.

    Thread-safe (calls are serialised), so async code can use it through ``asyncio.to_thread``.
    Answers are sent in batches of at most ``workers`` so every answer of a batch starts at once
    and its deadline measures its own work, not time spent queued behind others.
    """

    def __init__(self, workers: int = 2, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if workers < 1:
            raise ValueError("workers must be ≥ 1")
        self.workers = workers
        self.timeout_s = timeout_s
        self.recycled = 0
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> Grader:
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
            pool = ProcessPoolExecutor(self.workers, mp_context=_context(), initializer=_init_worker)
            # Start every worker (and its warm-up) before any deadline runs. A pool that cannot
            # start is an installation problem: say so instead of grading everything "timeout".
            pings = [pool.submit(_ping) for _ in range(self.workers)]
            wait(pings, timeout=300)
            try:
                for ping in pings:
                    ping.result(timeout=0)
            except Exception as exc:
                pool.shutdown(wait=False, cancel_futures=True)
                raise RuntimeError(f"the grading processes failed to start: {exc!r}") from exc
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

    def _run_batches(
        self, calls: Sequence[tuple[Callable[..., T], tuple[Any, ...]]]
    ) -> list[tuple[T] | None]:
        """Run ``calls`` in the pool: ``(result,)`` each, ``None`` for a call that timed out or
        killed its worker."""
        results: list[tuple[T] | None] = [None] * len(calls)
        todo = deque(range(len(calls)))
        while todo:
            pool = self._ensure_pool()
            batch = [todo.popleft() for _ in range(min(self.workers, len(todo)))]
            futures: dict[Future[T], int] = {}
            try:
                for i in batch:
                    fn, args = calls[i]
                    futures[pool.submit(fn, *args)] = i
            except BrokenProcessPool:
                self._kill_pool()
                todo.extendleft(reversed([i for i in batch if i not in futures.values()]))
            done, not_done = wait(futures, timeout=self.timeout_s)
            broken = False
            for fut in done:
                try:
                    results[futures[fut]] = (fut.result(),)
                except BrokenProcessPool:
                    broken = True
            if not_done or broken:
                self._kill_pool()
        return results

    def grade_many(self, items: Sequence[tuple[str, str | None]]) -> list[Grade]:
        """Grade ``(gold, extracted answer)`` pairs; an answer past the deadline gets ``timeout``."""
        with self._lock:
            out: list[Grade | None] = [None] * len(items)
            pending: list[int] = []
            for i, (gold, answer) in enumerate(items):
                if answer is None or not answer.strip() or normalise_answer(gold) == normalise_answer(answer):
                    out[i] = grade_answer(gold, answer)  # no math-verify needed
                else:
                    pending.append(i)
            done = self._run_batches([(grade_answer, items[i]) for i in pending])
            for i, grade in zip(pending, done, strict=True):
                out[i] = (
                    grade[0]
                    if grade is not None
                    else Grade(
                        correct=False,
                        reason="timeout",
                        answer=items[i][1],
                        detail=f"grading took longer than {self.timeout_s:g}s",
                    )
                )
            return [g for g in out if g is not None]

    def grade(self, gold: str, answer: str | None) -> Grade:
        return self.grade_many([(gold, answer)])[0]

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a picklable function in the pool under the deadline; raises :class:`GraderTimeout`."""
        with self._lock:
            [result] = self._run_batches([(fn, args)])
        if result is None:
            raise GraderTimeout(f"{getattr(fn, '__name__', fn)} took longer than {self.timeout_s:g}s")
        return result[0]


@contextlib.contextmanager
def open_grader(workers: int = 2, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[Grader]:
    grader = Grader(workers, timeout_s)
    try:
        yield grader
    finally:
        grader.close()
