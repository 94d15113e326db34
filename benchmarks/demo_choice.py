"""Which problem and budget make a good first run on the embedded model (``make demo``)?

The embedded SmolLM2-135M-Instruct is a pipeline check, not a math model: on most arithmetic it is
wrong most of the time. A first run should still look like what it is, Markovian RSA at work: the
candidates have room to finish (not cut at the budget), round 0 gets the answer some of the time,
and the votes move between rounds. This script measures that, per candidate problem and budget,
over a few job seeds, on the real embedded model (llama-cpp-python, started as a child process on
a loopback port, as ``mrsa solve`` starts it):

- round 0: the share of candidates whose answer is right (graded as ``mrsa bench`` grades), the
  share with no answer, the share truncated at the budget, mean decode tokens;
- with ``--rounds 1`` (or more), the same for the last round, and for how many seeds the top
  answer changed between round 0 and the last round ("moved").

    .venv/bin/python -m benchmarks.demo_choice                                  # round 0, defaults
    .venv/bin/python -m benchmarks.demo_choice --budgets 96,256 --seeds 3
    .venv/bin/python -m benchmarks.demo_choice --problem "What is 2+3?=5" --rounds 1 --budgets 256

Every other knob is the ``smoke`` preset's (N=4, K=2, τ=48, T=0.8, top_p 0.95, top_k 40). Only
loopback traffic. Results and the command are recorded in docs/benchmarks.md (*The first run*).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from evals.grading import grade_answer
from mrsa.backends.base import Backend
from mrsa.domain import CandidateSummary, JobResult, JobSpec, JobStatus, Vote
from mrsa.params import resolve_params
from mrsa.runtime import RuntimeSettings, open_backend
from workers.inprocess import InProcessRunner

DEFAULT_PROBLEMS: tuple[tuple[str, str], ...] = (
    ("What is 7*6?", "42"),
    ("What is 2+3?", "5"),
    ("What is 9+8?", "17"),
    ("What is 12*12?", "144"),
    ("Tom has 3 apples and buys 4 more. How many apples does he have now?", "7"),
)


@dataclass
class StageStats:
    """Counts over the candidates of one stage (round 0, or the last round) of every seed."""

    candidates: int = 0
    correct: int = 0
    no_answer: int = 0
    truncated: int = 0
    decode_tokens: int = 0

    def add(self, gold: str, candidates: Sequence[CandidateSummary]) -> None:
        for c in candidates:
            self.candidates += 1
            self.correct += grade_answer(gold, c.answer).correct
            self.no_answer += c.answer is None
            self.truncated += c.finish_reason == "length"
            self.decode_tokens += c.decode_tokens

    def share(self, count: int) -> float:
        return count / self.candidates if self.candidates else 0.0


@dataclass
class Row:
    problem: str
    gold: str
    budget: int
    seeds: int
    round0: StageStats = field(default_factory=StageStats)
    last: StageStats | None = None
    moved: int = 0  # seeds whose top answer differs between round 0 and the last round
    answers: list[str] = field(default_factory=list)  # the job's answer per seed
    seconds: float = 0.0


def top_answer(votes: Sequence[Vote]) -> str | None:
    return votes[0].answer if votes else None


async def measure(backend: Backend, problem: str, gold: str, budget: int, seeds: int, rounds: int) -> Row:
    row = Row(problem, gold, budget, seeds, last=StageStats() if rounds else None)
    started = time.monotonic()
    async with InProcessRunner(backend, capacity=(await backend.info()).capacity) as runner:
        for seed in range(seeds):
            params = resolve_params("smoke", {"budget": budget, "rounds": rounds, "seed": seed})
            result: JobResult = await runner.solve(JobSpec(problem=problem, params=params))
            if result.status != JobStatus.succeeded:
                raise RuntimeError(f"{problem!r} seed {seed}: {result.status.value}: {result.error}")
            row.round0.add(gold, result.rounds[0].candidates)
            if row.last is not None:
                row.last.add(gold, result.rounds[-1].candidates)
                moved = top_answer(result.rounds[0].votes) != top_answer(result.rounds[-1].votes)
                row.moved += moved
            row.answers.append(result.answer if result.answer is not None else "—")
    row.seconds = time.monotonic() - started
    return row


def parse_problem(text: str) -> tuple[str, str]:
    problem, sep, gold = text.rpartition("=")
    if not sep or not problem.strip() or not gold.strip():
        raise argparse.ArgumentTypeError(f"--problem: expected 'PROBLEM=GOLD', got {text!r}")
    return problem.strip(), gold.strip()


def stage_cells(s: StageStats) -> str:
    return (
        f"{100 * s.share(s.correct):5.0f}% {100 * s.share(s.no_answer):5.0f}% "
        f"{100 * s.share(s.truncated):5.0f}% {s.decode_tokens / max(1, s.candidates):6.0f}"
    )


def print_header(rounds: int) -> None:
    head = f"{'problem':<42} {'β':>4} {'right':>6} {'none':>6} {'cut':>6} {'tok':>6}"
    if rounds:
        head += f"  | last: {'right':>6} {'none':>6} {'cut':>6} {'tok':>6} {'moved':>6}"
    print(head + "  answers")


def print_row(r: Row) -> None:
    line = f"{r.problem[:42]:<42} {r.budget:>4} {stage_cells(r.round0)}"
    if r.last is not None:
        line += f"  |       {stage_cells(r.last)} {r.moved:>3}/{r.seeds:<2}"
    print(line + "  " + " ".join(r.answers), flush=True)


async def main_async(args: argparse.Namespace) -> list[Row]:
    rows = []
    if not args.json:
        print_header(args.rounds)
    async with open_backend(RuntimeSettings(backend_url=args.backend, backend_kind="auto")) as backend:
        for problem, gold in args.problem or DEFAULT_PROBLEMS:
            for budget in args.budgets:
                row = await measure(backend, problem, gold, budget, args.seeds, args.rounds)
                rows.append(row)
                if not args.json:
                    print_row(row)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problem", action="append", type=parse_problem, help="'PROBLEM=GOLD' (repeatable)")
    parser.add_argument(
        "--budgets",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[96, 256],
        help="comma-separated decode budgets β to try (default 96,256)",
    )
    parser.add_argument("--seeds", type=int, default=3, help="job seeds per problem and budget")
    parser.add_argument("--rounds", type=int, default=0, help="aggregation rounds T (0: round 0 only)")
    parser.add_argument(
        "--backend",
        help="URL of an already running server (e.g. `mrsa backend --threads 1`); default: start the "
        "embedded model here, as mrsa solve does",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    started = time.monotonic()
    rows = asyncio.run(main_async(args))
    load_after = os.getloadavg()
    if args.json:
        print(json.dumps({"rows": [asdict(r) for r in rows], "load": [load_before, load_after]}, indent=1))
        return
    print(
        f"{len(rows)} rows in {time.monotonic() - started:.0f} s; load average (1/5/15 min) "
        f"before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
        f"after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}"
    )
    print(
        "right/none/cut: share of candidates with the right answer / no answer / cut at β; "
        "tok: mean decode tokens; moved: seeds whose top answer changed from round 0 to the last"
    )


if __name__ == "__main__":
    main()
