"""Majority voting over a round's candidates, exactly as ``mrsa solve`` selects (so maj@N is the
accuracy a user of ``--selection majority`` would see), but on the strictly extracted ``\\boxed{}``
answers that grading uses.

The engine clusters answers in its equivalence pool under a limit
(:class:`mrsa.engine.equivalence.Equivalence`); evaluation runs :func:`majority_choice` in the
grading pool under a deadline and falls back to :func:`majority_choice_plain` (string normal forms
only) when it overruns.
"""

from __future__ import annotations

from collections.abc import Sequence

from mrsa.domain import Candidate
from mrsa.engine.answers import normalise_answer
from mrsa.engine.selection import majority, tally


def majority_choice(answers: Sequence[str | None], finished: Sequence[bool]) -> int | None:
    """Index of the candidate whose answer majority selection returns (the first member of the
    winning class), or ``None`` when nobody answered.

    The rule is the engine's: classes of equivalent answers; when any finished candidate answered,
    only finished votes count; ties go to the class seen first."""
    candidates = [
        Candidate(round=0, index=i, answer=a, finish_reason="stop" if f else "length")
        for i, (a, f) in enumerate(zip(answers, finished, strict=True))
    ]
    chosen = majority(tally(candidates))
    if chosen is None:
        return None
    return next(i for i, a in enumerate(answers) if a == chosen)


def majority_choice_plain(answers: Sequence[str | None], finished: Sequence[bool]) -> int | None:
    """:func:`majority_choice` with classes of identical normal forms instead of math-verify."""
    classes: dict[str, list[int]] = {}
    for i, answer in enumerate(answers):
        if answer is not None:
            classes.setdefault(normalise_answer(answer), []).append(i)
    if not classes:
        return None
    ordered = list(classes.values())  # first-seen order
    if any(finished[i] for members in ordered for i in members):
        best = max(ordered, key=lambda members: (sum(1 for i in members if finished[i]), len(members)))
    else:
        best = max(ordered, key=len)
    return best[0]
