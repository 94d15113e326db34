"""The engine end to end on the fake backend and the memory store: rounds, prompts, redelivery,
selection, usage, chunked generation with checkpoints, failures, cancellation, determinism."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Sequence
from functools import partial
from string import Template
from typing import Any

import pytest

from mrsa.backends.base import (
    BackendError,
    BackendRequestError,
    BackendUnavailable,
    GenerationRequest,
)
from mrsa.domain import Candidate, ChunkCheckpoint, Event, JobResult, JobSpec, JobStatus, Task
from mrsa.engine import prompts
from mrsa.engine.generation import MissingParentsError
from mrsa.engine.job_service import JobService
from mrsa.engine.limits import ContextBudgetError, check_context
from mrsa.engine.planning import plan_subsets, request_seed, select_round, selection_subset
from mrsa.engine.runner import TaskRunner
from mrsa.params import RSAParams
from mrsa.store.memory import MemoryStore
from tests.fakes import FakeBackend
from tests.support.builders import job_spec
from workers.inprocess import InProcessRunner
from workers.loop import WorkerOptions

PROBLEM = "Find $x$ such that $x + 1 = 43$. Give $x$."
ATTEMPT = re.compile(r"<attempt (\d+)>\n(.*?)\n</attempt \1>", re.DOTALL)
TIMEOUT = 10.0


def attempt_text(tag: dict[str, str | int], answer: str = "42") -> str:
    """~40 fake tokens; the last 16 name the request, so every tail is distinct."""
    return (
        "Let me think about it step by step. "
        f"Attempt r{tag.get('round')} i{tag.get('index')} c{tag.get('chunk')} concludes \\boxed{{{answer}}}"
    )


def script(request: GenerationRequest) -> str:
    if request.tag.get("kind") == "select":
        return "Having compared the attempts, \\boxed{99}"
    return attempt_text(request.tag)


PARAMS: dict[str, Any] = {"population": 4, "subset": 2, "rounds": 2, "budget": 64, "tail": 16, "seed": 11}
make_spec = partial(job_spec, PROBLEM, PARAMS, "fake")


def make_params(**overrides: Any) -> RSAParams:
    return make_spec(**overrides).params


def fast_options() -> WorkerOptions:
    """Short periods; no backend hold, so a backend error fails its job at once (the hold is
    tested in tests/hostile/test_backend_outage.py)."""
    return WorkerOptions(
        block_ms=20, cancel_check_s=0.01, heartbeat_s=0.05, shutdown_grace_s=2.0, backend_hold_s=0.0
    )


class RecordingStore(MemoryStore):
    """Records every task ever enqueued and every checkpoint write. The store is its own queue:
    tests name it ``queue`` where they use it as one (``store = queue = RecordingStore()``)."""

    def __init__(self) -> None:
        super().__init__()
        self.enqueued: list[Task] = []
        self.checkpoints: list[tuple[int, int, ChunkCheckpoint]] = []

    async def enqueue(self, tasks: Sequence[Task]) -> None:
        self.enqueued.extend(tasks)
        await super().enqueue(tasks)

    async def save_checkpoint(self, job_id: str, round_index: int, index: int, cp: ChunkCheckpoint) -> None:
        self.checkpoints.append((round_index, index, cp.model_copy(deep=True)))
        await super().save_checkpoint(job_id, round_index, index, cp)


async def drive(runner: TaskRunner, queue: MemoryStore) -> list[Task]:
    """A manual, sequential worker: run every queued task (FIFO) until none is left."""
    ran: list[Task] = []
    while True:
        got = await queue.take("test", 100, block_ms=0)
        if not got:
            return ran
        for delivery in got:
            await runner.run_task(delivery.task)
            await queue.ack(delivery)
            ran.append(delivery.task)


async def run_job(
    backend: FakeBackend, spec: JobSpec, capacity: int = 1
) -> tuple[JobResult, RecordingStore, RecordingStore]:
    store = queue = RecordingStore()
    async with InProcessRunner(backend, store, capacity=capacity, options=fast_options()) as runner:
        result = await asyncio.wait_for(runner.solve(spec), TIMEOUT)
    return result, store, queue


async def all_candidates(store: MemoryStore, job_id: str, rounds: int) -> list[list[Candidate]]:
    return [await store.get_candidates(job_id, r) for r in range(rounds + 1)]


async def events_of(store: MemoryStore, job_id: str) -> list[Event]:
    return [e for _, e in await store.read_events(job_id, None, block_ms=0, count=10_000)]


def template(name: str) -> Template:
    return Template((prompts.prompts_root() / "v1" / f"{name}.txt").read_text(encoding="utf-8").rstrip("\n"))


def user_prompt(request: GenerationRequest) -> str:
    assert len(request.messages) == 1 and request.messages[0].role == "user"
    return request.messages[0].content


# -- the shape of a job -----------------------------------------------------------------------------


@pytest.mark.parametrize("capacity", [1, 3])
async def test_rounds_parents_and_prompts(capacity: int) -> None:
    backend = FakeBackend(script)
    spec = make_spec(population=5, subset=3, rounds=2)
    result, store, _ = await run_job(backend, spec, capacity)
    n, k, t = 5, 3, 2

    assert result.status == JobStatus.succeeded
    assert result.answer == "42"
    assert len(backend.calls) == n * (t + 1)
    assert [r.index for r in result.rounds] == [0, 1, 2]
    assert all(len(r.candidates) == n for r in result.rounds)
    rounds = await all_candidates(store, result.job_id, t)
    assert [[c.index for c in cands] for cands in rounds] == [list(range(n))] * (t + 1)

    by_tag = {(r.tag["round"], r.tag["index"]): r for r in backend.requests}
    for cand in rounds[0]:
        assert cand.parents == []
        assert cand.prompt == template("round0").substitute(problem=PROBLEM)
        assert user_prompt(by_tag[(0, cand.index)]) == cand.prompt
    assert len({c.prompt for c in rounds[0]}) == 1  # round-0 prompts are identical

    for r in range(1, t + 1):
        planned = plan_subsets(spec.params.seed, r, n, k, n)
        for cand in rounds[r]:
            assert cand.parents == planned[cand.index]
            assert len(set(cand.parents)) == k
            assert all(0 <= p < n for p in cand.parents)
            parents = {c.index: c for c in rounds[r - 1]}
            shown = ATTEMPT.findall(cand.prompt)
            # Exactly the parents' tails, in the planned order, numbered 1..K, and nothing else.
            assert shown == [(str(i + 1), parents[p].tail) for i, p in enumerate(cand.parents)]
            assert cand.prompt.count("<attempt ") == k
            assert cand.prompt.startswith(PROBLEM + "\n\n")
            assert user_prompt(by_tag[(r, cand.index)]) == cand.prompt
            for p in cand.parents:  # each tail names its own parent (the fake writes r/i into it)
                assert f"r{r - 1} i{p} " in parents[p].tail

    # Every prompt of the job starts with the same bytes: the problem (prefix caching).
    assert all(user_prompt(req).startswith(PROBLEM + "\n\n") for req in backend.requests)


async def test_a_candidate_starts_when_its_own_parents_are_stored() -> None:
    """No round barrier: round-1 candidates whose parents exclude a slow round-0 candidate run
    while it is still generating, and the job's prompts are those of a round-by-round run."""
    slow = asyncio.Event()

    async def held(request: GenerationRequest) -> None:
        if request.tag.get("round") == 0 and request.tag.get("index") == 0:
            await slow.wait()

    spec = make_spec(population=6, subset=2, rounds=2)
    planned = plan_subsets(spec.params.seed, 1, 6, 2, 6)
    free = [i for i, parents in enumerate(planned) if 0 not in parents]
    assert free, "the plan must have round-1 candidates that do not need candidate 0"
    backend = FakeBackend(script, capacity=6)
    backend.before_answer = held
    store = RecordingStore()
    async with InProcessRunner(backend, store, capacity=8, options=fast_options()) as runner:
        job = await runner.submit(spec)
        await wait_until(lambda: len([c for c in backend.calls if c.request.tag["round"] == 1]) >= len(free))
        started = sorted(c.request.tag["index"] for c in backend.calls if c.request.tag["round"] == 1)
        assert started == free  # exactly those, before round 0 is complete
        assert (await store.get_job(job.id)).round == 0  # type: ignore[union-attr]
        slow.set()
        result = await asyncio.wait_for(runner.wait(job.id), TIMEOUT)
    assert result.status == JobStatus.succeeded and [r.index for r in result.rounds] == [0, 1, 2]
    events = await events_of(store, job.id)
    assert [e.round for e in events if e.type == "round"] == [1, 2]  # in order, once each
    # Same prompts as the sequential run on the same seed.
    sequential = FakeBackend(script)
    reference, _, _ = await run_job(sequential, spec)
    assert sorted(user_prompt(r) for r in backend.requests) == sorted(
        user_prompt(r) for r in sequential.requests
    )
    assert reference.answer == result.answer


