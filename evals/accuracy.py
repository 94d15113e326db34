"""Per-round metrics of a sweep: pure functions over graded outcomes (no I/O, no grading).

Units: a *run* is one (problem, seed) job; its population holds N candidates per round. Scores are
averaged over a problem's seeds first, then over problems, so every problem weighs the same however
many seeds finished. Confidence intervals are percentile bootstraps over problems (problems are
the independent unit; a problem's candidates and seeds are not independent of each other), with a
fixed resampling seed so a report is reproducible.
"""

from __future__ import annotations

import functools
import math
import random
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence

from pydantic import BaseModel, Field

BOOTSTRAP_RESAMPLES = 2000
CI_LEVEL = 0.95


class IslandOutcome(BaseModel):
    """One island of one round of one run (configurations with ``islands`` > 1)."""

    correct: list[bool]
    majority_correct: bool = Field(description="The island's own majority answer is correct.")


class RoundOutcome(BaseModel):
    """One round of one run, graded."""

    correct: list[bool]
    truncated: list[bool]
    answered: list[bool] = Field(description="The candidate has a \\boxed{} answer.")
    decode_tokens: int = Field(description="Decode tokens of this round (all N candidates).")
    prompt_tokens: int
    majority_correct: bool = Field(description="The answer majority selection returns is correct.")
    islands: list[IslandOutcome] = Field(
        default_factory=list, description="Per island, when the round is split into islands."
    )


class RunOutcome(BaseModel):
    """One (problem, seed) job of one configuration: its rounds in order."""

    problem: str
    seed: int
    rounds: list[RoundOutcome]


class Estimate(BaseModel):
    value: float
    low: float
    high: float


class SeedSpread(BaseModel):
    """avg@k: independent seeds are whole RSA runs. Each seed's score is its mean over the problems
    that seed completed; ``mean`` is the mean of the k seed scores, with a Student-t interval over
    seeds (``None`` with one seed) and their sample standard deviation (mean ± std, as the RSA
    authors' harness reports runs)."""

    seeds: int
    per_seed: dict[int, float]
    mean: float
    std: float = Field(description="Sample standard deviation over seeds (0 with one seed).")
    low: float | None = None
    high: float | None = None


class IslandMetrics(BaseModel):
    island: int
    pass1: float = Field(description="Mean accuracy of the island's candidates.")
    maj: float = Field(description="Accuracy of the island's own majority answer.")


class RoundMetrics(BaseModel):
    round: int
    problems: int
    runs: int
    candidates: int
    pass1: Estimate = Field(description="Mean accuracy over the population (pass@1).")
    maj: Estimate = Field(description="Accuracy of the majority answer (maj@N).")
    pass_n: Estimate = Field(description="Some candidate is correct (pass@N).")
    pass_at_k: dict[int, float] = Field(description="Unbiased pass@k (Chen et al. 2021) per k ≤ N.")
    pass1_seeds: SeedSpread = Field(description="pass@1 as avg@k over seeds.")
    maj_seeds: SeedSpread = Field(description="maj@N as avg@k over seeds.")
    decode_tokens: float = Field(description="Mean decode tokens per run, cumulative up to this round.")
    prompt_tokens: float = Field(description="Mean prompt tokens per run, cumulative up to this round.")
    truncation_rate: float = Field(description="Share of this round's candidates cut at the budget.")
    no_answer_rate: float = Field(description="Share of this round's candidates without \\boxed{}.")
    islands: list[IslandMetrics] = Field(
        default_factory=list, description="Per island, when the round is split into islands."
    )


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct: 1 − C(n−c, k) / C(n, k),
    computed as a product so large ``n`` does not overflow (Chen et al. 2021, Codex paper)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 ≤ c ≤ n and 1 ≤ k ≤ n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def ks_for(population: int) -> list[int]:
    """The k reported for a population of N: powers of two below N, and N."""
    ks = [1 << i for i in range(population.bit_length()) if (1 << i) < population]
    return [*ks, population]


