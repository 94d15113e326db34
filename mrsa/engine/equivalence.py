"""The one rule for "same answer", with ``math-verify``, and where it runs: under a wall-clock limit.

Two callers ask the same question. Majority voting asks it of two candidates (is this answer in the
class of that one?), grading of a gold answer and a candidate (is this answer correct?). They use
one function, :func:`compare` (gold, or the class's first answer, first: math-verify's comparison is
asymmetric), so a round's majority class and its graded-correct answers never disagree:

* answers with the same normal form (:func:`mrsa.engine.answers.normalise_answer`) are equal, without
  math-verify;
* answers longer than ``max_chars`` are never parsed symbolically: they are compared as normal forms
  only (a 4 KB sum takes math-verify most of a second; the longest gold answer of the shipped and
  extra sets has 47 characters);
* otherwise both are parsed as if boxed and verified, with:

  - thousands separators removed (``3\\,375``, ``1{,}000``: latex2sympy reads ``1\\,000`` as the
    product 1·0) and one ``\\pm`` expanded into the two-value set math-verify can read;
  - no string fallback (``fallback_mode="no_fallback"``): an answer that is not mathematics does
    not parse. math-verify's fallback would compare the raw strings, which the normal forms
    already did, so it adds nothing to a vote, and grading must tell ``parse_error`` from ``wrong``;
  - decimals equal only to 10 places (:data:`FLOAT_ROUNDING`): ``0.5`` = ``1/2``, but ``0.001736``
    is not ``1/576``, neither as the answer to a problem nor as a vote for the exact one
    (math-verify's default of 6 places would accept it).

Model answers are hostile input: ``9^{9^{9}}`` beside ``42`` makes sympy build a 370-million-digit
integer. math-verify's own timeouts use ``signal.alarm``, which only works on the main thread and
cannot interrupt a long C call, so they are disabled here (``parsing_timeout=None``,
``timeout_seconds=None``) and the limit is enforced from outside: :class:`Equivalence` runs the
comparisons in a killable process pool (:class:`mrsa.engine.pool.DeadlinePool`), never on the
caller's thread or event loop. It serves both callers: :meth:`Equivalence.cluster` for the engine's
votes and evaluation's maj@N, :meth:`Equivalence.compare_many` for grading (:mod:`evals.grading`).
Its outcome is always defined: a comparison past the limit is ``None`` (grading's ``timeout``), and
in clustering the answers that make math-verify run away each stand as their own class (counted in
:attr:`Clustering.timeouts`).

The pure functions (:func:`compare`, :func:`equivalent`, :func:`cluster`) run in whatever process
calls them, without a limit: the pool's workers, or tests.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from math_verify import LatexExtractionConfig, parse, verify

from mrsa import telemetry
from mrsa.engine.answers import normalise_answer
from mrsa.engine.pool import Call, DeadlinePool
from mrsa.engine.settings import (
    EQUIVALENCE_MAX_CHARS,
    EQUIVALENCE_TIMEOUT_S,
    EQUIVALENCE_WORKERS,
    equivalence_settings,
)

log = logging.getLogger(__name__)

_CONFIG = [LatexExtractionConfig(boxed_match_priority=0)]
# Decimal places to which a decimal must agree with an exact value (math-verify's default is 6).
FLOAT_ROUNDING = 10

# Defaults of the settings ``MRSA_EQUIVALENCE_TIMEOUT_S`` / ``_MAX_CHARS`` / ``_WORKERS``.
DEFAULT_TIMEOUT_S = EQUIVALENCE_TIMEOUT_S
MAX_SYMBOLIC_CHARS = EQUIVALENCE_MAX_CHARS
DEFAULT_WORKERS = EQUIVALENCE_WORKERS
# Probing for runaway answers starts no new batch after this many limits (two runaways).
PROBE_BUDGET = 2
# A round's clustering takes at most this many limits, plus process restarts: the first call, the
# probes (a batch may start just before the budget ends) and the second call.
ROUND_LIMITS = 2 + PROBE_BUDGET + 1
# Runaway answers an Equivalence remembers (each at most ``max_chars``): a round is clustered again
# as its candidates arrive, and a known runaway stands alone at once instead of costing its limits
# again.
RUNAWAY_MEMORY = 1024
# Verdicts of math-verify an Equivalence remembers ((rep, answer) pairs): a round is clustered again
# each time a candidate arrives, over answers it has mostly compared already, so once its pairs are
# known a clustering runs inline, without a pool call (a thread, a pickle, a process's wake-up).
VERDICT_MEMORY = 65536
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


# Thin spaces and braced commas used as thousands separators (``3\,375``, ``1{,}000``).
_DIGIT_GROUP = re.compile(r"(?<=\d)(?:\\[,;:!]|\\ |\{,\}|~)(?=\d{3}(?!\d))")


def _expand_pm(answer: str) -> str:
    """``\\frac{-1\\pm\\sqrt{17}}{2}`` → the two-value list math-verify reads as a set (it cannot
    parse a ``\\pm`` inside an expression). Only for one ``\\pm`` in an answer without commas."""
    if answer.count("\\pm") != 1 or "\\mp" in answer or "," in answer:
        return answer
    plus, minus = answer.replace("\\pm", "+"), answer.replace("\\pm", "-")
    return f"{plus}, {minus}"


@lru_cache(maxsize=4096)
def _parse(answer: str) -> tuple[tuple[Any, ...], str | None]:
    """math-verify's parse of an answer as if boxed (so the whole string is taken), and why it
    failed when it raised (math-verify raises many kinds on malformed LaTeX)."""
    answer = _expand_pm(_DIGIT_GROUP.sub("", answer))
    try:
        parsed = parse(
            f"\\boxed{{{answer}}}",
            extraction_config=_CONFIG,
            fallback_mode="no_fallback",
            parsing_timeout=None,
        )
    except Exception as exc:
        return (), str(exc)[:200] or type(exc).__name__
    return tuple(parsed), None


@dataclass(frozen=True)
class Comparison:
    """The verdict of :func:`compare`: ``equal``, and when not, whether it is because math-verify
    could not read one side (``unparsed`` says which and why) or because one side is longer than
    the symbolic cap (``oversized``: compared as normal forms only)."""

    equal: bool
    unparsed: str | None = None
    oversized: bool = False


def symbolic(gold: str, candidate: str) -> Comparison:
    """math-verify's verdict alone (no normal-form shortcut, no size cap), gold first."""
    parsed_gold, error = _parse(gold)
    if not parsed_gold:
        return Comparison(False, unparsed=f"gold: {error}" if error else "gold did not parse")
    parsed, error = _parse(candidate)
    if not parsed:
        return Comparison(False, unparsed=error or "answer did not parse")
    try:
        ok = verify(list(parsed_gold), list(parsed), float_rounding=FLOAT_ROUNDING, timeout_seconds=None)
    except Exception as exc:
        return Comparison(False, unparsed=str(exc)[:200] or type(exc).__name__)
    return Comparison(bool(ok))


