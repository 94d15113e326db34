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
    problem_tokens: int,
    aggregate_overhead: int,
    continue_overhead: int,
    spec: JobSpec,
    summary_overhead: int = 0,
) -> int:
    """The most tokens one request of the job may hold: prompt (problem, K tails of τ — or of
    summaries — and the template) plus the decode tokens of one request (the larger stage budget,
    or chunk + Delethink head + carry-over when chunked). A summary request holds the problem, its
    template and at most ``request_tokens`` of a candidate's text, plus ``summary_budget``."""
    p = spec.params
    prompt = problem_tokens
    carried = p.summary_budget if p.tail_mode == "summarize" else p.tail
    if p.rounds > 0 or p.selection == "aggregate":
        prompt = max(prompt, aggregate_overhead + p.subset * carried)
    if p.chunk is not None and p.chunk < max(p.budget, p.stage_budget(p.rounds)):
        prompt += p.head_tokens + p.carryover_tokens + continue_overhead
    worst = prompt + p.request_tokens
    if p.tail_mode == "summarize":
        worst = max(worst, summary_overhead + p.request_tokens + p.summary_budget)
    return worst + CHAT_TEMPLATE_MARGIN


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
    head = " " if p.head_tokens else ""  # the template with a head apart, when one may be kept
    cont = len(await backend.tokenize(prompts.continuation_prompt(p.prompts, "", "", head=head)))
    summary = 0
    if p.tail_mode == "summarize":
        summary = len(
            await backend.tokenize(prompts.summary_prompt(p.prompts, spec.problem, "", p.summary_budget))
        )
    worst = worst_case_tokens(problem, aggregate, cont, spec, summary)
    if worst > info.context_length:
        raise ContextBudgetError(
            f"budget: a request may need {worst} tokens (prompt with K={p.subset} tails of τ={p.tail} "
            f"plus {p.request_tokens} decode tokens) but the model's context is {info.context_length}; "
            "lower budget (or set chunk), tail or subset"
        )
    return worst
