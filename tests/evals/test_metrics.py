"""Metrics against hand-computed values, properties of unbiased pass@k and the bootstrap, and the
majority vote maj@N scores."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evals.accuracy import (
    RoundOutcome,
    RunOutcome,
    all_rounds,
    bootstrap_ci,
    ks_for,
    pass_at_k,
    problem_grid,
    round_metrics,
    seed_spread,
    t975,
)
from evals.voting import majority_choice, majority_choice_plain


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (4, 1, 1, 0.25),
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (5, 2, 3, 0.9),  # 1 - C(3,3)/C(5,3) = 1 - 1/10
        (4, 2, 2, 5 / 6),  # 1 - C(2,2)/C(4,2)
        (4, 3, 2, 1.0),  # fewer than k wrong samples: some draw of k always holds a correct one
        (4, 0, 4, 0.0),
        (16, 4, 4, 1 - math.comb(12, 4) / math.comb(16, 4)),
    ],
)
def test_pass_at_k_by_hand(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_rejects_nonsense() -> None:
    for n, c, k in ((4, 5, 1), (4, 1, 0), (4, 1, 5), (4, -1, 1)):
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


@given(st.integers(1, 200).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n))))
def test_pass_at_k_bounds_and_monotonicity(nc: tuple[int, int]) -> None:
    n, c = nc
    values = [pass_at_k(n, c, k) for k in range(1, n + 1)]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert all(a <= b + 1e-12 for a, b in itertools.pairwise(values))  # more tries never hurt
    assert values[0] == pytest.approx(c / n)  # pass@1 is the mean
    assert values[-1] == (1.0 if c else 0.0)  # pass@n: some sample correct
    if c < n:
        assert all(pass_at_k(n, c, k) <= pass_at_k(n, c + 1, k) + 1e-12 for k in range(1, n + 1))
    # equals the combinatorial definition
    k = max(1, n // 2)
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-9)


def test_ks_for() -> None:
    assert ks_for(16) == [1, 2, 4, 8, 16]
    assert ks_for(4) == [1, 2, 4]
    assert ks_for(6) == [1, 2, 4, 6]
    assert ks_for(1) == [1]


@given(st.lists(st.floats(0, 1), min_size=1, max_size=40))
def test_bootstrap_interval_holds_the_mean(values: list[float]) -> None:
    low, high = bootstrap_ci(values, resamples=200)
    mean = sum(values) / len(values)
    assert min(values) - 1e-12 <= low <= mean + 1e-9
    assert mean - 1e-9 <= high <= max(values) + 1e-12


def test_bootstrap_is_reproducible_and_degenerate_cases() -> None:
    data = [0.0, 0.25, 1.0, 0.5, 0.0]
    assert bootstrap_ci(data) == bootstrap_ci(data)
    assert bootstrap_ci([0.4]) == (0.4, 0.4)
    assert bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0)
    with pytest.raises(ValueError):
        bootstrap_ci([])


def rnd(correct: str, truncated: str, answered: str, decode: int, prompt: int, maj: bool) -> RoundOutcome:
    def bits(s: str) -> list[bool]:
        return [ch == "1" for ch in s]

    return RoundOutcome(
        correct=bits(correct),
        truncated=bits(truncated),
        answered=bits(answered),
        decode_tokens=decode,
        prompt_tokens=prompt,
        majority_correct=maj,
    )


RUNS = [
    RunOutcome(
        problem="A",
        seed=0,
        rounds=[rnd("1000", "0011", "1100", 40, 100, True), rnd("1100", "0000", "1111", 10, 300, True)],
    ),
    RunOutcome(
        problem="A",
        seed=1,
        rounds=[rnd("1100", "0000", "1111", 20, 100, False), rnd("1111", "0000", "1111", 10, 300, True)],
    ),
    RunOutcome(
        problem="B",
        seed=0,
        rounds=[rnd("0000", "1111", "0000", 80, 60, False), rnd("0001", "0001", "1111", 10, 200, False)],
    ),
]


def test_round_metrics_by_hand() -> None:
    m0 = round_metrics(RUNS, 0)
    assert (m0.problems, m0.runs, m0.candidates) == (2, 3, 12)
    # per run 1/4, 2/4, 0 → per problem A (0.25+0.5)/2 = 0.375, B 0 → mean 0.1875
    assert m0.pass1.value == pytest.approx(0.1875)
    assert m0.maj.value == pytest.approx(0.25)  # A: (1+0)/2, B: 0
    assert m0.pass_n.value == pytest.approx(0.5)  # A: 1, B: 0
    # pass@2: A seed 0 (c=1) 0.5, seed 1 (c=2) 5/6 → A 2/3, B 0 → 1/3
    assert m0.pass_at_k[1] == pytest.approx(0.1875)
    assert m0.pass_at_k[2] == pytest.approx(1 / 3)
    assert m0.pass_at_k[4] == pytest.approx(0.5)
    assert m0.decode_tokens == pytest.approx(140 / 3)
    assert m0.prompt_tokens == pytest.approx(260 / 3)
    assert m0.truncation_rate == pytest.approx(6 / 12)
    assert m0.no_answer_rate == pytest.approx(6 / 12)
    assert m0.pass1.low <= m0.pass1.value <= m0.pass1.high
    assert m0.pass1.low >= 0.0 and m0.pass1.high <= 0.375

    m1 = round_metrics(RUNS, 1)
    # A: (2/4 + 4/4)/2 = 0.75, B: 1/4 → 0.5
    assert m1.pass1.value == pytest.approx(0.5)
    assert m1.maj.value == pytest.approx(0.5)
    assert m1.pass_n.value == pytest.approx(1.0)
    assert m1.decode_tokens == pytest.approx(140 / 3 + 10)  # cumulative
    assert m1.prompt_tokens == pytest.approx(260 / 3 + 800 / 3)
    assert m1.truncation_rate == pytest.approx(1 / 12)
    assert m1.no_answer_rate == 0.0
    assert [m.round for m in all_rounds(RUNS)] == [0, 1]


def test_problem_grid() -> None:
    assert problem_grid(RUNS) == {"A": [0.375, 0.75], "B": [0.0, 0.25]}
    assert problem_grid([]) == {}


def test_majority_vote_follows_the_engine_rule() -> None:
    # equivalent answers form one class: 1/2 and 0.5 outvote 3
    assert majority_choice([r"\frac{1}{2}", "3", "0.5", "3"], [True, True, True, False]) == 0
    # only finished votes count when any finished candidate answered
    assert majority_choice(["7", "7", "9"], [False, False, True]) == 2
    # nobody finished: all votes count; ties go to the class seen first
    assert majority_choice(["5", "6", "6", "5"], [False] * 4) == 0
    assert majority_choice([None, None], [True, True]) is None
    # the string-only fallback agrees where no symbolic equivalence is needed
    for answers, finished in ((["7", "7", "9"], [False, False, True]), (["5", "6", "6", "5"], [False] * 4)):
        assert majority_choice_plain(answers, finished) == majority_choice(answers, finished)
    assert majority_choice_plain([r"\frac{1}{2}", "3", "0.5", "3"], [True, True, True, False]) == 1


# -- avg@k over seeds ------------------------------------------------------------------------------


def run_of(problem: str, seed: int, correct: list[bool]) -> RunOutcome:
    return RunOutcome(
        problem=problem,
        seed=seed,
        rounds=[
            RoundOutcome(
                correct=correct,
                truncated=[False] * len(correct),
                answered=[True] * len(correct),
                decode_tokens=0,
                prompt_tokens=0,
                majority_correct=sum(correct) * 2 > len(correct),
            )
        ],
    )


def test_avg_at_k_by_hand() -> None:
    # seed 0: problem a 4/4, b 0/4 → 0.5; seed 1: a 2/4, b 1/4 → 0.375; seed 2: a 4/4, b 2/4 → 0.75
    runs = [
        run_of("a", 0, [True] * 4),
        run_of("b", 0, [False] * 4),
        run_of("a", 1, [True, True, False, False]),
        run_of("b", 1, [True, False, False, False]),
        run_of("a", 2, [True] * 4),
        run_of("b", 2, [True, True, False, False]),
    ]
    m = round_metrics(runs, 0)
    s = m.pass1_seeds
    assert s.seeds == 3 and s.per_seed == {0: 0.5, 1: 0.375, 2: 0.75}
    assert s.mean == pytest.approx(0.541666666) == pytest.approx(m.pass1.value)
    assert s.std == pytest.approx(0.190941, abs=1e-6)  # sample std of 0.5, 0.375, 0.75
    half = 4.303 * 0.190941 / math.sqrt(3)
    assert (s.low, s.high) == pytest.approx((0.541667 - half, 0.541667 + half), abs=1e-5)
    assert m.maj_seeds.per_seed == {0: 0.5, 1: 0.0, 2: 0.5}  # a's majority right at seeds 0, 2


@given(
    st.lists(
        st.lists(st.lists(st.booleans(), min_size=1, max_size=6), min_size=1, max_size=5),
        min_size=1,
        max_size=6,
    )
)
def test_avg_at_k_is_the_mean_of_per_seed_scores(seeds: list[list[list[bool]]]) -> None:
    """Seeds as whole runs over the same problems: the spread is the seeds' own mean and std, the
    interval holds the mean, and with one seed there is none."""
    problems = min(len(s) for s in seeds)
    runs = [run_of(f"p{j}", i, seed[j]) for i, seed in enumerate(seeds) for j in range(problems)]
    spread = seed_spread(runs, lambda r: sum(r.rounds[0].correct) / len(r.rounds[0].correct))
    expected = [statistics.fmean(sum(c) / len(c) for c in seed[:problems]) for seed in seeds]
    assert list(spread.per_seed.values()) == pytest.approx(expected)
    assert spread.mean == pytest.approx(statistics.fmean(expected))
    if len(seeds) == 1:
        assert spread.std == 0 and spread.low is None and spread.high is None
    else:
        assert spread.std == pytest.approx(statistics.stdev(expected))
        assert spread.low is not None and spread.high is not None
        assert spread.low <= spread.mean <= spread.high
        assert spread.high - spread.mean == pytest.approx(spread.mean - spread.low)


def test_t_quantiles() -> None:
    assert t975(1) == 12.706 and t975(30) == 2.042
    for df, value in ((40, 2.021), (60, 2.000), (120, 1.980), (10_000, 1.960)):
        assert t975(df) == pytest.approx(value, abs=1e-3)
    values = [t975(df) for df in range(1, 500)]
    assert all(a > b > 1.959 for a, b in itertools.pairwise(values))
    with pytest.raises(ValueError):
        t975(0)
