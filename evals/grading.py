"""Grading: is a candidate's answer the gold answer? The engine's rule for "same answer", under the
engine's wall-clock limit.

A candidate is correct when :func:`mrsa.engine.equivalence.compare` (gold first) says its answer is
the gold answer: the very rule majority voting clusters answers with, so a round's majority class
is correct exactly when its answers grade correct. Answers are graded in the engine's killable
process pool (:class:`mrsa.engine.equivalence.Equivalence`): a worker that overruns its deadline
(``9^{9^{9}}`` makes sympy build a 370-million-digit integer) is killed and the pool recycled, so
one hostile answer costs one ``timeout``, never a hung sweep.

Grading is strict: a candidate is graded on the content of its last ``\\boxed{}`` (the answer part
first, then the whole trace). The engine's fallback for unboxed answers ("the answer is 42") serves
a user's answer, not a score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel

from mrsa.engine.answers import last_boxed
from mrsa.engine.equivalence import Comparison, Equivalence, compare
from mrsa.engine.settings import equivalence_settings

Reason = Literal["correct", "wrong", "no_boxed", "parse_error", "timeout"]
REASONS: tuple[Reason, ...] = ("correct", "wrong", "no_boxed", "parse_error", "timeout")

DEFAULT_TIMEOUT_S = 10.0


class Grade(BaseModel):
    """The verdict on one answer, with why."""

    correct: bool
    reason: Reason
    answer: str | None = None
    detail: str | None = None


def boxed_answer(content: str, trace: str = "") -> str | None:
    """The strictly extracted answer of a candidate: its last ``\\boxed{}`` (answer part first)."""
    return last_boxed(content) or last_boxed(trace)


def _grade(answer: str, verdict: Comparison, max_chars: int) -> Grade:
    if verdict.equal:
        return Grade(correct=True, reason="correct", answer=answer)
    if verdict.unparsed is not None:
        return Grade(correct=False, reason="parse_error", answer=answer, detail=verdict.unparsed)
    detail = f"longer than {max_chars} characters: compared as text only" if verdict.oversized else None
    return Grade(correct=False, reason="wrong", answer=answer, detail=detail)


def grade_answer(gold: str, answer: str | None) -> Grade:
    """Grade an extracted answer against ``gold`` in this process, without a time limit (the
    :class:`Grader` adds one)."""
    if answer is None or not answer.strip():
        return Grade(correct=False, reason="no_boxed", answer=answer)
    max_chars = equivalence_settings().equivalence_max_chars
    return _grade(answer, compare(gold, answer, max_chars), max_chars)


class Grader:
    """Grades answers in a pool of math-verify processes, ``timeout_s`` per answer (thread-safe,
    batches of ``workers`` so each deadline measures its own answer; see
    :class:`mrsa.engine.pool.DeadlinePool`). Answers longer than the symbolic size cap
    (``MRSA_EQUIVALENCE_MAX_CHARS``, as in the engine) are compared as normal forms only."""

    def __init__(self, workers: int = 2, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.equivalence = Equivalence(
            timeout_s, equivalence_settings().equivalence_max_chars, workers, name="grading"
        )

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.equivalence.close()

    @property
    def timeout_s(self) -> float:
        return self.equivalence.timeout_s

    @property
    def recycled(self) -> int:
        """How many times a runaway answer had its processes killed."""
        return self.equivalence.pool.recycled

    def grade_many(self, items: Sequence[tuple[str, str | None]]) -> list[Grade]:
        """Grade ``(gold, extracted answer)`` pairs; an answer past the deadline gets ``timeout``."""
        pending = [(i, gold, answer) for i, (gold, answer) in enumerate(items) if answer and answer.strip()]
        verdicts = self.equivalence.compare_many([(gold, answer) for _, gold, answer in pending])
        out = [Grade(correct=False, reason="no_boxed", answer=answer) for _, answer in items]
        for (i, _, answer), verdict in zip(pending, verdicts, strict=True):
            out[i] = (
                _grade(answer, verdict, self.equivalence.max_chars)
                if verdict is not None
                else Grade(
                    correct=False,
                    reason="timeout",
                    answer=answer,
                    detail=f"grading took longer than {self.timeout_s:g}s",
                )
            )
        return out

    def grade(self, gold: str, answer: str | None) -> Grade:
        return self.grade_many([(gold, answer)])[0]

    def cluster(self, answers: Sequence[str]) -> list[list[int]]:
        """Classes of equivalent answers, exactly as the engine's majority vote clusters them."""
        return self.equivalence.cluster(answers).groups
