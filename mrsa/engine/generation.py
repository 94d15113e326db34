"""Generating one candidate: build its prompt, call the backend (in Delethink chunks when
``chunk`` is set, checkpointing after each), and cut its tail. The final selection call is a
candidate too (``Task.kind == "select"``) and goes through the same path."""

from __future__ import annotations

from collections.abc import Sequence

from mrsa.backends.base import Backend, GenerationRequest, Message
from mrsa.domain import Candidate, ChunkCheckpoint, FinishReason, Job, Task, Usage
from mrsa.engine import prompts
from mrsa.engine.answers import extract_answer
from mrsa.engine.planning import lineage_key, request_seed
from mrsa.engine.tails import Tail, cut_tail, make_tail, split_trace, tail_source_text
from mrsa.params import RSAParams
from mrsa.store.base import JobStore

NO_TAIL = Tail(text="", tokens=0, source_tokens=0)


class MissingParentsError(RuntimeError):
    """A task names parents whose candidates are not stored (a broken round invariant)."""


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
    sampling, in the job's model (None: the backend's own). The selection call is tagged
    ``kind: select`` and samples at ``aggregate_temperature``."""
    params = job.spec.params
    tag: dict[str, str | int] = {"job": job.id, "round": task.round, "index": task.index, "chunk": chunk}
    temperature = params.sampling.temperature
    if task.kind == "select":
        tag["kind"] = "select"
        temperature = params.aggregate_temperature
    return GenerationRequest(
        messages=messages,
        prefill=prefill,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=params.sampling.top_p,
        top_k=params.sampling.top_k,
        seed=request_seed(params.seed, task.round, task.index, chunk),
        tag=tag,
        lineage=lineage_key(task),
        priority=priority,
        model=job.spec.model,
    )


async def _generate_chunked(
    backend: Backend, store: JobStore, job: Job, task: Task, prompt: str, priority: int | None
) -> tuple[str, list[int] | None, Usage, FinishReason, int]:
    """Delethink: chunks of at most ``chunk`` tokens; each continues from the prompt plus the last
    ``carryover`` tokens of the candidate's own output. Returns (trace, ids, usage, finish, chunks)."""
    params = job.spec.params
    assert params.chunk is not None
    cp = await store.load_checkpoint(job.id, task.round, task.index)
    text = cp.text if cp else ""
    ids: list[int] | None = cp.token_ids if cp else None
    usage = cp.usage if cp else Usage()
    chunks = cp.chunks if cp else 0
    finish: FinishReason = cp.finish_reason if cp else "length"
    # ceil(β / chunk) requests at most, even when a server under-reports (or omits) its usage.
    max_chunks = -(-params.budget // params.chunk)
    while chunks == 0 or (finish == "length" and usage.decode_tokens < params.budget and chunks < max_chunks):
        max_tokens = min(params.chunk, params.budget - usage.decode_tokens)
        user = [Message(role="user", content=prompt)]
        prefill: str | None = None
        if chunks > 0:
            own = ids if ids is not None else await backend.tokenize(text)
            carry = (
                await backend.detokenize(cut_tail(own, params.carryover_tokens))
                if params.carryover_tokens
                else ""
            )
            if backend.supports_prefill:
                prefill = carry
            else:
                user = [
                    Message(role="user", content=prompts.continuation_prompt(params.prompts, prompt, carry))
                ]
        req = _request(job, task, user, max_tokens, chunks, prefill=prefill, priority=priority)
        last = (await backend.generate(req))[0]
        text += last.trace
        if chunks == 0:
            ids = last.token_ids
        elif ids is not None and last.token_ids is not None:
            ids = ids + last.token_ids
        else:
            ids = None  # some chunk came without ids: fall back to tokenizing the text
        usage = usage + Usage(
            decode_tokens=last.completion_tokens, prompt_tokens=last.prompt_tokens, requests=1
        )
        chunks += 1
        finish = last.finish_reason
        await store.save_checkpoint(
            job.id,
            task.round,
            task.index,
            ChunkCheckpoint(chunks=chunks, text=text, token_ids=ids, usage=usage, finish_reason=finish),
        )
    return text, ids, usage, finish, chunks


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
    tokens, unchunked, and gets no tail: no round reads it, its answer is the job's."""
    params = job.spec.params
    select = task.kind == "select"
    prompt = build_prompt(params, job.spec.problem, parents)
    if params.chunk is None or select:
        user = [Message(role="user", content=prompt)]
        result = (await backend.generate(_request(job, task, user, params.budget, priority=priority)))[0]
        trace, ids, finish, chunks = result.trace, result.token_ids, result.finish_reason, 1
        usage = Usage(decode_tokens=result.completion_tokens, prompt_tokens=result.prompt_tokens, requests=1)
        reasoning, content = result.reasoning, result.content
    else:
        trace, ids, usage, finish, chunks = await _generate_chunked(
            backend, store, job, task, prompt, priority
        )
        reasoning, content = split_trace(trace)
    finished = finish == "stop"
    tail = (
        NO_TAIL
        if select
        else await make_tail(backend, tail_source_text(trace, finished, params.tail_source), params.tail, ids)
    )
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
        chunks=chunks,
        tail=tail.text,
        tail_tokens=tail.tokens,
        source_tokens=tail.source_tokens,
    )
