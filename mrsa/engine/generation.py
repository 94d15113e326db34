"""Generating one candidate: build its prompt, call the backend (in Delethink chunks when
``chunk`` is set, checkpointing after each), and make its tail (cut, or summarised: see
:mod:`mrsa.engine.summaries`). The final selection call is a candidate too
(``Task.kind == "select"``) and goes through the same path. The last generation stage (round T)
samples and budgets with the ``final_*`` settings (:meth:`~mrsa.params.RSAParams.stage_sampling`)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from mrsa.backends.base import Backend, GenerationRequest, GenerationResult, Message
from mrsa.domain import Candidate, ChunkCheckpoint, FinishReason, Job, Task, Usage
from mrsa.engine import prompts
from mrsa.engine.answers import extract_answer
from mrsa.engine.planning import lineage_key, request_seed
from mrsa.engine.summaries import summarise, summarises
from mrsa.engine.tails import Tail, continuation_windows, make_tail, split_trace, tail_source_text
from mrsa.params import RSAParams
from mrsa.store.base import JobStore

NO_TAIL = Tail(text="", tokens=0, source_tokens=0)


class MissingParentsError(RuntimeError):
    """A task names parents whose candidates are not stored (a broken round invariant)."""


def usage_of(result: GenerationResult) -> Usage:
    """The usage of one backend request."""
    return Usage(
        decode_tokens=result.completion_tokens,
        prompt_tokens=result.prompt_tokens,
        cached_prompt_tokens=result.cached_prompt_tokens,
        requests=1,
    )


def build_prompt(params: RSAParams, problem: str, parents: Sequence[Candidate]) -> str:
    if not parents:
        return prompts.round0_prompt(params.prompts, problem)
    return prompts.aggregation_prompt(params.prompts, problem, [p.tail for p in parents])


def ordered_parents(task: Task, loaded: Sequence[Candidate]) -> list[Candidate]:
    """The previous round's candidates named by ``task.parents``, in that order (from what the
    store loaded for the task); :class:`MissingParentsError` when one is not stored."""
    if task.round == 0 or not task.parents:
        return []
    found = {c.index: c for c in loaded}
    missing = [i for i in task.parents if i not in found]
    if missing:
        raise MissingParentsError(f"round {task.round - 1} candidates {missing} are not stored")
    return [found[i] for i in task.parents]


def _request(
    job: Job,
    task: Task,
    messages: list[Message],
    max_tokens: int,
    chunk: int = 0,
    *,
    prefill: str | None = None,
    priority: int | None = None,
) -> GenerationRequest:
    """One request of ``task``: its tag, its seed (from the task's position and ``chunk``) and its
    stage's sampling, in the job's model (None: the backend's own). The selection call is tagged
    ``kind: select`` and samples at ``aggregate_temperature``."""
    params = job.spec.params
    tag: dict[str, str | int] = {"job": job.id, "round": task.round, "index": task.index, "chunk": chunk}
    sampling = params.stage_sampling(task.round)
    temperature = sampling.temperature
    if task.kind == "select":
        tag["kind"] = "select"
        temperature = params.aggregate_temperature
    return GenerationRequest(
        messages=messages,
        prefill=prefill,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        seed=request_seed(params.seed, task.round, task.index, chunk),
        tag=tag,
        lineage=lineage_key(task),
        priority=priority,
        model=job.spec.model,
    )


async def _generate_chunked(
    backend: Backend, store: JobStore, job: Job, task: Task, prompt: str, priority: int | None
) -> tuple[str, list[int] | None, Usage, FinishReason, int]:
    """Delethink: chunks of at most ``chunk`` tokens; each continues from the prompt plus the first
    ``head`` tokens of the candidate's first chunk and the last ``carryover`` tokens of its output
    (:func:`continuation_prompt_parts`). Returns (trace, ids, usage, finish, chunks)."""
    params = job.spec.params
    assert params.chunk is not None
    budget = params.stage_budget(task.round)
    cp = await store.load_checkpoint(job.id, task.round, task.index)
    text = cp.text if cp else ""
    ids: list[int] | None = cp.token_ids if cp else None
    usage = cp.usage if cp else Usage()
    chunks = cp.chunks if cp else 0
    finish: FinishReason = cp.finish_reason if cp else "length"
    # ceil(β / chunk) requests at most, even when a server under-reports (or omits) its usage.
    max_chunks = -(-budget // params.chunk)
    while chunks == 0 or (finish == "length" and usage.decode_tokens < budget and chunks < max_chunks):
        max_tokens = min(params.chunk, budget - usage.decode_tokens)
        user = [Message(role="user", content=prompt)]
        prefill: str | None = None
        if chunks > 0:
            own = ids if ids is not None else await backend.tokenize(text)
            prefill, continued = await continuation_prompt_parts(
                backend, params, prompt, own, backend.supports_prefill
            )
            user = [Message(role="user", content=continued)]
        req = _request(job, task, user, max_tokens, chunks, prefill=prefill, priority=priority)
        last = (await backend.generate(req))[0]
        text += last.trace
        if chunks == 0:
            ids = last.token_ids
        elif ids is not None and last.token_ids is not None:
            ids = ids + last.token_ids
        else:
            ids = None  # some chunk came without ids: fall back to tokenizing the text
        usage = usage + usage_of(last)
        chunks += 1
        finish = last.finish_reason
        await store.save_checkpoint(
            job.id,
            task.round,
            task.index,
            ChunkCheckpoint(chunks=chunks, text=text, token_ids=ids, usage=usage, finish_reason=finish),
        )
    return text, ids, usage, finish, chunks


async def continuation_prompt_parts(
    backend: Backend, params: RSAParams, prompt: str, own: list[int], prefill: bool
) -> tuple[str | None, str]:
    """(assistant prefill, user prompt) of a continuation of a candidate whose output so far is
    the token ids ``own``: it keeps the head (the first ``head_tokens``, all of the first chunk at
    most) and the last ``carryover`` tokens, as Delethink does (:func:`continuation_windows`).

    With ``prefill`` (the server continues an assistant turn raw) the prompt is unchanged and the
    prefill is the kept ids as one text, as Delethink appends them to the query. Otherwise the
    kept text goes into a new-turn continuation prompt: one window when head and carry-over are
    contiguous, the head and the carry-over apart when tokens between them were dropped."""
    head, carry = continuation_windows(own, params.head_tokens, params.carryover_tokens)
    kept = head + carry
    contiguous = len(kept) == len(own)
    if prefill:
        return (await backend.detokenize(kept) if kept else ""), prompt
    if contiguous or not head:
        text = await backend.detokenize(kept) if kept else ""
        return None, prompts.continuation_prompt(params.prompts, prompt, text)
    head_text = await backend.detokenize(head)
    carry_text = await backend.detokenize(carry) if carry else ""
    return None, prompts.continuation_prompt(params.prompts, prompt, carry_text, head=head_text)


async def generate_candidate(
    backend: Backend,
    store: JobStore,
    job: Job,
    task: Task,
    parents: Sequence[Candidate],
    priority: int | None = None,
) -> Candidate:
    """Generate one candidate of ``task`` from its ``parents`` (in the task's order): in chunks,
    checkpointed, when the job sets ``chunk``; then cut its tail.

    The selection call (``task.kind == "select"``) takes the same path as one request of ``budget``
    tokens, unchunked, and gets no tail: no round reads it, its answer is the job's.

    With tail_mode ``summarize`` the tail is a summary the model writes (one more call, counted in
    the candidate's usage and apart in ``summary_usage``) wherever a later call reads the tail."""
    started_at = time.time()
    params = job.spec.params
    select = task.kind == "select"
    prompt = build_prompt(params, job.spec.problem, parents)
    if params.chunk is None or select:
        user = [Message(role="user", content=prompt)]
        budget = params.stage_budget(task.round)
        result = (await backend.generate(_request(job, task, user, budget, priority=priority)))[0]
        trace, ids, finish, chunks = result.trace, result.token_ids, result.finish_reason, 1
        usage = usage_of(result)
        reasoning, content = result.reasoning, result.content
    else:
        trace, ids, usage, finish, chunks = await _generate_chunked(
            backend, store, job, task, prompt, priority
        )
        reasoning, content = split_trace(trace)
    finished = finish == "stop"
    source = tail_source_text(trace, finished, params.tail_source)
    summary_usage = Usage()
    if select:
        tail = NO_TAIL
    elif summarises(params, task):
        summary = await summarise(backend, job, task, source, ids, priority)
        tail, summary_usage = summary.tail, summary.usage
        usage = usage + summary_usage
    else:
        tail = await make_tail(backend, source, params.tail, ids)
    return Candidate(
        round=task.round,
        index=task.index,
        parents=list(task.parents),
        prompt=prompt,
        reasoning=reasoning,
        content=content,
        trace=trace,
        finish_reason=finish,
        answer=extract_answer(content, trace, finished),
        usage=usage,
        summary_usage=summary_usage,
        chunks=chunks,
        tail=tail.text,
        tail_tokens=tail.tokens,
        source_tokens=tail.source_tokens,
        started_at=started_at,
    )