def _without_math_verify(gold: str, candidate: str, max_chars: int) -> Comparison | None:
    """The verdict when the normal forms decide it (the same, or one side over the size cap)."""
    if normalise_answer(gold) == normalise_answer(candidate):
        return Comparison(True)
    if len(gold) > max_chars or len(candidate) > max_chars:
        return Comparison(False, oversized=True)
    return None


def compare(gold: str, candidate: str, max_chars: int = MAX_SYMBOLIC_CHARS) -> Comparison:
    """Whether ``candidate`` is the same answer as ``gold`` (the module's rule), in this process and
    without a time limit: callers run it under one (:class:`Equivalence`)."""
    quick = _without_math_verify(gold, candidate, max_chars)
    return quick if quick is not None else symbolic(gold, candidate)


def equivalent(gold: str, candidate: str, max_chars: int = MAX_SYMBOLIC_CHARS) -> bool:
    """:func:`compare`'s verdict as a bool."""
    return compare(gold, candidate, max_chars).equal


def normal_form_classes(answers: Sequence[str]) -> list[list[int]]:
    """Indices of ``answers`` grouped by identical normal form, in first-seen order."""
    by_norm: dict[str, list[int]] = {}
    for i, answer in enumerate(answers):
        by_norm.setdefault(normalise_answer(answer), []).append(i)
    return list(by_norm.values())


