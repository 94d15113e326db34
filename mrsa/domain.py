"""The wire contract: jobs, tasks, candidates, usage and results (pydantic models).

These models are what the store persists, what workers exchange through the queue and what the
API and ``mrsa solve --json`` return. Keep them free of behaviour beyond small derived values.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mrsa.params import RSAParams

FinishReason = Literal["stop", "length", "abort", "error"]


class JobStatus(StrEnum):
    """Lifecycle of a job. ``succeeded``, ``failed`` and ``cancelled`` are terminal."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class Usage(BaseModel):
    """Token usage. The ZAYA1 report counts decode tokens only (D(q)); prompt tokens are kept apart."""

    decode_tokens: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = Field(
        0,
        description="Of prompt_tokens, those the server served from its prefix cache (OpenAI's "
        "usage.prompt_tokens_details.cached_tokens; 0 when the server does not report it).",
    )
    requests: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            decode_tokens=self.decode_tokens + other.decode_tokens,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            cached_prompt_tokens=self.cached_prompt_tokens + other.cached_prompt_tokens,
            requests=self.requests + other.requests,
        )


class Cost(BaseModel):
    """Money spent on a job (or a sweep), by kind of token."""

    currency: str
    priced_as: str = Field(description='The price table entry used (a model id, or "*").')
    prompt: float = Field(description="Prompt tokens not served from cache.")
    cached_prompt: float = Field(description="Prompt tokens served from the prefix cache.")
    decode: float
    total: float

    def __add__(self, other: Cost) -> Cost:
        same = self.priced_as if self.priced_as == other.priced_as else "mixed"
        return Cost(
            currency=self.currency,
            priced_as=same,
            prompt=self.prompt + other.prompt,
            cached_prompt=self.cached_prompt + other.cached_prompt,
            decode=self.decode + other.decode,
            total=self.total + other.total,
        )

    def line(self) -> str:
        return (
            f"{self.total:.4f} {self.currency} (prompt {self.prompt:.4f}, cached prompt "
            f"{self.cached_prompt:.4f}, decode {self.decode:.4f}; prices of {self.priced_as})"
        )


class JobSpec(BaseModel):
    """What a user asked for: the problem, the resolved parameters and the model id."""

    model_config = ConfigDict(extra="forbid")

    problem: str = Field(min_length=1, description="The problem statement (LaTeX allowed).")
    params: RSAParams
    model: str | None = Field(None, description="Model id passed to the inference server.")
    preset: str | None = Field(None, description="The preset the parameters were resolved from, if any.")


class Task(BaseModel):
    """One unit of work on the queue: one candidate of one round, or the final aggregation call.

    ``parents`` are the previous round's candidate indices whose tails go into the prompt; they are
    planned once when the round is planned, so a redelivered task builds the same prompt.
    """

    job_id: str
    kind: Literal["candidate", "select"] = "candidate"
    round: int
    index: int
    parents: list[int] = Field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.job_id}:{self.kind}:{self.round}:{self.index}"


class ChunkCheckpoint(BaseModel):
    """State of a chunked (Delethink) candidate after ``chunks`` completed requests."""

    chunks: int
    text: str
    token_ids: list[int] | None = None
    usage: Usage = Field(default_factory=Usage)
    finish_reason: FinishReason = "length"


class Candidate(BaseModel):
    """One generated candidate with everything needed to inspect, aggregate and grade it."""

    round: int
    index: int
    parents: list[int] = Field(default_factory=list)
    prompt: str = Field("", description="The user prompt this candidate answered.")
    reasoning: str | None = None
    content: str = ""
    trace: str = Field("", description="Raw trace: reasoning + '</think>' + content when reasoning exists.")
    finish_reason: FinishReason = "stop"
    answer: str | None = None
    usage: Usage = Field(
        default_factory=Usage, description="Every call made for this candidate (its summary's included)."
    )
    summary_usage: Usage = Field(
        default_factory=Usage,
        description="The part of usage spent on its tail summary (tail_mode summarize).",
    )
    chunks: int = 1
    tail: str = Field(
        "", description="The text carried to the next round (a summary with tail_mode summarize)."
    )
    tail_tokens: int = Field(0, description="Length of the tail in model tokens.")
    source_tokens: int = Field(0, description="Length in model tokens of the text the tail was cut from.")
    started_at: float | None = Field(
        None, description="Wall clock when its generation started (None: not recorded)."
    )
    finished_at: float = Field(default_factory=time.time)

    @property
    def finished(self) -> bool:
        return self.finish_reason == "stop"


