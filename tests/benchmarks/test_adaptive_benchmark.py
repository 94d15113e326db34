"""benchmarks/adaptive.py on a tiny problem set: both sides run against the real simulator with
its difficulty model, and the comparison adds up."""

from __future__ import annotations

import pytest

from benchmarks.adaptive import KEY_CHARS, Workload, gold, hard, problem_text, render, run
from testkit.simulator.model import Difficulty, SimConfig, _rng, problem_answers, sample_output


@pytest.mark.timeout(120)
def test_the_benchmark_compares_full_and_adaptive_runs() -> None:
    workload = Workload(problems=4, population=8, subset=2, rounds=3, budget=300, tail=64, concurrency=16)
    c = run(workload)
    assert c.full.failed == c.adaptive.failed == 0
    assert c.full.mean_rounds == workload.rounds
    assert c.adaptive.mean_rounds <= c.full.mean_rounds
    # Rounds 0..t of an adaptive job are the full job's rounds 0..t: it can only spend less.
    assert c.adaptive.decode_tokens <= c.full.decode_tokens
    assert c.saved_actual == c.full.decode_tokens - c.adaptive.decode_tokens
    assert (c.saved_actual > 0) == bool(c.stopped)
    assert 0 <= c.answers_differ <= workload.problems
    table = render(c)
    assert "tokens saved" in table and "answer differs from the full run" in table


def test_synthetic_problems_are_longer_than_the_simulators_key() -> None:
    problems = [problem_text(i) for i in range(50)]
    assert all(len(p) > KEY_CHARS for p in problems) and len({p[:KEY_CHARS] for p in problems}) == 50
    assert gold(problems[0]) == problem_answers(problems[0][:KEY_CHARS])[0]
    assert 5 <= sum(hard(p) for p in problems) <= 25  # about a quarter


def answer_of(config: SimConfig, prompt: str, seed: int, key: str) -> str | None:
    out = sample_output(config, prompt, seed, 10_000, key)
    return out.text.rsplit("\\boxed{", 1)[-1].split("}", 1)[0] if out.finish_reason == "stop" else None


def test_difficulty_model_aggregation_converges_on_easy_problems_and_never_on_hard_ones() -> None:
    config = SimConfig(difficulty=True, runaway_share=0.0)
    problems = [problem_text(i) for i in range(60)]
    easy = next(p for p in problems if Difficulty.of(p[:KEY_CHARS], 0.25).accuracy > 0.7)
    tough = next(p for p in problems if hard(p))
    for problem, converges in ((easy, True), (tough, False)):
        key = problem[:KEY_CHARS]
        right = problem_answers(key)[0]
        first = [answer_of(config, problem, s, key) for s in range(200)]
        shown = "".join(f"attempt \\boxed{{{right}}} " for _ in range(4))
        agreed = [answer_of(config, problem + "\n" + shown, s, key) for s in range(200)]
        share0 = first.count(right) / 200
        share1 = agreed.count(right) / 200
        if converges:  # shown four right answers, nearly always right
            assert share1 > 0.9 and share1 > share0
        else:  # a hard problem ignores what it is shown: rarely right, many distinct answers
            assert share0 < 0.25 and share1 < 0.25 and len(set(agreed)) >= 8


def test_without_the_difficulty_model_answers_are_drawn_as_before() -> None:
    """The model is opt-in: off, an answer is the draw the simulator always made (after the runaway
    and length draws, right with ``correct_share``), whatever the prompt shows."""
    config = SimConfig(runaway_share=0.0)
    for s in range(40):
        prompt = f"p{s} shows \\boxed{{1}}"
        rng = _rng("output", s, prompt)
        rng.random(), rng.lognormvariate(0, 1)
        answers = problem_answers("k")
        expected = answers[0] if rng.random() < config.correct_share else rng.choice(answers[1:])
        assert answer_of(config, prompt, s, "k") == expected
