"""Symbolic grading with ``math-verify``, in a process pool with a wall-clock limit per answer.

math-verify's own timeouts use ``signal.alarm``, which only works on a process's main thread, so
they are disabled here (``parsing_timeout=None``, ``timeout_seconds=None``) and the limit is
enforced from outside instead, by :class:`mrsa.engine.pool.DeadlinePool`: answers are graded in
worker processes, and a worker that overruns its deadline (``9^{9^{9}}`` makes sympy build a
370-million-digit integer) is killed and the pool is recycled, so one hostile answer costs one
timeout, never a hung sweep.

Grading is strict: a candidate is graded on the content of its last ``\\boxed{}`` (the answer part
first, then the whole trace). The engine's fallback for unboxed answers ("the answer is 42") serves
a user's answer, not a score.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from typing import Any, Literal

from math_verify import LatexExtractionConfig, parse, verify
from pydantic import BaseModel

from mrsa.engine.answers import last_boxed, normalise_answer
from mrsa.engine.equivalence import MATH_PRELOAD, quiet_math_verify
from mrsa.engine.pool import WORKER_MEMORY_BYTES, DeadlinePool, PoolTimeout

Reason = Literal["correct", "wrong", "no_boxed", "parse_error", "timeout"]
REASONS: tuple[Reason, ...] = ("correct", "wrong", "no_boxed", "parse_error", "timeout")

# A decimal prediction counts only when it agrees with the gold to this many decimal places:
# 0.5 = 1/2, but 0.001736 is not 1/576 (math-verify's default of 6 places would accept it).
FLOAT_ROUNDING = 10
DEFAULT_TIMEOUT_S = 10.0

_CONFIG = [LatexExtractionConfig(boxed_match_priority=0)]


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


def _warm_up() -> None:
    quiet_math_verify()
    _parse("1")  # import and warm up sympy/antlr before the first deadline starts


# A grading call that overran its deadline (its worker was killed).
GraderTimeout = PoolTimeout


class Grader(DeadlinePool):
    """A pool of grading processes with a per-answer wall-clock limit (see :class:`DeadlinePool`:
    thread-safe, batches of ``workers`` so each deadline measures its own answer)."""

    def __init__(self, workers: int = 2, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(
            workers,
            timeout_s,
            initializer=_warm_up,
            preload=MATH_PRELOAD,
            memory_bytes=WORKER_MEMORY_BYTES,
            name="grading",
        )

    def __enter__(self) -> Grader:
        return self

    def grade_many(self, items: Sequence[tuple[str, str | None]]) -> list[Grade]:
        """Grade ``(gold, extracted answer)`` pairs; an answer past the deadline gets ``timeout``."""
        out: list[Grade | None] = [None] * len(items)
        pending: list[int] = []
        for i, (gold, answer) in enumerate(items):
            if answer is None or not answer.strip() or normalise_answer(gold) == normalise_answer(answer):
                out[i] = grade_answer(gold, answer)  # no math-verify needed
            else:
                pending.append(i)
        done = self.run_many([(grade_answer, items[i]) for i in pending])
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


@contextlib.contextmanager
def open_grader(workers: int = 2, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[Grader]:
    grader = Grader(workers, timeout_s)
    try:
        yield grader
    finally:
        grader.close()