def cluster(answers: Sequence[str], max_chars: int = MAX_SYMBOLIC_CHARS) -> list[list[int]]:
    """Group indices of ``answers`` into classes of equivalent answers (first-seen order; each
    class's first answer is the gold of the comparisons), in this process and without a time
    limit: callers run it under one (:class:`Equivalence`)."""
    return cluster_by(answers, lambda rep, answer: equivalent(rep, answer, max_chars))


def cluster_by(answers: Sequence[str], same: Callable[[str, str], bool]) -> list[list[int]]:
    """:func:`cluster` with ``same(rep, answer)`` as the comparison of answers whose normal forms
    differ (:func:`cluster` passes :func:`equivalent`; :class:`Equivalence` also its remembered
    verdicts of it)."""
    reps: list[str] = []
    groups: list[list[int]] = []
    by_norm: dict[str, int] = {}
    for i, answer in enumerate(answers):
        key = normalise_answer(answer)
        if key in by_norm:
            groups[by_norm[key]].append(i)
            continue
        for g, rep in enumerate(reps):
            if same(rep, answer):
                groups[g].append(i)
                by_norm[key] = g
                break
        else:
            by_norm[key] = len(reps)
            reps.append(answer)
            groups.append([i])
    return groups


Verdict = tuple[str, str, bool]


# A plain decimal number (AIME's answers are integers): math-verify compares two of them quickly and
# safely, so :func:`cluster_noting` also compares them the other way round.
_PLAIN_NUMBER = re.compile(r"-?\d{1,40}(?:\.\d{1,40})?")


def cluster_noting(
    answers: Sequence[str], max_chars: int = MAX_SYMBOLIC_CHARS
) -> tuple[list[list[int]], list[Verdict]]:
    """:func:`cluster`, and every ``(rep, answer, equivalent)`` verdict it computed on the way: the
    pool's call, so its caller can remember them and cluster the same answers again without it.
    For two plain numbers it also gives the verdict the other way round (math-verify's comparison
    is asymmetric): a round's classes change order as lower-indexed candidates arrive, and the next
    clustering then asks for it."""
    verdicts: list[Verdict] = []

    def same(rep: str, answer: str) -> bool:
        verdict = equivalent(rep, answer, max_chars)
        verdicts.append((rep, answer, verdict))
        return verdict

    groups = cluster_by(answers, same)
    for rep, answer, _ in list(verdicts):
        if _PLAIN_NUMBER.fullmatch(rep) and _PLAIN_NUMBER.fullmatch(answer):
            verdicts.append((answer, rep, equivalent(answer, rep, max_chars)))
    return groups, verdicts


class _Unknown(Exception):
    """A comparison :class:`Equivalence` has no remembered verdict for."""


