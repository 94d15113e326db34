"""Tail summarisation (``tail_mode: summarize``): instead of cutting a candidate's last τ tokens,
one more model call writes a summary of it in at most ``summary_budget`` tokens, and the summary
is the tail the next round reads (Zyphra's proxy does this with ``rsa_summarize``).

The call is part of the candidate's task: its seed derives from the job's seed and the
candidate's position (:func:`~mrsa.engine.planning.summary_seed`), so a redelivered task asks for
the same summary (a chunked candidate resumes from its last checkpoint, its whole generation when
only the summary was left; an unchunked one is generated again with its own seed, as any task). The text summarised is the tail source (``tail_source``), at most its last
``request_tokens`` (chunk or β) tokens, so the summary request is bounded like any other: problem,
template, that text and ``summary_budget`` decode tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from mrsa.backends.base import Backend, GenerationRequest, Message
from mrsa.domain import Job, Task, Usage
from mrsa.engine import prompts
from mrsa.engine.planning import summary_seed
from mrsa.engine.tails import Tail, TailSourceText, cut_tail, make_tail
from mrsa.params import RSAParams


def summarises(params: RSAParams, task: Task) -> bool:
    """Whether ``task``'s candidate gets a summary for a tail: with tail_mode ``summarize``, for
    every stage whose tails are read — not the last one unless selection ``aggregate`` reads it,
    and never the selection call itself."""
    if params.tail_mode != "summarize" or task.kind != "candidate":
        return False
    return not params.is_last_stage(task.round) or params.selection == "aggregate"


@dataclass(frozen=True)
class Summary:
    tail: Tail
    usage: Usage


async def _work_text(backend: Backend, source: TailSourceText, limit: int, ids: list[int] | None) -> str:
    """``source``'s text, at most its last ``limit`` tokens (cut from ``ids`` when they cover it)."""
    if not source.text:
        return ""
    own = ids if source.whole_trace and ids is not None else await backend.tokenize(source.text)
    kept = cut_tail(own, limit)
    if len(kept) == len(own) and not (source.whole_trace and ids is not None):
        return source.text
    return await backend.detokenize(kept)


def summary_request(job: Job, task: Task, prompt: str, priority: int | None) -> GenerationRequest:
    """The summary call of ``task``'s candidate: its own seed, the stage's sampling, at most
    ``summary_budget`` decode tokens, tagged ``kind: summary``."""
    params = job.spec.params
    sampling = params.stage_sampling(task.round)
    return GenerationRequest(
        messages=[Message(role="user", content=prompt)],
        max_tokens=params.summary_budget,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        seed=summary_seed(params.seed, task.round, task.index),
        tag={"job": job.id, "round": task.round, "index": task.index, "chunk": 0, "kind": "summary"},
        priority=priority,
        model=job.spec.model,
    )


async def summarise(
    backend: Backend,
    job: Job,
    task: Task,
    source: TailSourceText,
    generated_ids: list[int] | None,
    priority: int | None = None,
) -> Summary:
    """The summary tail of one candidate whose tail source is ``source``, and the call's usage.

    The summary is the answer part of what the model wrote (its reasoning when it wrote no answer
    within the budget), cut to ``summary_budget`` tokens; ``source_tokens`` of the tail counts
    the summary itself. A candidate with nothing to summarise gets an empty tail and no call."""
    params = job.spec.params
    work = await _work_text(backend, source, params.request_tokens, generated_ids)
    if not work.strip():
        return Summary(tail=Tail(text="", tokens=0, source_tokens=0), usage=Usage())
    prompt = prompts.summary_prompt(params.prompts, job.spec.problem, work, params.summary_budget)
    result = (await backend.generate(summary_request(job, task, prompt, priority)))[0]
    text = result.content.strip() or (result.reasoning or "").strip()
    tail = await make_tail(backend, TailSourceText(text, False), params.summary_budget)
    usage = Usage(
        decode_tokens=result.completion_tokens,
        prompt_tokens=result.prompt_tokens,
        cached_prompt_tokens=result.cached_prompt_tokens,
        requests=1,
    )
    return Summary(tail=tail, usage=usage)
