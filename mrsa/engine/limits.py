"""Checks that a job fits the model's context window before any token is generated."""

from __future__ import annotations

from mrsa.backends.base import Backend
from mrsa.domain import JobSpec
from mrsa.engine import prompts

# Chat-template tokens around one user turn and the assistant header (generous for ChatML/Llama).
CHAT_TEMPLATE_MARGIN = 48


class ContextBudgetError(ValueError):
    """The parameters cannot fit the model's context window; the message names the field."""


def worst_case_tokens(
    problem_tokens: int, aggregate_overhead: int, continue_overhead: int, spec: JobSpec
) -> int:
    """The most tokens one request of the job may hold: prompt (problem, K tails of τ, template)
    plus the decode tokens of one request (β, or chunk + carry-over when chunked)."""
    p = spec.params
    prompt = problem_tokens
    if p.rounds > 0 or p.selection == "aggregate":
        prompt = max(prompt, aggregate_overhead + p.subset * p.tail)
    if p.chunk is not None and p.chunk < p.budget:
        prompt += p.carryover_tokens + continue_overhead
    return prompt + p.request_tokens + CHAT_TEMPLATE_MARGIN


async def check_context(backend: Backend, spec: JobSpec) -> int | None:
    """Raise :class:`ContextBudgetError` when the job cannot fit; return the worst case in tokens
    (``None`` when the server does not report its context length)."""
    info = await backend.info()
    if info.context_length is None:
        return None
    p = spec.params
    problem = len(await backend.tokenize(prompts.round0_prompt(p.prompts, spec.problem)))
    aggregate = len(
        await backend.tokenize(prompts.aggregation_prompt(p.prompts, spec.problem, [""] * p.subset))
    )
    cont = len(await backend.tokenize(prompts.continuation_prompt(p.prompts, "", "")))
    worst = worst_case_tokens(problem, aggregate, cont, spec)
    if worst > info.context_length:
        raise ContextBudgetError(
            f"budget: a request may need {worst} tokens (prompt with K={p.subset} tails of τ={p.tail} "
            f"plus {p.request_tokens} decode tokens) but the model's context is {info.context_length}; "
            "lower budget (or set chunk), tail or subset"
        )
    return worst
