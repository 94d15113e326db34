"""Answer equivalence with ``math-verify``, used to cluster votes, under a wall-clock limit.

Model answers are hostile input: ``9^{9^{9}}`` beside ``42`` makes sympy build a 370-million-digit
integer, and a 4 KB sum takes math-verify most of a second to parse. math-verify's own timeouts use
``signal.alarm``, which only works on the main thread and cannot interrupt a long C call, so they
are disabled here (``parsing_timeout=None``, ``timeout_seconds=None``) and the limit is enforced
from outside: :class:`Equivalence` runs the symbolic comparisons in a killable process pool
(:class:`mrsa.engine.pool.DeadlinePool`, as grading does), never on the caller's thread or event
loop. Its outcome is always defined (:meth:`Equivalence.cluster`):

* answers with the same normal form (:func:`mrsa.engine.answers.normalise_answer`) are one class,
  without math-verify;
* answers longer than ``max_chars`` are never parsed symbolically: they are compared as normal forms
  only (counted in :attr:`Clustering.oversized`);
* when a comparison overruns the limit, the answers that make math-verify run away are found by
  probing each one alone, and each stands as its own class (counted in :attr:`Clustering.timeouts`).

The pure functions (:func:`equivalent`, :func:`cluster`) run in whatever process calls them: the
pool's workers, or a grading worker that is itself under a deadline (:mod:`evals.voting`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from math_verify import LatexExtractionConfig, parse, verify

from mrsa import metrics
from mrsa.engine.answers import normalise_answer
from mrsa.engine.pool import Call, DeadlinePool
from mrsa.settings import EQUIVALENCE_MAX_CHARS, EQUIVALENCE_TIMEOUT_S, EQUIVALENCE_WORKERS, get_settings

log = logging.getLogger(__name__)

_CONFIG = [LatexExtractionConfig(boxed_match_priority=0)]

# Defaults of the settings ``MRSA_EQUIVALENCE_TIMEOUT_S`` / ``_MAX_CHARS`` / ``_WORKERS``.
DEFAULT_TIMEOUT_S = EQUIVALENCE_TIMEOUT_S
MAX_SYMBOLIC_CHARS = EQUIVALENCE_MAX_CHARS
DEFAULT_WORKERS = EQUIVALENCE_WORKERS
# Probing for runaway answers starts no new batch after this many limits (two runaways).
PROBE_BUDGET = 2
# A round's clustering takes at most this many limits, plus process restarts: the first call, the
# probes (a batch may start just before the budget ends) and the second call.
ROUND_LIMITS = 2 + PROBE_BUDGET + 1
# Modules a math pool's fork server imports once, so a recycled pool starts warm.
MATH_PRELOAD = ("mrsa.engine.equivalence",)


class _DropDisabledTimeoutWarning(logging.Filter):
    """math-verify warns once per process that its timeouts are off; they are, on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


_QUIET = _DropDisabledTimeoutWarning()


def quiet_math_verify() -> None:
    """Silence math-verify's "Timeout is disabled" warning (idempotent); its other logs stay."""
    for name in ("math_verify.grader", "math_verify.parser", "math_verify.utils"):
        logger = logging.getLogger(name)
        if _QUIET not in logger.filters:
            logger.addFilter(_QUIET)


quiet_math_verify()


@lru_cache(maxsize=4096)
def parse_answer(answer: str) -> tuple[Any, ...]:
    """math-verify's parse of an answer (wrapped in ``\\boxed{}`` so the whole string is taken)."""
    try:
        return tuple(parse(f"\\boxed{{{answer}}}", extraction_config=_CONFIG, parsing_timeout=None))
    except Exception:  # math-verify raises many kinds on malformed LaTeX; treat as unparseable
        return ()