async def test_tails_are_the_last_tau_tokens_of_each_candidate() -> None:
    backend = FakeBackend(script)
    result, store, _ = await run_job(backend, make_spec(rounds=1, tail=16))
    tok = backend.tokenizer
    for cands in await all_candidates(store, result.job_id, 1):
        for c in cands:
            ids = tok.encode(c.trace)
            assert c.source_tokens == len(ids) == c.usage.decode_tokens
            assert c.tail_tokens == 16
            assert c.tail == tok.decode(ids[-16:])
            assert c.trace.endswith(c.tail)


async def test_k1_uses_the_single_attempt_template() -> None:
    backend = FakeBackend(script)
    result, store, _ = await run_job(backend, make_spec(population=3, subset=1, rounds=1))
    round0, round1 = await all_candidates(store, result.job_id, 1)
    single, block = template("aggregate_single"), template("candidate")
    for cand in round1:
        (parent,) = cand.parents
        expected = single.substitute(
            problem=PROBLEM, k=1, candidates=block.substitute(number=1, tail=round0[parent].tail)
        )
        assert cand.prompt == expected
        assert "independent attempts" not in cand.prompt
    assert result.status == JobStatus.succeeded


async def test_t0_is_parallel_sampling_with_majority() -> None:
    def answers(request: GenerationRequest) -> str:
        return attempt_text(request.tag, answer="8" if request.tag["index"] == 2 else "7")

    backend = FakeBackend(answers)
    result, _, _ = await run_job(backend, make_spec(population=3, subset=2, rounds=0))
    assert result.status == JobStatus.succeeded
    assert len(backend.calls) == 3
    assert {r.tag["round"] for r in backend.requests} == {0}
    assert len(result.rounds) == 1
    assert result.answer == "7"  # self-consistency
    assert [(v.answer, v.count) for v in result.votes] == [("7", 2), ("8", 1)]
    assert result.answers == ["7", "7", "8"]
    assert all("<attempt" not in user_prompt(r) for r in backend.requests)


