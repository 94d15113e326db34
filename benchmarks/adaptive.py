"""Adaptive compute, measured: one problem set run with adaptive compute off and on, side by side in
one run, against the simulator's per-problem difficulty model (``testkit/simulator``,
``--difficulty``).

The simulator's outputs are a pure function of (prompt, seed), and mrsa's prompts and seeds are a
pure function of the job's seed, so an adaptive job's rounds 0..t are exactly the full run's rounds
0..t. The only difference is where it stops; so "how often the early answer differs from the full
run's" is measured per problem, not estimated.

Problems are synthetic (``Problem i: …``, each over 200 characters: the simulator identifies a
problem by the first 200 characters of the prompt, and the problem comes first). Each has a
difficulty drawn from its text: easy and medium problems gain accuracy and agreement with rounds,
hard ones (a quarter) are rarely right and never converge.

Reported for each side: decode tokens (all jobs), accuracy (the job's answer is the simulator's
correct one), mean rounds run; and between them: tokens saved (%), answers that differ, jobs
stopped early by reason, and the result's saved-token estimate beside the tokens actually saved.

    .venv/bin/python -m benchmarks.adaptive                    # table
    .venv/bin/python -m benchmarks.adaptive --json             # one JSON object
    .venv/bin/python -m benchmarks.adaptive --token-budget 20000 --no-agreement   # the budget alone

Only loopback traffic: the simulator runs as a child process on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from mrsa.backends.http import HttpOptions
from mrsa.backends.openai import OpenAICompatibleBackend
from mrsa.domain import JobResult, JobSpec, JobStatus
from mrsa.params import RSAParams
from testkit.simulator.model import Difficulty, problem_answers
from testkit.simulator.process import running_simulator
from workers.inprocess import InProcessRunner

KEY_CHARS = 200  # what the simulator keys a problem by (testkit/simulator/server.py)
HARD_SHARE = 0.25


@dataclass(frozen=True)
class Workload:
    problems: int = 40
    population: int = 16
    subset: int = 4
    rounds: int = 4
    budget: int = 400
    tail: int = 96
    seed: int = 0
    stop_agreement: float | None = 0.75
    stop_min_round: int = 1
    stop_max_truncated: float = 0.25
    token_budget: int | None = None
    concurrency: int = 64

    def params(self, adaptive: bool) -> RSAParams:
        knobs = (
            {
                "stop_agreement": self.stop_agreement,
                "stop_min_round": self.stop_min_round,
                "stop_max_truncated": self.stop_max_truncated,
                "token_budget": self.token_budget,
            }
            if adaptive
            else {}
        )
        return RSAParams(
            population=self.population,
            subset=self.subset,
            rounds=self.rounds,
            budget=self.budget,
            tail=self.tail,
            seed=self.seed,
            **knobs,
        )


def problem_text(i: int) -> str:
    """A synthetic problem, longer than the simulator's key so every prompt of a job maps to it."""
    text = f"Problem {i}: find the value the simulator holds for this problem, reasoning step by step."
    while len(text) <= KEY_CHARS:
        text += f" Consider case {len(text) % 97} of problem {i} carefully before concluding."
    return text


def gold(problem: str) -> str:
    return problem_answers(problem[:KEY_CHARS])[0]


def hard(problem: str) -> bool:
    return Difficulty.of(problem[:KEY_CHARS], HARD_SHARE).pull == 0.0


@dataclass
class Side:
    """One way of running the problem set."""

    name: str
    decode_tokens: int
    accuracy: float
    mean_rounds: float
    failed: int


@dataclass
class Comparison:
    workload: Workload
    full: Side
    adaptive: Side
    tokens_saved_pct: float
    answers_differ: int
    answers_differ_pct: float
    stopped: dict[str, int]
    stopped_hard: int
    hard_problems: int
    saved_estimate: int
    saved_actual: int


def side(name: str, problems: Sequence[str], results: Sequence[JobResult]) -> Side:
    return Side(
        name=name,
        decode_tokens=sum(r.usage.decode_tokens for r in results),
        accuracy=sum(1 for p, r in zip(problems, results, strict=True) if r.answer == gold(p))
        / len(problems),
        mean_rounds=sum(len(r.rounds) - 1 for r in results) / len(results),
        failed=sum(1 for r in results if r.status != JobStatus.succeeded),
    )


def compare(
    workload: Workload, problems: Sequence[str], full: Sequence[JobResult], early: Sequence[JobResult]
) -> Comparison:
    """Both runs of every problem, side by side (``full[i]`` and ``early[i]`` solved ``problems[i]``)."""
    a, b = side("full", problems, full), side("adaptive", problems, early)
    differ = sum(1 for f, e in zip(full, early, strict=True) if f.answer != e.answer)
    stops = [(p, e.early_stop) for p, e in zip(problems, early, strict=True) if e.early_stop is not None]
    return Comparison(
        workload=workload,
        full=a,
        adaptive=b,
        tokens_saved_pct=100.0 * (1 - b.decode_tokens / a.decode_tokens) if a.decode_tokens else 0.0,
        answers_differ=differ,
        answers_differ_pct=100.0 * differ / len(problems),
        stopped=dict(Counter(stop.reason for _, stop in stops)),
        stopped_hard=sum(1 for p, _ in stops if hard(p)),
        hard_problems=sum(1 for p in problems if hard(p)),
        saved_estimate=sum(stop.decode_tokens_saved_estimate for _, stop in stops),
        saved_actual=a.decode_tokens - b.decode_tokens,
    )


