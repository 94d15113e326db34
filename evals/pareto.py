"""Accuracy against cost across configurations: every (configuration, round) of a dataset is an
operating point (stopping after round t is the configuration with T = t), and the Pareto front is
the points no other point beats on both accuracy and cost. This is the view used to choose N, K
and T for a budget."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pydantic import BaseModel

from evals.accuracy import RoundMetrics
from evals.timing import GroupTiming


class ParetoPoint(BaseModel):
    config: str
    dataset: str
    round: int
    accuracy: float
    tokens: float
    seconds: float | None = None
    cost: float | None = None


def front(points: Sequence[ParetoPoint], cost: Callable[[ParetoPoint], float | None]) -> list[ParetoPoint]:
    """The points with a cost that no other point dominates (costs no more and is at least as
    accurate, one of them strictly), cheapest first; points without a cost are left out."""
    costed = sorted((p for p in points if cost(p) is not None), key=lambda p: (cost(p), -p.accuracy))
    out: list[ParetoPoint] = []
    for p in costed:  # among equal costs the most accurate comes first; the rest are dominated
        if not out or p.accuracy > out[-1].accuracy:
            out.append(p)
    return out


def points(
    groups: Sequence[tuple[str, str, list[RoundMetrics]]], timing: Sequence[GroupTiming]
) -> list[ParetoPoint]:
    """One point per (configuration, dataset, round): pass@1, decode tokens per question, and
    machine seconds and cost per question where the sweep has them."""
    times = {(t.config, t.dataset): {r.round: r for r in t.rounds} for t in timing}
    out = []
    for config, dataset, rounds in groups:
        timed = times.get((config, dataset), {})
        for m in rounds:
            t = timed.get(m.round)
            out.append(
                ParetoPoint(
                    config=config,
                    dataset=dataset,
                    round=m.round,
                    accuracy=m.pass1.value,
                    tokens=m.decode_tokens,
                    seconds=t.machine_s if t is not None else None,
                    cost=t.cost_per_question if t is not None else None,
                )
            )
    return out