async def test_tail_ge_budget_is_full_chain_rsa() -> None:
    backend = FakeBackend(script)
    result, store, _ = await run_job(backend, make_spec(budget=64, tail=64, rounds=1))
    round0, round1 = await all_candidates(store, result.job_id, 1)
    for c in round0:
        assert c.tail == c.trace
        assert c.tail_tokens == c.source_tokens == c.usage.decode_tokens
    for c in round1:
        assert [t for _, t in ATTEMPT.findall(c.prompt)] == [round0[p].trace for p in c.parents]


async def test_reasoning_split_trace_and_tail_source() -> None:
    def thinking(request: GenerationRequest) -> str:
        tag = request.tag
        return f"hmm r{tag['round']} i{tag['index']} thinking</think>The answer is \\boxed{{5}}"

    backend = FakeBackend(thinking, split_reasoning=True)
    result, store, _ = await run_job(backend, make_spec(rounds=1, tail_source="reasoning", tail=32))
    assert result.answer == "5"
    for cands in await all_candidates(store, result.job_id, 1):
        for c in cands:
            assert c.reasoning == f"hmm r{c.round} i{c.index} thinking"
            assert c.content == "The answer is \\boxed{5}"
            assert c.trace == f"{c.reasoning}</think>{c.content}"
            assert c.tail == c.reasoning  # cut from the reasoning only
            assert c.source_tokens == len(backend.tokenizer.encode(c.reasoning))


async def test_returned_token_ids_are_used_for_tails() -> None:
    backend = FakeBackend(script, return_token_ids=True)
    result, store, _ = await run_job(backend, make_spec(rounds=1))
    assert result.status == JobStatus.succeeded
    assert backend.tokenizer.tokenize_calls == 0  # no round trip through /tokenize
    for c in (await all_candidates(store, result.job_id, 1))[0]:
        assert c.tail_tokens == 16
        assert c.trace.endswith(c.tail)


async def test_events_tell_the_story() -> None:
    backend = FakeBackend(script)
    result, store, _ = await run_job(backend, make_spec(population=3, rounds=1))
    events = await events_of(store, result.job_id)
    assert [(e.type, e.status) for e in events[:2]] == [
        ("status", JobStatus.queued),
        ("status", JobStatus.running),
    ]
    candidates = [e for e in events if e.type == "candidate"]
    assert [(e.round, e.done) for e in candidates] == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)]
    assert all(e.answer == "42" and e.finish_reason == "stop" and e.decode_tokens for e in candidates)
    # each candidate event names the parents whose tails were in its prompt (the console's edges)
    stored = await all_candidates(store, result.job_id, 1)
    assert [e.parents for e in candidates] == [stored[e.round][e.index].parents for e in candidates]
    assert all(e.parents == [] for e in candidates[:3]) and all(
        len(e.parents or ()) == 2 for e in candidates[3:]
    )
    assert [e.round for e in events if e.type == "round"] == [1]
    done = [e for e in events if e.type == "done"]
    assert len(done) == 1 and done[0].status == JobStatus.succeeded and done[0].answer == "42"
    assert events[-1].type == "done"


# -- redelivery and concurrency ---------------------------------------------------------------------