class Vote(BaseModel):
    answer: str
    count: int
    finished: int = Field(0, description="Votes from candidates that finished (not truncated).")


class CandidateSummary(BaseModel):
    index: int
    answer: str | None
    finish_reason: FinishReason
    decode_tokens: int
    prompt_tokens: int
    tail_tokens: int
    source_tokens: int
    parents: list[int]


class IslandSummary(BaseModel):
    """One island of a round (jobs with ``islands`` > 1): its candidates and their votes."""

    island: int
    first: int = Field(description="Index of the island's first candidate (islands are contiguous).")
    size: int
    truncated: int
    decode_tokens: int
    votes: list[Vote]


StopReason = Literal["converged", "token_budget"]


class EarlyStop(BaseModel):
    """Why an adaptive job stopped before round T, and what that saved."""

    reason: StopReason
    after_round: int = Field(description="The last round that ran; its population gives the answer.")
    rounds_skipped: int
    agreement: float = Field(
        description="Share of the last round's finished candidates behind the top answer."
    )
    truncated_share: float = Field(description="Share of the last round's candidates cut at the budget.")
    decode_tokens_saved_estimate: int = Field(
        description="An estimate, not a measurement: rounds skipped × the last round's decode tokens."
    )


class RoundSummary(BaseModel):
    index: int
    usage: Usage
    summary_usage: Usage = Field(
        default_factory=Usage, description="The part of usage spent on tail summaries (tail_mode summarize)."
    )
    truncated: int
    votes: list[Vote]
    candidates: list[CandidateSummary]
    islands: list[IslandSummary] = Field(
        default_factory=list, description="Per-island votes of this round (only when the job has islands)."
    )
    equivalence_timeouts: int = Field(
        0,
        description="Distinct answers math-verify could not compare within the equivalence limit: "
        "each is its own class in the votes.",
    )
    oversized_answers: int = Field(
        0, description="Distinct answers too long to compare symbolically (grouped as normalised strings)."
    )


class JobResult(BaseModel):
    """The result of a finished job (also the shape of ``mrsa solve --json``)."""

    job_id: str
    status: JobStatus
    answer: str | None
    selection: str
    error: str | None = None
    params: RSAParams
    model: str | None = None
    usage: Usage
    votes: list[Vote]
    answers: list[str | None] = Field(
        default_factory=list, description="Final-round answers of every candidate (selection 'population')."
    )
    warnings: list[str] = Field(
        default_factory=list, description="What the service could not check while building the result."
    )
    rounds: list[RoundSummary]
    early_stop: EarlyStop | None = Field(
        None,
        description="Set when adaptive compute stopped the job before round T (stop_agreement, token_budget).",
    )
    elapsed_s: float = 0.0
    cost: Cost | None = Field(
        None,
        description="Money spent, from the price table given (--prices / MRSA_PRICES_FILE); null without one.",
    )


class Job(BaseModel):
    """A job as stored: spec, owner, status and progress counters."""

    id: str
    spec: JobSpec
    owner: str = "local"
    status: JobStatus = JobStatus.queued
    round: int = 0
    error: str | None = None
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    finished_at: float | None = None
    answer: str | None = None
    warnings: list[str] = Field(
        default_factory=list, description="What the service could not check when it accepted the job."
    )


class Event(BaseModel):
    """A progress event of one job (served as server-sent events and read by ``mrsa watch``)."""

    type: Literal["status", "candidate", "round", "done"]
    job_id: str
    status: JobStatus | None = None
    round: int | None = None
    index: int | None = None
    answer: str | None = None
    finish_reason: FinishReason | None = None
    decode_tokens: int | None = None
    parents: list[int] | None = Field(
        None,
        description="A candidate's parents: the previous round's indices whose tails were in its prompt.",
    )
    done: int | None = Field(None, description="Candidates of the round stored so far.")
    error: str | None = None
    at: float = Field(default_factory=time.time)
