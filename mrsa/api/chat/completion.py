"""A chat completion's job rendered in OpenAI's schema: the ``chat.completion`` of a job that
succeeded (its answer text, usage, mrsa's own ``mrsa`` block and, when asked, the proxy's
``rsa_metadata`` and aggregation prompt), the error and HTTP status of one that did not, and the
``chat.completion.chunk`` objects a stream is made of. How and when they are sent is
:mod:`mrsa.api.chat.serving`'s.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from mrsa.api.chat.schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    CompletionUsage,
    Delta,
    PromptTokensDetails,
    RsaInfo,
)
from mrsa.api.deps import ApiDeps
from mrsa.api.jobs import operations as jobs
from mrsa.api.schemas import ErrorResponse, OpenAIErrorDetail
from mrsa.domain import Job, JobResult, JobStatus
from mrsa.engine.planning import select_round
from mrsa.engine.tails import split_trace

IGNORED_HEADER = "X-Mrsa-Ignored-Fields"
_PRINTABLE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def shown_fields(names: list[str], limit: int) -> list[str]:
    """Field names safe to echo (a header, a log line): printable ones as sent, others replaced;
    at most ``limit`` names, then a count of the rest."""
    shown = [n if _PRINTABLE_NAME.fullmatch(n) else "(unprintable name)" for n in names[:limit]]
    if len(names) > limit:
        shown.append(f"(+{len(names) - limit} more)")
    return shown


def proxy_metadata(job: Job, result: JobResult) -> dict[str, Any]:
    """The ``rsa_metadata`` Zyphra's proxy returns, from this job (its keys; token counts are model
    tokens, decode tokens of a stage's candidates on average)."""
    params = job.spec.params
    history = [r.usage.decode_tokens / len(r.candidates) if r.candidates else 0.0 for r in result.rounds]
    return {
        "rsa_iterations": params.rounds,
        "rsa_n": params.population,
        "rsa_k": params.subset,
        "rsa_summarize": params.tail_mode == "summarize",
        "rsa_tail_window": params.tail < params.budget,
        "tail_window_len": params.tail,
        "short_resp_len": params.budget,
        "use_pacore": params.prompts == "pacore",
        "rsa_token_count_history": history,
    }


def error_body(error: OpenAIErrorDetail) -> ErrorResponse:
    """A job's failure as the API's error body, which carries OpenAI's ``error`` object too."""
    return ErrorResponse(message=error.message, error=error)


@dataclass(frozen=True)
class Outcome:
    """How a terminal job answers: its completion (status 200), or its error and status."""

    completion: ChatCompletion | None
    error: OpenAIErrorDetail | None
    status: int


class CompletionRenderer:
    """Renders one chat completion's job: the same id, creation time and model in every object."""

    def __init__(self, deps: ApiDeps, job: Job, body: ChatCompletionRequest) -> None:
        self.deps = deps
        self.body = body
        self.id = f"chatcmpl-{job.id}"
        self.created = int(time.time())
        self.ignored = [name[:64] for name in body.ignored_fields()[:100]]
        self.headers: dict[str, str] = {}
        if self.ignored:
            self.headers[IGNORED_HEADER] = ", ".join(shown_fields(body.ignored_fields(), 20))

    async def outcome(self, job: Job) -> Outcome:
        """The chat.completion of a terminal job, or the error and its HTTP status."""
        if job.status == JobStatus.succeeded:
            return Outcome(await self.completion(job), None, 200)
        if job.status == JobStatus.cancelled:
            detail = OpenAIErrorDetail(
                message=f"job {job.id} was cancelled: {job.error}", type="job_cancelled", code="cancelled"
            )
            return Outcome(None, detail, 409)
        detail = OpenAIErrorDetail(
            message=f"job {job.id} failed: {job.error or job.status.value}",
            type="job_failed",
            code="job_failed",
        )
        return Outcome(None, detail, 502)

    async def completion(self, job: Job) -> ChatCompletion:
        """The chat.completion of a job that succeeded."""
        result = await jobs.result_of(self.deps, job)
        content = await self.content(job, result)
        asked = self.body.response_flag
        prompt = await self.aggregation_prompt(job) if asked("return_aggregation_prompt") else None
        metadata = proxy_metadata(job, result) if asked("return_rsa_metadata") else None
        if metadata is not None and prompt is not None:
            metadata["rsa_final_aggregation_prompt"] = prompt  # as the proxy adds it
        usage = CompletionUsage(
            prompt_tokens=result.usage.prompt_tokens,
            completion_tokens=result.usage.decode_tokens,
            total_tokens=result.usage.prompt_tokens + result.usage.decode_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=result.usage.cached_prompt_tokens),
        )
        return ChatCompletion(
            id=self.id,
            created=self.created,
            model=self.body.model,
            choices=[Choice(message=AssistantMessage(content=content))],
            usage=usage,
            mrsa=RsaInfo(
                job_id=job.id,
                answer=result.answer,
                votes=result.votes,
                rounds=len(result.rounds),
                requests=result.usage.requests,
                warnings=job.warnings,
                ignored_fields=self.ignored,
                cost=result.cost,
            ),
            rsa_metadata=metadata,
            aggregation_prompt=prompt,
        )

    async def aggregation_prompt(self, job: Job) -> list[dict[str, str]] | None:
        """The last stage's first aggregation prompt as chat messages (None without aggregation)."""
        last = job.spec.params.rounds
        if last == 0:
            return None
        candidates = sorted(await self.deps.store.get_candidates(job.id, last), key=lambda c: c.index)
        return [{"role": "user", "content": candidates[0].prompt}] if candidates else None

    async def content(self, job: Job, result: JobResult) -> str:
        """A short solution: the answer part of a final candidate that gave the selected answer,
        ending in ``\\boxed{answer}``."""
        params = job.spec.params
        final = select_round(params) if params.selection == "aggregate" else params.rounds
        candidates = await self.deps.store.get_candidates(job.id, final)
        if not candidates and final > params.rounds:
            candidates = await self.deps.store.get_candidates(job.id, params.rounds)
        matching = [c for c in candidates if c.answer is not None and c.answer == result.answer]
        matching.sort(key=lambda c: (not c.finished, c.index))
        text = ""
        if matching:
            chosen = matching[0]
            text = chosen.content if chosen.reasoning else split_trace(chosen.content)[1]
            text = text.strip()
        if result.answer is None:
            return text or "Markovian RSA found no final answer (no candidate wrote \\boxed{…})."
        boxed = f"\\boxed{{{result.answer}}}"
        return text if boxed in text else (f"{text}\n\n" if text else "") + f"Final answer: {boxed}"

    def chunk(self, delta: Delta, finish_reason: str | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=self.id,
            created=self.created,
            model=self.body.model,
            choices=[ChunkChoice(delta=delta, finish_reason=finish_reason)],
        )

    def usage_chunk(self, completion: ChatCompletion) -> ChatCompletionChunk:
        """The last chunk of a stream with ``stream_options.include_usage``: no choices, the usage."""
        return ChatCompletionChunk(
            id=self.id, created=self.created, model=self.body.model, choices=[], usage=completion.usage
        )