async def test_redelivered_tasks_do_not_duplicate_anything() -> None:
    store = queue = RecordingStore()
    backend = FakeBackend(script)
    runner = TaskRunner(JobService(store), backend)
    job = await runner.jobs.submit(make_spec(population=3, subset=2, rounds=1))
    deliveries = await queue.take("w", 10, block_ms=0)
    tasks = [d.task for d in deliveries]
    assert [t.index for t in tasks] == [0, 1, 2]

    planned = plan_subsets(job.spec.params.seed, 1, 3, 2, 3)

    def released_for(done: set[int]) -> list[tuple[int, int]]:
        return [(1, i) for i, parents in enumerate(planned) if set(parents) <= done]

    await runner.run_task(tasks[0])
    await runner.run_task(tasks[1])
    await runner.run_task(tasks[1])  # a redelivered task in the middle of a round
    assert len(backend.calls) == 2
    # Only the round-1 tasks whose two parents are stored, once each.
    assert [(t.round, t.index) for t in queue.enqueued[3:]] == released_for({0, 1})
    assert (await store.get_job(job.id)).round == 0  # type: ignore[union-attr]

    await runner.run_task(tasks[2])  # the last one: releases the rest of round 1
    before = (await store.get_candidates(job.id, 0))[2]
    await runner.run_task(tasks[2])  # redelivered last one: no new call, nothing released twice
    await runner.run_task(tasks[0])
    assert len(backend.calls) == 3
    assert (await store.get_candidates(job.id, 0))[2] == before
    assert len(await store.get_candidates(job.id, 0)) == 3
    assert sorted((t.round, t.index) for t in queue.enqueued) == [
        (0, 0),
        (0, 1),
        (0, 2),
        (1, 0),
        (1, 1),
        (1, 2),
    ]
    assert (await store.get_job(job.id)).round == 1  # type: ignore[union-attr]
    for d in deliveries:
        await queue.ack(d)

    round1 = [d.task for d in await queue.take("w", 10, block_ms=0)]
    for task in round1:
        await runner.run_task(task)
    result = await store.get_result(job.id)
    assert result is not None and result.status == JobStatus.succeeded
    # Redelivering the job's very last task after it finished changes nothing.
    await runner.run_task(round1[-1])
    await runner.run_task(round1[0])
    assert len(backend.calls) == 6
    assert await store.get_result(job.id) == result
    events = await events_of(store, job.id)
    assert [e.type for e in events].count("done") == 1
    assert [e.type for e in events].count("round") == 1
    assert [e.type for e in events].count("candidate") == 6
    assert len(queue.enqueued) == 6


