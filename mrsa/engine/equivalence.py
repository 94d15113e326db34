"""Answer equivalence with ``math-verify``, used to cluster votes.

math-verify's own timeouts use ``signal.alarm``, which only works on the main thread; they are
disabled here (``parsing_timeout=None``, ``timeout_seconds=None``). Callers that grade untrusted
output at scale run these functions in a process pool with a wall-clock limit
(:mod:`evals.grading`); clustering a population of short final answers runs in-process.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from math_verify import LatexExtractionConfig, parse, verify

from mrsa.engine.answers import normalise_answer

_CONFIG = [LatexExtractionConfig(boxed_match_priority=0)]


@lru_cache(maxsize=4096)
def parse_answer(answer: str) -> tuple[Any, ...]:
    """math-verify's parse of an answer (wrapped in ``\\boxed{}`` so the whole string is taken)."""
    try:
        return tuple(parse(f"\\boxed{{{answer}}}", extraction_config=_CONFIG, parsing_timeout=None))
    except Exception:  # math-verify raises many kinds on malformed LaTeX; treat as unparseable
        return ()


def equivalent(gold: str, prediction: str) -> bool:
    """True when ``prediction`` is mathematically equal to ``gold`` (gold first, as math-verify wants)."""
    if normalise_answer(gold) == normalise_answer(prediction):
        return True
    g, p = parse_answer(gold), parse_answer(prediction)
    if not g or not p:
        return False
    try:
        return bool(verify(list(g), list(p), timeout_seconds=None))
    except Exception:
        return False


def cluster(answers: list[str]) -> list[list[int]]:
    """Group indices of ``answers`` into classes of equivalent answers (first-seen order)."""
    reps: list[str] = []
    groups: list[list[int]] = []
    by_norm: dict[str, int] = {}
    for i, answer in enumerate(answers):
        key = normalise_answer(answer)
        if key in by_norm:
            groups[by_norm[key]].append(i)
            continue
        for g, rep in enumerate(reps):
            if equivalent(rep, answer):
                groups[g].append(i)
                by_norm[key] = g
                break
        else:
            by_norm[key] = len(reps)
            reps.append(answer)
            groups.append([i])
    return groups