async def solve_all(
    url: str, params: RSAParams, problems: Sequence[str], concurrency: int
) -> list[JobResult]:
    backend = OpenAICompatibleBackend(
        url, dialect="vllm", options=HttpOptions(concurrency=concurrency, timeout_s=600)
    )
    try:
        async with InProcessRunner(backend, capacity=concurrency) as runner:
            jobs = [
                await runner.submit(JobSpec(problem=p, params=params, model="mrsa-sim")) for p in problems
            ]
            return list(await asyncio.gather(*(runner.wait(j.id) for j in jobs)))
    finally:
        await backend.aclose()


def simulator_flags(workload: Workload) -> list[str]:
    return [
        "--difficulty",
        f"--hard-share={HARD_SHARE}",
        f"--max-num-seqs={workload.concurrency}",
        "--step-base-ms=0.2",
        "--step-per-seq-ms=0.004",
        "--prefill-ms-per-token=0",
        "--median-tokens=140",
        "--runaway-share=0.05",
        "--max-model-len=16384",
    ]


async def measure(url: str, workload: Workload) -> Comparison:
    problems = [problem_text(i) for i in range(workload.problems)]
    full = await solve_all(url, workload.params(adaptive=False), problems, workload.concurrency)
    early = await solve_all(url, workload.params(adaptive=True), problems, workload.concurrency)
    return compare(workload, problems, full, early)


def run(workload: Workload) -> Comparison:
    with running_simulator(simulator_flags(workload)) as url:
        return asyncio.run(measure(url, workload))


def render(c: Comparison) -> str:
    w = c.workload
    rules = []
    if w.stop_agreement is not None:
        rules.append(
            f"stop_agreement={w.stop_agreement} stop_min_round={w.stop_min_round} "
            f"stop_max_truncated={w.stop_max_truncated}"
        )
    if w.token_budget is not None:
        rules.append(f"token_budget={w.token_budget}")
    lines = [
        f"{w.problems} problems ({c.hard_problems} hard), N={w.population} K={w.subset} T={w.rounds} "
        f"β={w.budget} τ={w.tail} seed={w.seed}; adaptive: {'; '.join(rules) or 'no rule'}",
        "",
        f"{'':<22}{'full':>14}{'adaptive':>14}",
        f"{'decode tokens':<22}{c.full.decode_tokens:>14,}{c.adaptive.decode_tokens:>14,}",
        f"{'accuracy':<22}{100 * c.full.accuracy:>13.1f}%{100 * c.adaptive.accuracy:>13.1f}%",
        f"{'mean rounds run':<22}{c.full.mean_rounds:>14.2f}{c.adaptive.mean_rounds:>14.2f}",
        f"{'failed jobs':<22}{c.full.failed:>14}{c.adaptive.failed:>14}",
        "",
        f"tokens saved: {c.tokens_saved_pct:.1f}% ({c.saved_actual:,} decode tokens; the results' estimate "
        f"said {c.saved_estimate:,})",
        f"answer differs from the full run: {c.answers_differ} of {w.problems} ({c.answers_differ_pct:.1f}%)",
        f"stopped early: {sum(c.stopped.values())} of {w.problems} "
        f"({', '.join(f'{k} {v}' for k, v in sorted(c.stopped.items())) or 'none'}); "
        f"of them hard problems: {c.stopped_hard} of {c.hard_problems}",
    ]
    return "\n".join(lines)


def parse(argv: Sequence[str] | None) -> tuple[Workload, bool]:
    d = Workload()
    p = argparse.ArgumentParser(prog="python -m benchmarks.adaptive", description=__doc__.split("\n\n")[0])
    p.add_argument("--problems", type=int, default=d.problems)
    p.add_argument("--population", type=int, default=d.population)
    p.add_argument("--subset", type=int, default=d.subset)
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--budget", type=int, default=d.budget)
    p.add_argument("--tail", type=int, default=d.tail)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--stop-agreement", type=float, default=d.stop_agreement)
    p.add_argument("--no-agreement", action="store_true", help="turn the convergence rule off")
    p.add_argument("--stop-min-round", type=int, default=d.stop_min_round)
    p.add_argument("--stop-max-truncated", type=float, default=d.stop_max_truncated)
    p.add_argument("--token-budget", type=int, default=d.token_budget)
    p.add_argument("--concurrency", type=int, default=d.concurrency)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    workload = Workload(
        problems=a.problems,
        population=a.population,
        subset=a.subset,
        rounds=a.rounds,
        budget=a.budget,
        tail=a.tail,
        seed=a.seed,
        stop_agreement=None if a.no_agreement else a.stop_agreement,
        stop_min_round=a.stop_min_round,
        stop_max_truncated=a.stop_max_truncated,
        token_budget=a.token_budget,
        concurrency=a.concurrency,
    )
    if workload.stop_agreement is None and workload.token_budget is None:
        p.error("nothing to compare: give --stop-agreement or --token-budget")
    return workload, a.json


def main(argv: Sequence[str] | None = None) -> None:
    workload, as_json = parse(argv)
    comparison = run(workload)
    sys.stdout.write((json.dumps(asdict(comparison)) if as_json else render(comparison)) + "\n")


if __name__ == "__main__":
    main()