async def wait_until(predicate: Any, limit: float = TIMEOUT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


async def test_concurrent_completion_of_the_last_two_candidates_plans_once() -> None:
    store = queue = RecordingStore()
    gate = asyncio.Event()
    backend = FakeBackend(script, gate=gate)
    runner = TaskRunner(JobService(store), backend)
    job = await runner.jobs.submit(make_spec(population=3, subset=2, rounds=1))
    tasks = [d.task for d in await queue.take("w", 10, block_ms=0)]
    gate.set()
    await runner.run_task(tasks[0])
    gate.clear()
    both = asyncio.gather(runner.run_task(tasks[1]), runner.run_task(tasks[2]))
    await wait_until(lambda: backend.in_flight == 2)
    gate.set()
    await asyncio.wait_for(both, TIMEOUT)
    assert [(t.round, t.index) for t in queue.enqueued].count((1, 0)) == 1
    assert len(queue.enqueued) == 6
    assert (await store.get_job(job.id)).round == 1  # type: ignore[union-attr]


async def test_duplicate_concurrent_deliveries_of_the_last_task_plan_once() -> None:
    """Both copies generate and both see the round complete; the compare-and-set lets one plan."""
    store = queue = RecordingStore()
    gate = asyncio.Event()
    backend = FakeBackend(script, gate=gate)
    runner = TaskRunner(JobService(store), backend)
    job = await runner.jobs.submit(make_spec(population=2, subset=1, rounds=1))
    tasks = [d.task for d in await queue.take("w", 10, block_ms=0)]
    gate.set()
    await runner.run_task(tasks[0])
    gate.clear()
    dup = asyncio.gather(runner.run_task(tasks[1]), runner.run_task(tasks[1]))
    await wait_until(lambda: backend.in_flight == 2)
    gate.set()
    await asyncio.wait_for(dup, TIMEOUT)
    assert len(backend.calls) == 3
    assert len(await store.get_candidates(job.id, 0)) == 2
    assert len(queue.enqueued) == 4  # round 0 (2) + round 1 (2), once

    # The same at the end of the last round: the job finishes once.
    round1 = [d.task for d in await queue.take("w", 10, block_ms=0)]
    await runner.run_task(round1[0])
    gate.clear()
    dup = asyncio.gather(runner.run_task(round1[1]), runner.run_task(round1[1]))
    await wait_until(lambda: backend.in_flight == 2)
    gate.set()
    await asyncio.wait_for(dup, TIMEOUT)
    assert [e.type for e in await events_of(store, job.id)].count("done") == 1
    assert (await store.get_job(job.id)).status == JobStatus.succeeded  # type: ignore[union-attr]


async def test_task_of_a_terminal_or_unknown_job_is_a_no_op() -> None:
    store = RecordingStore()
    backend = FakeBackend(script)
    runner = TaskRunner(JobService(store), backend)
    job = await runner.jobs.submit(make_spec())
    await store.cancel_job(job.id)
    await runner.run_task(Task(job_id=job.id, round=0, index=0))
    await runner.run_task(Task(job_id="unknown", round=0, index=0))
    assert backend.calls == []
    assert await store.get_candidates(job.id, 0) == []


async def test_missing_parents_are_an_error() -> None:
    store = RecordingStore()
    runner = TaskRunner(JobService(store), FakeBackend(script))
    job = await runner.jobs.submit(make_spec())
    with pytest.raises(MissingParentsError, match=r"\[1, 3\]"):
        await runner.run_task(Task(job_id=job.id, round=1, index=0, parents=[1, 3]))


# -- selection --------------------------------------------------------------------------------------


@pytest.mark.parametrize("rounds", [0, 1])
async def test_selection_aggregate(rounds: int) -> None:
    backend = FakeBackend(script)
    spec = make_spec(population=4, subset=2, rounds=rounds, selection="aggregate", aggregate_temperature=0.3)
    result, store, _ = await run_job(backend, spec)
    n = 4
    assert result.status == JobStatus.succeeded
    assert len(backend.calls) == n * (rounds + 1) + 1
    selects = backend.requests_for(kind="select")
    assert len(selects) == 1
    select = selects[0]
    assert select.temperature == 0.3
    assert {r.temperature for r in backend.requests if r is not select} == {spec.params.sampling.temperature}
    assert select.seed == request_seed(spec.params.seed, rounds + 1, 0)
    last = {c.index: c for c in await store.get_candidates(result.job_id, rounds)}
    parents = selection_subset(spec.params)
    assert [t for _, t in ATTEMPT.findall(user_prompt(select))] == [last[p].tail for p in parents]
    assert user_prompt(select).startswith(PROBLEM + "\n\n")
    # The aggregate's answer wins over the population's majority (42).
    assert result.answer == "99"
    assert [v.answer for v in result.votes] == ["42"]
    assert result.selection == "aggregate"
    assert len(result.rounds) == rounds + 1  # the selection call is not a round
    # Its usage counts in the job's total.
    rounds_usage = sum(r.usage.decode_tokens for r in result.rounds)
    assert result.usage.decode_tokens == rounds_usage + backend.calls[-1].results[0].completion_tokens  # type: ignore[index]
    assert result.usage.requests == len(backend.calls)


async def test_selection_aggregate_without_an_answer_falls_back_to_majority() -> None:
    def no_box(request: GenerationRequest) -> str:
        return "I cannot decide." if request.tag.get("kind") == "select" else attempt_text(request.tag)

    result, _, _ = await run_job(FakeBackend(no_box), make_spec(rounds=0, selection="aggregate"))
    assert result.answer == "42"


async def test_selection_is_one_unchunked_request_without_a_tail() -> None:
    """The selection call goes through the candidates' generation path, but as one request of β
    tokens even in a chunked job, and keeps no tail (no round reads it)."""
    backend = FakeBackend(script)
    spec = make_spec(rounds=1, selection="aggregate", budget=64, chunk=32, carryover=4)
    result, store, _ = await run_job(backend, spec)
    (select,) = backend.requests_for(kind="select")
    assert select.max_tokens == spec.params.budget and select.prefill is None
    assert select.tag == {"job": result.job_id, "round": 2, "index": 0, "chunk": 0, "kind": "select"}
    (chosen,) = await store.get_candidates(result.job_id, select_round(spec.params))
    assert chosen.chunks == 1 and chosen.tail == "" and chosen.tail_tokens == 0
    assert chosen.parents == selection_subset(spec.params) and chosen.answer == result.answer == "99"


async def test_selection_population_returns_every_answer() -> None:
    def by_index(request: GenerationRequest) -> str:
        return attempt_text(request.tag, answer=str(10 + int(request.tag["index"])))

    result, _, _ = await run_job(FakeBackend(by_index), make_spec(rounds=1, selection="population"))
    assert result.selection == "population"
    assert result.answers == ["10", "11", "12", "13"]
    assert sum(v.count for v in result.votes) == 4


# -- usage ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [None, 20])
async def test_usage_adds_up_per_round_and_per_job(chunk: int | None) -> None:
    def long(request: GenerationRequest) -> str:  # some candidates truncate, some finish
        tag = request.tag
        filler = " word" * (30 if int(tag["index"]) % 2 else 1)
        return f"r{tag['round']} i{tag['index']}{filler} \\boxed{{42}}"

    backend = FakeBackend(long)
    extra = {"chunk": chunk, "carryover": 4} if chunk else {}
    result, store, _ = await run_job(backend, make_spec(rounds=2, selection="aggregate", **extra))
    total_decode = total_prompt = 0
    for summary in result.rounds:
        cands = await store.get_candidates(result.job_id, summary.index)
        decode = sum(c.usage.decode_tokens for c in cands)
        prompt = sum(c.usage.prompt_tokens for c in cands)
        assert summary.usage.decode_tokens == decode == sum(c.decode_tokens for c in summary.candidates)
        assert summary.usage.prompt_tokens == prompt == sum(c.prompt_tokens for c in summary.candidates)
        assert summary.usage.requests == sum(c.usage.requests for c in cands)
        assert summary.truncated == sum(1 for c in cands if c.finish_reason == "length")
        total_decode += decode
        total_prompt += prompt
    (select,) = await store.get_candidates(result.job_id, 3)
    total_decode += select.usage.decode_tokens
    total_prompt += select.usage.prompt_tokens
    assert result.usage.decode_tokens == total_decode
    assert result.usage.prompt_tokens == total_prompt
    # ... and agree with what the backend actually reported.
    assert result.usage.decode_tokens == sum(r.completion_tokens for r in backend.results)
    assert result.usage.prompt_tokens == sum(r.prompt_tokens for r in backend.results)
    assert result.usage.requests == len(backend.calls)
    assert result.usage.decode_tokens != result.usage.prompt_tokens
    assert any(s.truncated for s in result.rounds)


# -- chunked (Delethink) generation -----------------------------------------------------------------


def endless(request: GenerationRequest) -> str:
    """Never finishes: every request runs into max_tokens."""
    return f"[chunk {request.tag['chunk']} of i{request.tag['index']}]" + " and so on" * 200


def chunk_outputs(backend: FakeBackend, index: int) -> list[str]:
    calls = [c for c in backend.calls if c.request.tag["index"] == index and c.results]
    calls.sort(key=lambda c: int(c.request.tag["chunk"]))
    return [c.results[0].content for c in calls]  # type: ignore[index]


@pytest.mark.parametrize("head", [0, 3])
@pytest.mark.parametrize("prefill", [True, False])
@pytest.mark.parametrize("ids", [False, True])
async def test_chunked_generation(prefill: bool, ids: bool, head: int) -> None:
    """Each continuation holds the prompt, the first ``head`` tokens of chunk 0 and the last
    ``carryover`` tokens so far, token by token (head 0: the carry-over alone, as before heads)."""
    budget, chunk, carry = 25, 10, 4
    backend = FakeBackend(endless, supports_prefill=prefill, return_token_ids=ids)
    spec = make_spec(
        population=2, subset=1, rounds=0, budget=budget, tail=6, chunk=chunk, carryover=carry, head=head
    )
    result, store, _ = await run_job(backend, spec)
    tok = backend.tokenizer
    assert result.status == JobStatus.succeeded
    per_candidate = math.ceil(budget / chunk)
    assert len(backend.calls) == 2 * per_candidate
    for index, cand in enumerate(await store.get_candidates(result.job_id, 0)):
        requests = sorted(backend.requests_for(index=index), key=lambda r: int(r.tag["chunk"]))
        assert [r.tag["chunk"] for r in requests] == [0, 1, 2]
        assert [r.max_tokens for r in requests] == [10, 10, 5]
        assert [r.seed for r in requests] == [request_seed(spec.params.seed, 0, index, c) for c in range(3)]
        outputs = chunk_outputs(backend, index)
        assert cand.trace == "".join(outputs)
        assert cand.chunks == 3 and cand.finish_reason == "length"
        assert cand.usage.decode_tokens == budget and cand.usage.requests == 3
        first = user_prompt(requests[0])
        assert first == cand.prompt and requests[0].prefill is None
        head_ids = tok.encode(outputs[0])[:head]  # the first chunk's first tokens
        assert len(head_ids) == head
        for c in (1, 2):
            so_far = tok.encode("".join(outputs[:c]))
            carry_ids = so_far[-carry:]
            assert len(so_far) > head + carry  # a gap between head and carry-over
            expected_carry = tok.decode(carry_ids)
            if prefill:
                assert requests[c].prefill == tok.decode(head_ids + carry_ids)
                assert user_prompt(requests[c]) == first
            else:
                assert requests[c].prefill is None
                expected = prompts.continuation_prompt("v1", first, expected_carry, head=tok.decode(head_ids))
                assert user_prompt(requests[c]) == expected
                assert user_prompt(requests[c]).startswith(PROBLEM + "\n\n")
                if head == 0:  # the carry-over only: the continuation template of before heads
                    assert expected == prompts.continuation_prompt("v1", first, expected_carry)
        # Checkpointed after each chunk, the last one being the whole candidate.
        cps = [cp for r, i, cp in store.checkpoints if (r, i) == (0, index)]
        assert [cp.chunks for cp in cps] == [1, 2, 3]
        assert [cp.text for cp in cps] == ["".join(outputs[: c + 1]) for c in range(3)]
        assert [cp.usage.decode_tokens for cp in cps] == [10, 20, 25]
        assert cps[-1].token_ids == (tok.encode(cand.trace) if ids else None)
        assert cand.tail == tok.decode(tok.encode(cand.trace)[-6:])
    assert result.rounds[0].truncated == 2
    if ids:
        assert tok.tokenize_calls == 0  # carry-over and tails come from the returned ids


async def test_chunked_candidate_that_finishes_early() -> None:
    def finishes_in_chunk_1(request: GenerationRequest) -> str:
        if request.tag["chunk"] == 0:
            return "thinking" + " more" * 50
        return " done, \\boxed{7}"

    backend = FakeBackend(finishes_in_chunk_1)
    result, store, _ = await run_job(
        backend, make_spec(population=1, subset=1, rounds=0, budget=100, tail=8, chunk=10, carryover=3)
    )
    (cand,) = await store.get_candidates(result.job_id, 0)
    assert len(backend.calls) == 2
    assert cand.chunks == 2 and cand.finish_reason == "stop"
    assert cand.answer == result.answer == "7"
    assert cand.usage.decode_tokens == 10 + len(backend.tokenizer.encode(" done, \\boxed{7}"))


async def test_chunked_task_resumes_at_its_checkpoint_after_a_crash() -> None:
    store = queue = RecordingStore()
    backend = FakeBackend(endless, failures={2: BackendUnavailable("connection refused")})
    runner = TaskRunner(JobService(store), backend)
    spec = make_spec(population=1, subset=1, rounds=0, budget=30, tail=6, chunk=10, carryover=3, head=2)
    job = await runner.jobs.submit(spec)
    (delivery,) = await queue.take("w", 1, block_ms=0)

    with pytest.raises(BackendUnavailable):
        await runner.run_task(delivery.task)  # chunk 0 stored, chunk 1 crashed
    cp = await store.load_checkpoint(job.id, 0, 0)
    assert cp is not None and cp.chunks == 1
    first_chunk = backend.calls[0].results[0].content  # type: ignore[index]
    assert cp.text == first_chunk

    backend.supports_prefill = False  # e.g. redelivered to a worker on another server
    await runner.run_task(delivery.task)  # the redelivery resumes at chunk 1
    assert [c.request.tag["chunk"] for c in backend.calls] == [0, 1, 1, 2]
    tok = backend.tokenizer
    resumed = backend.calls[2].request
    carry = tok.decode(tok.encode(first_chunk)[-3:])
    head = tok.decode(tok.encode(first_chunk)[:2])
    assert resumed.prefill is None
    assert user_prompt(resumed) == prompts.continuation_prompt(
        "v1", user_prompt(backend.calls[0].request), carry, head=head
    )
    assert len(backend.requests_for(chunk=0)) == 1  # chunk 0 was not generated again
    (cand,) = await store.get_candidates(job.id, 0)
    assert cand.trace.startswith(first_chunk)
    assert cand.trace == "".join(c.results[0].content for c in backend.calls if c.results)
    assert cand.chunks == 3
    assert cand.usage.decode_tokens == 30 and cand.usage.requests == 3  # the failed call is not counted
    result = await store.get_result(job.id)
    assert result is not None and result.status == JobStatus.succeeded
    assert result.usage.decode_tokens == 30


async def test_chunked_generation_stops_when_the_server_reports_no_usage() -> None:
    """A server that does not report completion tokens (usage 0) must not make the chunk loop spin."""

    class NoUsage(FakeBackend):
        async def generate(self, request: GenerationRequest) -> list[Any]:
            results = await super().generate(request)
            return [r.model_copy(update={"completion_tokens": 0}) for r in results]

    backend = NoUsage(endless)
    spec = make_spec(population=1, subset=1, rounds=0, budget=30, tail=6, chunk=10, carryover=3)
    result, store, _ = await run_job(backend, spec)
    assert result.status == JobStatus.succeeded
    assert len(backend.calls) == 3  # ceil(β / chunk), never more
    (cand,) = await store.get_candidates(result.job_id, 0)
    assert cand.chunks == 3 and cand.finish_reason == "length"


# -- failures and cancellation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        BackendRequestError("context overflow: 9000 tokens > 8192"),
        BackendUnavailable("connection refused after 5 retries"),
    ],
)
async def test_backend_failure_fails_the_job_with_the_reason(error: BackendError) -> None:
    backend = FakeBackend(script, failures={3: error})
    store = RecordingStore()
    async with InProcessRunner(backend, store, capacity=2, options=fast_options()) as runner:
        result = await asyncio.wait_for(runner.solve(make_spec(rounds=1)), TIMEOUT)
        assert result.status == JobStatus.failed
        assert result.error == str(error)
        assert result.answer is None
        job = await store.get_job(result.job_id)
        assert job is not None and job.status == JobStatus.failed and job.error == str(error)
        # The runner is still usable afterwards.
        ok = await asyncio.wait_for(runner.solve(make_spec(rounds=0)), TIMEOUT)
        assert ok.status == JobStatus.succeeded
    assert len(backend.requests_for(job=result.job_id)) < 8  # round 1 never ran in full


