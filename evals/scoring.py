"""From a run folder's records to graded outcomes per (configuration, dataset): completeness,
and the majority vote of every round (clustered as the engine does, in the grading pool under its
limit)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from pydantic import BaseModel

from evals.accuracy import IslandOutcome, RoundOutcome, RunOutcome
from evals.grading import Grader
from evals.records import CandidateRecord, RecordKey, UnitKey
from evals.rundir import Manifest
from evals.voting import majority_choice, majority_choice_plain
from mrsa.engine.answers import normalise_answer
from mrsa.engine.islands import island_members
from mrsa.engine.planning import round_islands


class Scored(BaseModel):
    """Outcomes of complete units, grouped by (configuration id, dataset), in manifest order."""

    groups: dict[str, dict[str, list[RunOutcome]]]
    complete: int
    incomplete: list[UnitKey]
    records: int


def _majority(grader: Grader | None, boxed: Sequence[str | None], finished: Sequence[bool]) -> int | None:
    classes = {normalise_answer(a) for a in boxed if a is not None}
    if len(classes) <= 1 or grader is None:  # nothing for math-verify to decide
        return majority_choice_plain(boxed, finished)
    return majority_choice(boxed, finished, grader.cluster)


def island_outcomes(
    records: Sequence[CandidateRecord], grader: Grader | None, islands: int
) -> list[IslandOutcome]:
    """Each island's candidates (contiguous indices, :mod:`mrsa.engine.islands`) and its own majority."""
    out = []
    for island in range(islands):
        members = [records[i] for i in island_members(len(records), islands, island)]
        chosen = _majority(grader, [r.boxed for r in members], [r.finish_reason == "stop" for r in members])
        out.append(
            IslandOutcome(
                correct=[r.correct for r in members],
                majority_correct=chosen is not None and members[chosen].correct,
            )
        )
    return out


def round_outcome(
    records: Sequence[CandidateRecord], grader: Grader | None, islands: int = 1
) -> RoundOutcome:
    """One round's candidates (ordered by index) as a graded outcome; with ``islands`` > 1 (the
    round's island count) also each island's."""
    boxed = [r.boxed for r in records]
    finished = [r.finish_reason == "stop" for r in records]
    chosen = _majority(grader, boxed, finished)
    return RoundOutcome(
        islands=island_outcomes(records, grader, islands) if islands > 1 else [],
        correct=[r.correct for r in records],
        truncated=[r.finish_reason == "length" for r in records],
        answered=[r.boxed is not None for r in records],
        decode_tokens=sum(r.decode_tokens for r in records),
        prompt_tokens=sum(r.prompt_tokens for r in records),
        majority_correct=chosen is not None and records[chosen].correct,
    )


def score(manifest: Manifest, records: dict[RecordKey, CandidateRecord], grader: Grader | None) -> Scored:
    """Outcomes of every unit of ``manifest`` whose candidates are all recorded."""
    by_unit: dict[UnitKey, dict[tuple[int, int], CandidateRecord]] = defaultdict(dict)
    for record in records.values():
        by_unit[record.unit][(record.round, record.index)] = record
    groups: dict[str, dict[str, list[RunOutcome]]] = {
        c.id: {d.name: [] for d in manifest.datasets} for c in manifest.configs
    }
    incomplete: list[UnitKey] = []
    complete = 0
    for unit in manifest.units():
        params = manifest.config(unit.config).params
        have = by_unit.get(unit, {})
        grid = [[have.get((r, i)) for i in range(params.stage_population(r))] for r in range(params.stages)]
        if any(rec is None for row in grid for rec in row):
            incomplete.append(unit)
            continue
        complete += 1
        rounds = [
            round_outcome([rec for rec in row if rec is not None], grader, round_islands(params, r))
            for r, row in enumerate(grid)
        ]
        groups[unit.config][unit.dataset].append(
            RunOutcome(problem=unit.problem, seed=unit.seed, rounds=rounds)
        )
    return Scored(groups=groups, complete=complete, incomplete=incomplete, records=len(records))