def equivalent(gold: str, prediction: str, max_chars: int = MAX_SYMBOLIC_CHARS) -> bool:
    """True when ``prediction`` is mathematically equal to ``gold`` (gold first, as math-verify
    wants). Answers longer than ``max_chars`` are compared by normal form only."""
    if normalise_answer(gold) == normalise_answer(prediction):
        return True
    if len(gold) > max_chars or len(prediction) > max_chars:
        return False
    g, p = parse_answer(gold), parse_answer(prediction)
    if not g or not p:
        return False
    try:
        return bool(verify(list(g), list(p), timeout_seconds=None))
    except Exception:
        return False


def cluster(answers: Sequence[str], max_chars: int = MAX_SYMBOLIC_CHARS) -> list[list[int]]:
    """Group indices of ``answers`` into classes of equivalent answers (first-seen order), in this
    process and without a time limit: callers run it under one (:class:`Equivalence`)."""
    reps: list[str] = []
    groups: list[list[int]] = []
    by_norm: dict[str, int] = {}
    for i, answer in enumerate(answers):
        key = normalise_answer(answer)
        if key in by_norm:
            groups[by_norm[key]].append(i)
            continue
        for g, rep in enumerate(reps):
            if equivalent(rep, answer, max_chars):
                groups[g].append(i)
                by_norm[key] = g
                break
        else:
            by_norm[key] = len(reps)
            reps.append(answer)
            groups.append([i])
    return groups


_ZERO = "0"


def probe(answer: str) -> bool:
    """Parse ``answer`` and compare it with a number, as clustering would (that comparison is
    where sympy evaluates it): an answer for which this overruns the limit is a runaway."""
    try:
        return bool(verify(list(parse_answer(_ZERO)), list(parse_answer(answer)), timeout_seconds=None))
    except Exception:
        return False


def _warm_up() -> None:
    quiet_math_verify()
    cluster(["1", "2"])  # import and warm up sympy/antlr before the first deadline starts


@dataclass(frozen=True)
class Clustering:
    """Classes of equivalent answers (indices, first-seen order), and what was not compared
    symbolically: ``timeouts`` distinct answers on which math-verify overran the limit (or that
    were left unprobed when the round's time ran out), ``oversized`` distinct answers longer than
    the symbolic cap. Each of those is a class of its own, with the answers identical to it."""

    groups: list[list[int]]
    timeouts: int = 0
    oversized: int = 0