def bootstrap_ci(
    values: Sequence[float], level: float = CI_LEVEL, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (stdlib only: the sweep must not need
    the plotting extra)."""
    if not values:
        raise ValueError("no values")
    data = [float(v) for v in values]
    if all(v == data[0] for v in data):  # one problem, or no spread: the interval is the point
        return data[0], data[0]
    rng = random.Random(seed)
    n = len(data)
    means = sorted(math.fsum(rng.choices(data, k=n)) / n for _ in range(resamples))
    tail = (1.0 - level) / 2
    return _quantile(means, tail), _quantile(means, 1.0 - tail)


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of sorted data (numpy's default method)."""
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


# Two-sided 95% quantiles of Student's t for 1–30 degrees of freedom (stdlib only, no scipy).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom: tabulated up to 30, then
    the Cornish–Fisher expansion around the normal quantile (error < 0.001)."""
    if df < 1:
        raise ValueError("df must be ≥ 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def seed_spread(runs: Sequence[RunOutcome], score: Callable[[RunOutcome], float]) -> SeedSpread:
    """avg@k of ``score``: per seed, the mean over its runs (one per problem); then mean, t
    interval and sample std over seeds."""
    by_seed: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        by_seed[run.seed].append(score(run))
    per_seed = {seed: math.fsum(v) / len(v) for seed, v in sorted(by_seed.items())}
    values = list(per_seed.values())
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return SeedSpread(seeds=len(values), per_seed=per_seed, mean=mean, std=0.0)
    std = statistics.stdev(values)
    half = t975(len(values) - 1) * std / math.sqrt(len(values))
    return SeedSpread(
        seeds=len(values), per_seed=per_seed, mean=mean, std=std, low=mean - half, high=mean + half
    )


def estimate(values: Sequence[float]) -> Estimate:
    low, high = bootstrap_ci(values)
    return Estimate(value=math.fsum(values) / len(values), low=low, high=high)


def per_problem(runs: Sequence[RunOutcome], score: Callable[[RunOutcome], float]) -> dict[str, float]:
    """``score`` of each run, averaged over a problem's seeds (problems in first-seen order)."""
    by_problem: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        by_problem[run.problem].append(score(run))
    return {p: sum(v) / len(v) for p, v in by_problem.items()}


def round_metrics(runs: Sequence[RunOutcome], round_index: int) -> RoundMetrics:
    """Metrics of round ``round_index`` over ``runs`` (each must have that round)."""
    if not runs:
        raise ValueError("no runs")
    r = round_index

    def pass1(run: RunOutcome) -> float:
        c = run.rounds[r].correct
        return sum(c) / len(c)

    def pass_n(run: RunOutcome) -> float:
        return 1.0 if any(run.rounds[r].correct) else 0.0

    def maj(run: RunOutcome) -> float:
        return 1.0 if run.rounds[r].majority_correct else 0.0

    population = min(len(run.rounds[r].correct) for run in runs)
    pass_k: dict[int, float] = {}
    for k in ks_for(population):

        def unbiased(run: RunOutcome, k: int = k) -> float:
            return pass_at_k(len(run.rounds[r].correct), sum(run.rounds[r].correct), k)

        scores = per_problem(runs, unbiased)
        pass_k[k] = sum(scores.values()) / len(scores)
    candidates = [run.rounds[r] for run in runs]
    total = sum(len(c.correct) for c in candidates)
    islands = min(len(run.rounds[r].islands) for run in runs)
    return RoundMetrics(
        round=r,
        problems=len({run.problem for run in runs}),
        runs=len(runs),
        candidates=total,
        pass1=estimate(list(per_problem(runs, pass1).values())),
        maj=estimate(list(per_problem(runs, maj).values())),
        pass_n=estimate(list(per_problem(runs, pass_n).values())),
        pass_at_k=pass_k,
        pass1_seeds=seed_spread(runs, pass1),
        maj_seeds=seed_spread(runs, maj),
        decode_tokens=statistics.fmean(sum(x.decode_tokens for x in run.rounds[: r + 1]) for run in runs),
        prompt_tokens=statistics.fmean(sum(x.prompt_tokens for x in run.rounds[: r + 1]) for run in runs),
        truncation_rate=sum(sum(c.truncated) for c in candidates) / total,
        no_answer_rate=sum(len(c.answered) - sum(c.answered) for c in candidates) / total,
        islands=[island_metrics(runs, r, j) for j in range(islands)],
    )


def island_metrics(runs: Sequence[RunOutcome], round_index: int, island: int) -> IslandMetrics:
    """pass@1 and majority accuracy of one island of a round, averaged like the round's own."""

    def pass1(run: RunOutcome) -> float:
        c = run.rounds[round_index].islands[island].correct
        return sum(c) / len(c)

    def maj(run: RunOutcome) -> float:
        return 1.0 if run.rounds[round_index].islands[island].majority_correct else 0.0

    p1, mj = per_problem(runs, pass1), per_problem(runs, maj)
    return IslandMetrics(
        island=island, pass1=statistics.fmean(p1.values()), maj=statistics.fmean(mj.values())
    )


def all_rounds(runs: Sequence[RunOutcome]) -> list[RoundMetrics]:
    """:func:`round_metrics` for every round all ``runs`` have."""
    if not runs:
        return []
    return [round_metrics(runs, r) for r in range(min(len(run.rounds) for run in runs))]


def problem_grid(runs: Sequence[RunOutcome]) -> dict[str, list[float]]:
    """Per problem, the fraction of correct candidates in each round (averaged over seeds)."""
    if not runs:
        return {}
    rounds = min(len(run.rounds) for run in runs)

    def fraction(run: RunOutcome, r: int) -> float:
        return sum(run.rounds[r].correct) / len(run.rounds[r].correct)

    cols = [per_problem(runs, functools.partial(fraction, r=r)) for r in range(rounds)]
    return {p: [col[p] for col in cols] for p in cols[0]}
