"""Generating one candidate: build its prompt, call the backend (in Delethink chunks when
``chunk`` is set, checkpointing after each), and cut its tail."""

from __future__ import annotations

from collections.abc import Sequence

from mrsa.backends.base import Backend, GenerationRequest, GenerationResult, Message
from mrsa.domain import Candidate, ChunkCheckpoint, FinishReason, Task, Usage
from mrsa.engine import prompts
from mrsa.engine.answers import extract_answer
from mrsa.engine.planning import request_seed
from mrsa.engine.tails import cut_tail, make_tail, split_trace, tail_source_text
from mrsa.params import RSAParams
from mrsa.store.base import JobStore


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
    params: RSAParams,
    messages: list[Message],
    max_tokens: int,
    seed: int,
    tag: dict[str, str | int],
    *,
    temperature: float | None = None,
    prefill: str | None = None,
    priority: int | None = None,
    model: str | None = None,
) -> GenerationRequest:
    return GenerationRequest(
        messages=messages,
        prefill=prefill,
        max_tokens=max_tokens,
        temperature=params.sampling.temperature if temperature is None else temperature,
        top_p=params.sampling.top_p,
        top_k=params.sampling.top_k,
        seed=seed,
        tag=tag,
        priority=priority,
        model=model,
    )


async def _generate_chunked(
    backend: Backend,
    store: JobStore,
    job_id: str,
    params: RSAParams,
    task: Task,
    prompt: str,
    priority: int | None,
    model: str | None,
) -> tuple[str, list[int] | None, Usage, FinishReason, int, GenerationResult | None]:
    """Delethink: chunks of at most ``chunk`` tokens; each continues from the prompt plus the last
    ``carryover`` tokens of the candidate's own output. Returns (trace, ids, usage, finish, chunks,
    last result)."""
    assert params.chunk is not None
    cp = await store.load_checkpoint(job_id, task.round, task.index)
    text = cp.text if cp else ""
    ids: list[int] | None = cp.token_ids if cp else None
    usage = cp.usage if cp else Usage()
    chunks = cp.chunks if cp else 0
    finish: FinishReason = cp.finish_reason if cp else "length"
    last: GenerationResult | None = None
    # ceil(β / chunk) requests at most, even when a server under-reports (or omits) its usage.
    max_chunks = -(-params.budget // params.chunk)
    while chunks == 0 or (finish == "length" and usage.decode_tokens < params.budget and chunks < max_chunks):
        max_tokens = min(params.chunk, params.budget - usage.decode_tokens)
        tag: dict[str, str | int] = {"job": job_id, "round": task.round, "index": task.index, "chunk": chunks}
        seed = request_seed(params.seed, task.round, task.index, chunks)
        user = [Message(role="user", content=prompt)]
        if chunks == 0:
            req = _request(params, user, max_tokens, seed, tag, priority=priority, model=model)
        else:
            own = ids if ids is not None else await backend.tokenize(text)
            carry = (
                await backend.detokenize(cut_tail(own, params.carryover_tokens))
                if params.carryover_tokens
                else ""
            )
            if backend.supports_prefill:
                req = _request(
                    params, user, max_tokens, seed, tag, prefill=carry, priority=priority, model=model
                )
            else:
                cont = prompts.continuation_prompt(params.prompts, prompt, carry)
                req = _request(
                    params,
                    [Message(role="user", content=cont)],
                    max_tokens,
                    seed,
                    tag,
                    priority=priority,
                    model=model,
                )
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
            job_id,
            task.round,
            task.index,
            ChunkCheckpoint(chunks=chunks, text=text, token_ids=ids, usage=usage, finish_reason=finish),
        )
    return text, ids, usage, finish, chunks, last


async def generate_candidate(
    backend: Backend,
    store: JobStore,
    job_id: str,
    problem: str,
    params: RSAParams,
    task: Task,
    parents: Sequence[Candidate],
    priority: int | None = None,
    model: str | None = None,
) -> Candidate:
    """Generate, checkpoint (when chunked) and tail one candidate of ``task`` from its ``parents``
    (in the task's order). ``model`` is the job's model id, asked of the server in every request
    (None: the backend's own)."""
    prompt = build_prompt(params, problem, parents)
    if params.chunk is None:
        tag: dict[str, str | int] = {"job": job_id, "round": task.round, "index": task.index, "chunk": 0}
        seed = request_seed(params.seed, task.round, task.index)
        req = _request(
            params,
            [Message(role="user", content=prompt)],
            params.budget,
            seed,
            tag,
            priority=priority,
            model=model,
        )
        result = (await backend.generate(req))[0]
        trace, ids, finish, chunks = result.trace, result.token_ids, result.finish_reason, 1
        usage = Usage(decode_tokens=result.completion_tokens, prompt_tokens=result.prompt_tokens, requests=1)
        reasoning, content = result.reasoning, result.content
    else:
        trace, ids, usage, finish, chunks, _ = await _generate_chunked(
            backend, store, job_id, params, task, prompt, priority, model
        )
        reasoning, content = split_trace(trace)
    finished = finish == "stop"
    source = tail_source_text(trace, finished, params.tail_source)
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
        chunks=chunks,
        tail=tail.text,
        tail_tokens=tail.tokens,
        source_tokens=tail.source_tokens,
    )
