"""Majority voting over a round's candidates, exactly as ``mrsa solve`` selects (so maj@N is the
accuracy a user of ``--selection majority`` would see), but on the strictly extracted ``\\boxed{}``
answers that grading uses.

Evaluation clusters the answers as the engine does, in the grading pool under its limit
(:meth:`evals.grading.Grader.cluster`, :class:`mrsa.engine.equivalence.Equivalence`);
:func:`majority_choice_plain` is the vote on string normal forms, for scoring without math-verify.
"""

from __future__ import annotations

from collections.abc import Sequence

from mrsa.domain import Candidate
from mrsa.engine.equivalence import cluster, normal_form_classes
from mrsa.engine.selection import Classes, majority, tally


def majority_choice(
    answers: Sequence[str | None], finished: Sequence[bool], classes: Classes = cluster
) -> int | None:
    """Index of the candidate whose answer majority selection returns (the first member of the
    winning class), or ``None`` when nobody answered.

    The rule is the engine's: classes of equivalent answers (grouped by ``classes``; the default
    clusters in this process, without a time limit); when any finished candidate answered, only
    finished votes count; ties go to the class seen first."""
    candidates = [
        Candidate(round=0, index=i, answer=a, finish_reason="stop" if f else "length")
        for i, (a, f) in enumerate(zip(answers, finished, strict=True))
    ]
    chosen = majority(tally(candidates, classes))
    if chosen is None:
        return None
    return next(i for i, a in enumerate(answers) if a == chosen)


def majority_choice_plain(answers: Sequence[str | None], finished: Sequence[bool]) -> int | None:
    """:func:`majority_choice` with classes of identical normal forms instead of math-verify."""
    return majority_choice(answers, finished, normal_form_classes)