async def test_a_crash_in_the_engine_fails_the_job() -> None:
    def broken(request: GenerationRequest) -> str:
        if request.tag["index"] == 1:
            raise RuntimeError("script exploded")
        return attempt_text(request.tag)

    result, _, _ = await run_job(FakeBackend(broken), make_spec(rounds=0))
    assert result.status == JobStatus.failed
    assert result.error == "RuntimeError: script exploded"


async def test_cancelling_a_job_mid_run_stops_it() -> None:
    gate = asyncio.Event()
    backend = FakeBackend(script, gate=gate)
    store = queue = RecordingStore()
    async with InProcessRunner(backend, store, capacity=2, options=fast_options()) as runner:
        job = await runner.submit(make_spec(population=4, rounds=2))
        await wait_until(lambda: backend.in_flight == 2)
        assert await store.cancel_job(job.id, "user pressed ^C") is True
        result = await asyncio.wait_for(runner.wait(job.id), TIMEOUT)
        assert result.status == JobStatus.cancelled
        assert result.error == "user pressed ^C"
        assert result.answer is None
        await wait_until(lambda: backend.in_flight == 0)  # the in-flight requests were cancelled
        gate.set()
        await asyncio.sleep(0.05)
    assert len(backend.calls) == 2
    assert all(c.cancelled for c in backend.calls)
    assert await store.get_candidates(job.id, 0) == []
    stats = await queue.stats()
    assert (stats.queued, stats.in_flight) == (0, 0)
    assert (await store.get_job(job.id)).status == JobStatus.cancelled  # type: ignore[union-attr]