def probe(answer: str) -> bool:
    """Parse ``answer`` and compare it with a number, as clustering would (that comparison is
    where sympy evaluates it): an answer for which this overruns the limit is a runaway."""
    return symbolic("0", answer).equal


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
    """Runs :func:`compare` in a :class:`DeadlinePool`, each call under ``timeout_s``: clusters a
    round's answers (:meth:`cluster`) or compares (gold, candidate) pairs (:meth:`compare_many`).

    A round with no runaway answer costs one pool call (none when its answers have at most one
    normal form). When that call overruns, each distinct answer is probed alone (most-voted first,
    ``workers`` at a time, no new batch after ``PROBE_BUDGET`` × ``timeout_s``: the unprobed stand
    alone), the runaways stand alone, and the rest are clustered again under the limit (all stand
    alone if that overruns too). So one round takes at most ``ROUND_LIMITS`` (5) × ``timeout_s``
    plus process restarts, however hostile its answers. The runaways found by probing are
    remembered (the last ``RUNAWAY_MEMORY``): a later clustering holding one leaves it alone at
    once, as its probe would, so a round clustered again as its candidates arrive pays for each
    runaway once. So are the verdicts the pool computed (the last ``VERDICT_MEMORY`` pairs): a
    clustering whose comparisons are all known runs inline, with the same classes the pool's
    :func:`cluster` would give (it is :func:`cluster_by` over the same verdicts).
    """

    def __init__(
        self,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_chars: int = MAX_SYMBOLIC_CHARS,
        workers: int = DEFAULT_WORKERS,
        *,
        name: str = "equivalence",
    ) -> None:
        self.timeout_s = timeout_s
        self.max_chars = max_chars
        self.pool = DeadlinePool(workers, timeout_s, initializer=_warm_up, preload=MATH_PRELOAD, name=name)
        self._runaways: OrderedDict[str, None] = OrderedDict()
        self._runaways_lock = threading.Lock()
        self._verdicts: OrderedDict[tuple[str, str], bool] = OrderedDict()
        self._verdicts_lock = threading.Lock()

    def forget_runaways(self) -> None:
        """Forget the runaways found so far (their next clustering probes them again)."""
        with self._runaways_lock:
            self._runaways.clear()

    def forget_verdicts(self) -> None:
        """Forget the remembered verdicts (the next clustering of any answers calls the pool)."""
        with self._verdicts_lock:
            self._verdicts.clear()

    def _known_runaway(self, answer: str) -> bool:
        with self._runaways_lock:
            if answer in self._runaways:
                self._runaways.move_to_end(answer)
                return True
            return False

    def _remember_runaway(self, answer: str) -> None:
        with self._runaways_lock:
            self._runaways[answer] = None
            self._runaways.move_to_end(answer)
            while len(self._runaways) > RUNAWAY_MEMORY:
                self._runaways.popitem(last=False)

    def _remember_verdicts(self, verdicts: Sequence[Verdict]) -> None:
        with self._verdicts_lock:
            for rep, answer, same in verdicts:
                self._verdicts[rep, answer] = same
                self._verdicts.move_to_end((rep, answer))
            while len(self._verdicts) > VERDICT_MEMORY:
                self._verdicts.popitem(last=False)

    def _known_verdict(self, rep: str, answer: str) -> bool:
        with self._verdicts_lock:
            same = self._verdicts.get((rep, answer))
            if same is None:
                raise _Unknown
            self._verdicts.move_to_end((rep, answer))
            return same

    def _cluster_known(self, answers: list[str]) -> list[list[int]] | None:
        """:func:`cluster` of ``answers`` from remembered verdicts; ``None`` when one is missing."""
        try:
            return cluster_by(answers, self._known_verdict)
        except _Unknown:
            return None

    def _cluster_in_pool(self, answers: list[str]) -> list[list[int]] | None:
        """:func:`cluster` of ``answers``, inline when every verdict is known, else in the pool
        under the limit (``None``: it overran, or the pool failed)."""
        known = self._cluster_known(answers)
        if known is not None:
            return known
        [done] = self._run([(cluster_noting, (answers, self.max_chars))])
        if done is None:
            return None
        groups, verdicts = done[0]
        self._remember_verdicts(verdicts)
        return list(groups)

    def close(self) -> None:
        self.pool.close()

    def compare_many(self, pairs: Sequence[tuple[str, str]]) -> list[Comparison | None]:
        """:func:`compare` on each ``(gold, candidate)`` pair, each under the limit (blocking):
        ``None`` for a pair past it. Pairs that need no math-verify (the same normal form, or
        over the size cap) are decided here; a pool that cannot run raises."""
        out = [_without_math_verify(gold, candidate, self.max_chars) for gold, candidate in pairs]
        pending = [i for i, quick in enumerate(out) if quick is None]
        calls: list[Call] = [(compare, (*pairs[i], self.max_chars)) for i in pending]
        for i, done in zip(pending, self.pool.run_many(calls), strict=True):
            out[i] = None if done is None else done[0]
        return out

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
        """:meth:`cluster` off the event loop; inline when no symbolic comparison is needed or all
        the comparisons it needs were made before (known verdicts and runaways)."""
        members, eligible, oversized = self._classes(answers)
        root = list(range(len(members)))
        if len(eligible) < 2:
            return self._finish(members, root, 0, oversized)
        reps = [answers[m[0]] for m in members]
        with self._runaways_lock:
            runaways = sum(1 for j in eligible if reps[j] in self._runaways)
        if runaways == 0:
            groups = self._cluster_known([reps[j] for j in eligible])
            if groups is not None:
                for group in groups:
                    for pos in group:
                        root[eligible[pos]] = eligible[group[0]]
                return self._finish(members, root, 0, oversized)
        return await asyncio.to_thread(self.cluster, answers)

    def _classes(self, answers: Sequence[str]) -> tuple[list[list[int]], list[int], int]:
        """Normal-form classes (first-seen order), the ones small enough to parse, how many not."""
        members = normal_form_classes(answers)
        eligible = [j for j, m in enumerate(members) if len(answers[m[0]]) <= self.max_chars]
        return members, eligible, len(members) - len(eligible)

    def _merge(self, reps: list[str], votes: list[int], eligible: list[int], root: list[int]) -> int:
        """Merge classes of equivalent representatives into ``root``; the number that timed out."""

        def apply(groups: list[list[int]], which: list[int]) -> None:
            for group in groups:
                for pos in group:
                    root[which[pos]] = which[group[0]]

        known = [j for j in eligible if self._known_runaway(reps[j])]
        if known:
            eligible = [j for j in eligible if j not in known]
            if len(eligible) < 2:
                return len(known)
        groups = self._cluster_in_pool([reps[j] for j in eligible])
        if groups is not None:
            apply(groups, eligible)
            return len(known)
        # Something ran away: find the answers that do, probing each alone.
        started, restarts = time.monotonic(), self.pool.startup_s
        order = sorted(eligible, key=lambda j: (-votes[j], j))
        survivors: list[int] = []
        timeouts = len(known)
        for at in range(0, len(order), self.pool.workers):
            batch = order[at : at + self.pool.workers]
            spent = time.monotonic() - started - (self.pool.startup_s - restarts)  # restarts are free
            if spent >= PROBE_BUDGET * self.timeout_s:
                timeouts += len(order) - at  # out of time: the rest stand alone unprobed
                break
            results, ran = self._run_probes([reps[j] for j in batch])
            for j, result in zip(batch, results, strict=True):
                if result is None:
                    timeouts += 1
                    if ran:  # it overran its limit (not a pool that could not run): a runaway
                        self._remember_runaway(reps[j])
                else:
                    survivors.append(j)
        survivors.sort()
        if len(survivors) >= 2:
            again = self._cluster_in_pool([reps[j] for j in survivors])
            if again is None:
                timeouts += len(survivors)
            else:
                apply(again, survivors)
        return timeouts

    def _run_probes(self, answers: list[str]) -> tuple[list[tuple[Any] | None], bool]:
        """:func:`probe` of each answer, and whether the pool ran them (``False``: it failed)."""
        try:
            return self.pool.run_many([(probe, (answer,)) for answer in answers]), True
        except Exception:
            log.exception("answer clustering failed; the answers involved are compared as strings")
            return [None] * len(answers), False

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
            telemetry.EQUIVALENCE_FALLBACKS.labels("timeout").inc(timeouts)
            log.warning(
                "math-verify overran its %gs limit on %d distinct answer(s): each is its own class",
                self.timeout_s,
                timeouts,
            )
        if oversized:
            telemetry.EQUIVALENCE_FALLBACKS.labels("oversized").inc(oversized)
        return Clustering(groups=groups, timeouts=timeouts, oversized=oversized)


_SHARED: Equivalence | None = None
_SHARED_LOCK = threading.Lock()


def shared_equivalence() -> Equivalence:
    """The process's :class:`Equivalence`, configured from the settings (its pool starts on the
    first round that needs math-verify)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            s = equivalence_settings()
            _SHARED = Equivalence(s.equivalence_timeout_s, s.equivalence_max_chars, s.equivalence_workers)
        return _SHARED
