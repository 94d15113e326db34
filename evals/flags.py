"""Flags per candidate and per run, as MathArena shows them beside its scores: an answer that was
there but not extracted, a candidate the budget cut, a candidate or a run the backend failed.

Flags count every recorded candidate of a (configuration, dataset), complete unit or not: the
candidates of a run the backend failed were generated and are what the flags are about, although
the accuracy tables leave that run out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, Field

from evals.records import CandidateRecord, UnitKey

Flag = Literal["unparsed_box", "unboxed_answer", "truncated", "backend_failed"]
FLAGS: tuple[Flag, ...] = ("unparsed_box", "unboxed_answer", "truncated", "backend_failed")
LABELS: dict[Flag, str] = {
    "unparsed_box": "box not parsed",
    "unboxed_answer": "answer without box",
    "truncated": "truncated",
    "backend_failed": "backend failed",
}
LETTERS: dict[Flag, str] = {
    "unparsed_box": "P",
    "unboxed_answer": "U",
    "truncated": "T",
    "backend_failed": "F",
}


def candidate_flags(record: CandidateRecord) -> list[Flag]:
    """The flags of one candidate.

    - ``unparsed_box``: it has a ``\\boxed{}`` the grader could not read as mathematics
      (``parse_error``).
    - ``unboxed_answer``: no ``\\boxed{}``, but the engine's fallback found an answer in the text
      ("the answer is 42"): the model answered, without the box strict grading needs.
    - ``truncated``: the budget β stopped it (``finish_reason`` ``length``).
    - ``backend_failed``: the server aborted it or reported an error (``abort``, ``error``).
    """
    flags: list[Flag] = []
    if record.reason == "parse_error":
        flags.append("unparsed_box")
    if record.boxed is None and record.answer is not None:
        flags.append("unboxed_answer")
    if record.finish_reason == "length":
        flags.append("truncated")
    if record.finish_reason in ("abort", "error"):
        flags.append("backend_failed")
    return flags


class FlagCounts(BaseModel):
    """Candidates, and how many of them carry each flag."""

    candidates: int = 0
    unparsed_box: int = 0
    unboxed_answer: int = 0
    truncated: int = 0
    backend_failed: int = 0

    def add(self, record: CandidateRecord) -> None:
        self.candidates += 1
        for flag in candidate_flags(record):
            setattr(self, flag, getattr(self, flag) + 1)

    def count(self, flag: Flag) -> int:
        return int(getattr(self, flag))


class RoundFlags(FlagCounts):
    round: int
    failed_runs: int = Field(0, description="Runs the backend failed with this round incomplete.")


class FlaggedCandidate(BaseModel):
    round: int
    index: int
    flags: list[Flag]


class RunFlags(BaseModel):
    """One (problem, seed) run: its flags per round, each flagged candidate, and the backend's
    error when it failed the run."""

    seed: int
    rounds: list[FlagCounts]
    candidates: list[FlaggedCandidate] = Field(default_factory=list, description="Flagged ones only.")
    failed: str | None = Field(None, description="The error of a run the backend failed (still incomplete).")
    failed_round: int | None = Field(None, description="The first round it did not complete.")


class GroupFlags(BaseModel):
    rounds: list[RoundFlags]
    problems: dict[str, list[RunFlags]] = Field(description="Per problem, its runs in seed order.")


def group_flags(
    units: Sequence[UnitKey],
    records: Iterable[CandidateRecord],
    populations: Sequence[int],
    failures: Mapping[UnitKey, str],
) -> GroupFlags:
    """Flags of one (configuration, dataset): ``units`` are its runs, ``records`` any records (those
    of other units are ignored), ``populations`` the candidates of each generation stage, and
    ``failures`` the last backend error of units whose job failed."""
    wanted = set(units)
    by_unit: dict[UnitKey, list[CandidateRecord]] = {u: [] for u in units}
    for record in records:
        if record.unit in wanted:
            by_unit[record.unit].append(record)
    stages = len(populations)
    totals = [RoundFlags(round=r) for r in range(stages)]
    problems: dict[str, list[RunFlags]] = {}
    for unit in sorted(units, key=lambda u: u.seed):
        rounds = [FlagCounts() for _ in range(stages)]
        flagged = []
        for record in sorted(by_unit[unit], key=lambda r: (r.round, r.index)):
            if record.round < stages:
                rounds[record.round].add(record)
                totals[record.round].add(record)
                if flags := candidate_flags(record):
                    flagged.append(FlaggedCandidate(round=record.round, index=record.index, flags=flags))
        incomplete = [r for r in range(stages) if rounds[r].candidates < populations[r]]
        error = failures.get(unit) if incomplete else None
        failed_round = incomplete[0] if error is not None else None
        if failed_round is not None:
            totals[failed_round].failed_runs += 1
        problems.setdefault(unit.problem, []).append(
            RunFlags(
                seed=unit.seed, rounds=rounds, candidates=flagged, failed=error, failed_round=failed_round
            )
        )
    return GroupFlags(rounds=totals, problems=problems)


def cell_letters(runs: Sequence[RunFlags], round_index: int) -> str:
    """The problem grid's annotation of one (problem, round): each flag's letter and count over the
    problem's seeds (``T3 U1``); an ``F`` for every run the backend failed in or before it."""
    parts = []
    for flag in FLAGS:
        n = sum(run.rounds[round_index].count(flag) for run in runs if round_index < len(run.rounds))
        if flag == "backend_failed":
            n += sum(1 for run in runs if run.failed_round is not None and run.failed_round <= round_index)
        if n:
            parts.append(f"{LETTERS[flag]}{n}")
    return " ".join(parts)


class FlagGroup(GroupFlags):
    """:class:`GroupFlags` of one (configuration, dataset)."""

    config: str
    dataset: str


def flag_lines(groups: Sequence[FlagGroup]) -> list[str]:
    """The report's flags section: counts per configuration, dataset and round."""
    lines = [
        "",
        "## Flags",
        "",
        "As MathArena flags runs. Counts of candidates: **box not parsed** (a `\\boxed{}` the grader "
        "could not read as mathematics), **answer without box** (no `\\boxed{}`, but the engine's "
        "fallback found an answer: present, not extracted), **truncated** (cut by the budget β), "
        "**backend failed** (aborted or errored by the server); **failed runs**: runs whose job the "
        "backend failed with this round incomplete (left out of the accuracy tables; rerun `mrsa "
        "bench` to retry them). Every recorded candidate counts, complete run or not. Per problem and "
        "seed in `metrics.json` (`flags`), and as letters in the problem grid.",
        "",
        "| configuration | dataset | round | candidates | "
        + " | ".join(LABELS[f] for f in FLAGS)
        + " | failed runs |",
        "|---|---|---:|---:|" + "---:|" * (len(FLAGS) + 1),
    ]
    for g in groups:
        for r in g.rounds:
            cells = " | ".join(str(r.count(f)) for f in FLAGS)
            lines.append(
                f"| `{g.config}` | {g.dataset} | {r.round} | {r.candidates} | {cells} | {r.failed_runs} |"
            )
    return lines