async def test_cancelling_solve_cancels_the_job() -> None:
    gate = asyncio.Event()
    backend = FakeBackend(script, gate=gate)
    store = RecordingStore()
    async with InProcessRunner(backend, store, options=fast_options()) as runner:
        solving = asyncio.create_task(runner.solve(make_spec()))
        await wait_until(lambda: backend.in_flight == 1)
        solving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await solving
        (job,) = await store.list_jobs()
        assert job.status == JobStatus.cancelled
        await wait_until(lambda: backend.in_flight == 0)
    assert len(backend.calls) == 1


# -- determinism ------------------------------------------------------------------------------------


async def plan_of(
    seed: int,
) -> tuple[dict[tuple[int, int], list[int]], dict[tuple[int, int, int], int | None], list[str]]:
    store = queue = RecordingStore()
    backend = FakeBackend(script)
    runner = TaskRunner(JobService(store), backend)
    job = await runner.jobs.submit(
        make_spec(population=6, subset=3, rounds=2, seed=seed, chunk=30, carryover=5)
    )
    await drive(runner, queue)
    cands = [c for r in await all_candidates(store, job.id, 2) for c in r]
    parents = {(c.round, c.index): c.parents for c in cands}
    seeds = {
        (int(r.tag["round"]), int(r.tag["index"]), int(r.tag["chunk"])): r.seed for r in backend.requests
    }
    return parents, seeds, [c.trace for c in cands]