class Equivalence:
    """Clusters answers with math-verify in a :class:`DeadlinePool`, each call under ``timeout_s``.

    A round with no runaway answer costs one pool call (none when its answers have at most one
    normal form). When that call overruns, each distinct answer is probed alone (most-voted first,
    ``workers`` at a time, no new batch after ``PROBE_BUDGET`` × ``timeout_s``: the unprobed stand
    alone), the runaways stand alone, and the rest are clustered again under the limit (all stand
    alone if that overruns too). So one round takes at most ``ROUND_LIMITS`` (5) × ``timeout_s``
    plus process restarts, however hostile its answers.
    """

    def __init__(
        self,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_chars: int = MAX_SYMBOLIC_CHARS,
        workers: int = DEFAULT_WORKERS,
    ) -> None:
        self.timeout_s = timeout_s
        self.max_chars = max_chars
        self.pool = DeadlinePool(
            workers, timeout_s, initializer=_warm_up, preload=MATH_PRELOAD, name="equivalence"
        )

    def close(self) -> None:
        self.pool.close()

    def cluster(self, answers: Sequence[str]) -> Clustering:
        """Classes of ``answers`` (blocking: call it from a thread, or use :meth:`acluster`)."""
        members, eligible, oversized = self._classes(answers)
        root = list(range(len(members)))
        timeouts = 0
        if len(eligible) >= 2:
            timeouts = self._merge(
                [answers[m[0]] for m in members], [len(m) for m in members], eligible, root
            )
        return self._finish(members, root, timeouts, oversized)

    async def acluster(self, answers: Sequence[str]) -> Clustering:
        """:meth:`cluster` off the event loop (inline when no symbolic comparison is needed)."""
        members, eligible, oversized = self._classes(answers)
        if len(eligible) < 2:
            return self._finish(members, list(range(len(members))), 0, oversized)
        return await asyncio.to_thread(self.cluster, answers)

    def _classes(self, answers: Sequence[str]) -> tuple[list[list[int]], list[int], int]:
        """Normal-form classes (first-seen order), the ones small enough to parse, how many not."""
        by_norm: dict[str, list[int]] = {}
        for i, answer in enumerate(answers):
            by_norm.setdefault(normalise_answer(answer), []).append(i)
        members = list(by_norm.values())
        eligible = [j for j, m in enumerate(members) if len(answers[m[0]]) <= self.max_chars]
        return members, eligible, len(members) - len(eligible)

    def _merge(self, reps: list[str], votes: list[int], eligible: list[int], root: list[int]) -> int:
        """Merge classes of equivalent representatives into ``root``; the number that timed out."""

        def apply(groups: list[list[int]], which: list[int]) -> None:
            for group in groups:
                for pos in group:
                    root[which[pos]] = which[group[0]]

        [done] = self._run([(cluster, ([reps[j] for j in eligible], self.max_chars))])
        if done is not None:
            apply(done[0], eligible)
            return 0
        # Something ran away: find the answers that do, probing each alone.
        started, restarts = time.monotonic(), self.pool.startup_s
        order = sorted(eligible, key=lambda j: (-votes[j], j))
        survivors: list[int] = []
        timeouts = 0
        for at in range(0, len(order), self.pool.workers):
            batch = order[at : at + self.pool.workers]
            spent = time.monotonic() - started - (self.pool.startup_s - restarts)  # restarts are free
            if spent >= PROBE_BUDGET * self.timeout_s:
                timeouts += len(order) - at  # out of time: the rest stand alone unprobed
                break
            for j, result in zip(batch, self._run([(probe, (reps[j],)) for j in batch]), strict=True):
                if result is None:
                    timeouts += 1
                else:
                    survivors.append(j)
        survivors.sort()
        if len(survivors) >= 2:
            [again] = self._run([(cluster, ([reps[j] for j in survivors], self.max_chars))])
            if again is None:
                timeouts += len(survivors)
            else:
                apply(again[0], survivors)
        return timeouts

    def _run(self, calls: list[Call]) -> list[tuple[Any] | None]:
        """The pool's results; a call that fails for any other reason than its deadline (the
        processes cannot start, a result cannot be sent back) also leaves its answers alone."""
        try:
            return self.pool.run_many(calls)
        except Exception:
            log.exception("answer clustering failed; the answers involved are compared as strings")
            return [None] * len(calls)

    def _finish(self, members: list[list[int]], root: list[int], timeouts: int, oversized: int) -> Clustering:
        merged: dict[int, list[int]] = {}
        for j, m in enumerate(members):
            merged.setdefault(root[j], []).extend(m)
        groups = sorted((sorted(g) for g in merged.values()), key=lambda g: g[0])
        if timeouts:
            metrics.EQUIVALENCE_FALLBACKS.labels("timeout").inc(timeouts)
            log.warning(
                "math-verify overran its %gs limit on %d distinct answer(s): each is its own class",
                self.timeout_s,
                timeouts,
            )
        if oversized:
            metrics.EQUIVALENCE_FALLBACKS.labels("oversized").inc(oversized)
        return Clustering(groups=groups, timeouts=timeouts, oversized=oversized)


_SHARED: Equivalence | None = None
_SHARED_LOCK = threading.Lock()


def shared_equivalence() -> Equivalence:
    """The process's :class:`Equivalence`, configured from the settings (its pool starts on the
    first round that needs math-verify)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            s = get_settings()
            _SHARED = Equivalence(s.equivalence_timeout_s, s.equivalence_max_chars, s.equivalence_workers)
        return _SHARED
