"""Per-candidate records of a sweep: one JSON line per graded candidate, appended as it finishes.

The log is the sweep's source of truth: the report is computed from it, and an interrupted sweep
resumes from it. Each record keeps the candidate's tail (the text the next round's prompts quote),
so a job cut off mid-round is rebuilt in the store and only its missing candidates are generated.

Appends are whole lines followed by flush + fsync; a process killed mid-write can leave at most one
torn last line, which :meth:`RecordLog.load` drops (and the next append overwrites).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from pydantic import BaseModel, Field, ValidationError

from evals.grading import Grade, Reason
from mrsa.domain import Candidate, FinishReason, Usage


class UnitKey(NamedTuple):
    """One job of a sweep: a configuration on one problem with one seed."""

    config: str
    dataset: str
    problem: str
    seed: int


# (config, dataset, problem, seed, round, index)
RecordKey = tuple[str, str, str, int, int, int]


class CandidateRecord(BaseModel):
    config: str
    dataset: str
    problem: str
    seed: int
    round: int
    index: int
    parents: list[int]
    answer: str | None = None
    boxed: str | None = None
    correct: bool
    reason: Reason
    finish_reason: FinishReason
    decode_tokens: int
    prompt_tokens: int
    cached_prompt_tokens: int = 0
    requests: int = 1
    chunks: int = 1
    tail_tokens: int = 0
    source_tokens: int = 0
    tail: str = ""
    job_started_at: float | None = Field(
        None, description="Wall clock when this session created the candidate's job (None: not timed)."
    )
    started_at: float | None = Field(None, description="Wall clock when its generation started.")
    finished_at: float | None = Field(None, description="Wall clock when its generation finished.")

    @property
    def busy_s(self) -> float | None:
        """Seconds the candidate's generation took (its requests in flight, running or queued)."""
        if self.started_at is None or self.finished_at is None:
            return None
        return max(0.0, self.finished_at - self.started_at)

    @property
    def key(self) -> RecordKey:
        return (self.config, self.dataset, self.problem, self.seed, self.round, self.index)

    @property
    def unit(self) -> UnitKey:
        return UnitKey(self.config, self.dataset, self.problem, self.seed)

    @classmethod
    def build(
        cls,
        unit: UnitKey,
        cand: Candidate,
        boxed: str | None,
        grade: Grade,
        job_started_at: float | None = None,
    ) -> CandidateRecord:
        return cls(
            config=unit.config,
            dataset=unit.dataset,
            problem=unit.problem,
            seed=unit.seed,
            round=cand.round,
            index=cand.index,
            parents=list(cand.parents),
            answer=cand.answer,
            boxed=boxed,
            correct=grade.correct,
            reason=grade.reason,
            finish_reason=cand.finish_reason,
            decode_tokens=cand.usage.decode_tokens,
            prompt_tokens=cand.usage.prompt_tokens,
            cached_prompt_tokens=cand.usage.cached_prompt_tokens,
            requests=cand.usage.requests,
            chunks=cand.chunks,
            tail_tokens=cand.tail_tokens,
            source_tokens=cand.source_tokens,
            tail=cand.tail,
            job_started_at=job_started_at,
            started_at=cand.started_at,
            finished_at=cand.finished_at,
        )

    def to_candidate(self) -> Candidate:
        """The stored form the engine needs to build later rounds from this candidate (its tail,
        answer, finish reason and usage; the full trace is not kept)."""
        return Candidate(
            round=self.round,
            index=self.index,
            parents=list(self.parents),
            finish_reason=self.finish_reason,
            answer=self.answer,
            usage=Usage(
                decode_tokens=self.decode_tokens,
                prompt_tokens=self.prompt_tokens,
                cached_prompt_tokens=self.cached_prompt_tokens,
                requests=self.requests,
            ),
            chunks=self.chunks,
            tail=self.tail,
            tail_tokens=self.tail_tokens,
            source_tokens=self.source_tokens,
        )


def append_lines(path: Path, items: Iterable[BaseModel]) -> int:
    """Append ``items`` as JSON lines in one write, flushed and fsynced; return how many."""
    lines = [json.dumps(item.model_dump(mode="json"), ensure_ascii=False) + "\n" for item in items]
    if not lines:
        return 0
    with path.open("a", encoding="utf-8") as fh:
        fh.write("".join(lines))
        fh.flush()
        os.fsync(fh.fileno())
    return len(lines)


class RecordLogError(ValueError):
    """A record line in the middle of the log that cannot be read (not a torn last line)."""


class RecordLog:
    """Append-only JSONL of :class:`CandidateRecord` (first record of a key wins)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[RecordKey, CandidateRecord]:
        if not self.path.exists():
            return {}
        # Text after the last newline is a torn write (the process died mid-line): ignored.
        complete = self.path.read_bytes().split(b"\n")[:-1]
        out: dict[RecordKey, CandidateRecord] = {}
        for number, raw in enumerate(complete, start=1):
            if not raw.strip():
                continue
            try:
                record = CandidateRecord.model_validate_json(raw)
            except ValidationError as exc:
                raise RecordLogError(
                    f"{self.path}:{number}: unreadable record ({exc.errors()[0]['msg']})"
                ) from None
            out.setdefault(record.key, record)
        return out

    def repair(self) -> None:
        """Cut a torn last line so appends start on a fresh line (call once before appending)."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            with self.path.open("r+b") as fh:
                fh.truncate(keep)

    def append(self, records: Iterable[CandidateRecord]) -> int:
        return append_lines(self.path, records)

    def count(self) -> int:
        return len(self.load())