async def test_same_seed_same_choices() -> None:
    a, b, c = await plan_of(5), await plan_of(5), await plan_of(6)
    assert a == b
    parents, seeds, _ = a
    assert all(seeds[key] == request_seed(5, *key) for key in seeds)
    assert len(set(seeds.values())) == len(seeds)
    assert parents != c[0]
    assert set(seeds.values()).isdisjoint(c[1].values())


# -- context check ----------------------------------------------------------------------------------


async def test_check_context() -> None:
    spec = make_spec(budget=64, tail=16)
    assert await check_context(FakeBackend(script), spec) is None  # context unknown: nothing to check
    worst = await check_context(FakeBackend(script, context_length=100_000), spec)
    assert worst is not None and worst > 64 + 2 * 16
    with pytest.raises(ContextBudgetError, match=r"^budget: .*context is 100\b"):
        await check_context(FakeBackend(script, context_length=100), spec)


class SwallowingStore(MemoryStore):
    """``stats()`` swallows the first cancellation that reaches it, as Python 3.11's
    ``asyncio.wait_for`` (redis-py wraps every send in it) does when a cancellation lands just as
    its inner call completes; after that it blocks until cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.swallowed = 0
        self.called = asyncio.Event()

    async def stats(self, idle_ms: int | None = None) -> Any:
        self.calls += 1
        self.called.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if self.swallowed:
                raise
            self.swallowed += 1
        return await super().stats(idle_ms)


async def test_a_worker_stops_although_a_cancellation_was_swallowed() -> None:
    """The worker's side loops (heartbeats, cancellation checks, queue stats) were cancelled once
    at stop; one whose cancellation was swallowed kept the worker from ever returning (a SIGTERM'd
    worker that never exits)."""
    from workers.loop import Worker

    store = queue = SwallowingStore()
    options = WorkerOptions(block_ms=20, stats_interval_s=0.0, cancel_check_s=0.01, heartbeat_s=0.05)
    worker = Worker(TaskRunner(JobService(store), FakeBackend()), queue, options, consumer="w")
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    await asyncio.wait_for(queue.called.wait(), TIMEOUT)
    stop.set()
    try:
        # Not wait_for: its timeout would cancel run() again, which is what unsticks it.
        done, _ = await asyncio.wait([running], timeout=TIMEOUT)
        assert done, "the worker did not stop"
        running.result()
    finally:
        running.cancel()
    assert (queue.swallowed, queue.calls) == (1, 2)


def test_the_in_process_runner_leaves_the_callers_options_alone() -> None:
    options = fast_options()
    runner = InProcessRunner(FakeBackend(script), capacity=3, options=options)
    assert runner.worker.options.capacity == 3
    assert options.capacity == 1
