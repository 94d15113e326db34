"""Runs the backend failed: one JSON line per unit whose job failed (``failures.jsonl`` in the run
folder), so the report can flag them although they left no complete records.

A failed unit is retried when the sweep is run again; it is flagged only while it is still
incomplete (the report reads the last failure of each unit)."""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from evals.records import UnitKey, append_lines


class Failure(BaseModel):
    config: str
    dataset: str
    problem: str
    seed: int
    error: str
    at: float = Field(default_factory=time.time)

    @property
    def unit(self) -> UnitKey:
        return UnitKey(self.config, self.dataset, self.problem, self.seed)


class FailureLog:
    """Append-only JSONL of :class:`Failure` (a torn or unreadable line is skipped: a lost flag is
    not worth refusing a report)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, unit: UnitKey, error: str) -> None:
        failure = Failure(
            config=unit.config, dataset=unit.dataset, problem=unit.problem, seed=unit.seed, error=error
        )
        append_lines(self.path, [failure])

    def load(self) -> dict[UnitKey, str]:
        """The last error of every unit that failed."""
        if not self.path.exists():
            return {}
        out: dict[UnitKey, str] = {}
        for raw in self.path.read_bytes().split(b"\n"):
            if not raw.strip():
                continue
            try:
                failure = Failure.model_validate_json(raw)
            except ValidationError:
                continue
            out[failure.unit] = failure.error
        return out
