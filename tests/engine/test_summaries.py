"""Tail summarisation (tail_mode summarize): one bounded, seeded summary call per candidate whose
tail a later call reads; the summary is the tail; its usage is counted. On the fake backend and the
memory store, then through worker processes on a real redis-server."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from mrsa.backends.base import BackendUnavailable, GenerationRequest
from mrsa.domain import Candidate, Job, JobStatus, Task
from mrsa.engine import prompts
from mrsa.engine.job_service import JobService
from mrsa.engine.planning import summary_seed
from mrsa.engine.runner import TaskRunner
from mrsa.engine.summaries import summarise
from mrsa.engine.tails import TailSourceText
from tests.engine.test_engine import ATTEMPT, PROBLEM, RecordingStore, make_spec, run_job, user_prompt
from tests.fakes import FakeBackend

SUMMARY = "In short: tried x = 42 and checked it, \\boxed{42}"


def summary_script(request: GenerationRequest) -> str:
    tag = request.tag
    if tag.get("kind") == "summary":
        return f"<think>plan the summary</think>Summary of r{tag['round']} i{tag['index']}: {SUMMARY}"
    return f"Attempt r{tag['round']} i{tag['index']}: " + "step " * 12 + "so \\boxed{42}"


async def test_summaries_become_the_tails_and_are_counted() -> None:
    backend = FakeBackend(summary_script, split_reasoning=True)
    spec = make_spec(population=3, subset=2, rounds=1, tail_mode="summarize", summary_budget=60)
    result, store, _ = await run_job(backend, spec)
    assert result.status == JobStatus.succeeded
    params = spec.params
    summaries = backend.requests_for(kind="summary")
    # One per round-0 candidate; none for the last stage (nobody reads its tails).
    assert sorted(int(q.tag["index"]) for q in summaries) == [0, 1, 2]
    assert all(q.tag["round"] == 0 for q in summaries)
    round0 = await store.get_candidates(result.job_id, 0)
    for q in summaries:
        i = int(q.tag["index"])
        assert q.max_tokens == 60 and q.seed == summary_seed(params.seed, 0, i)
        assert user_prompt(q) == prompts.summary_prompt("v1", PROBLEM, round0[i].trace, 60)
        assert user_prompt(q).startswith(PROBLEM + "\n\n")  # the problem first, as in every prompt
    for c in round0:
        assert c.tail == f"Summary of r0 i{c.index}: {SUMMARY}"  # the answer part, not the thinking
        assert c.tail_tokens == len(backend.tokenizer.encode(c.tail))
        assert c.summary_usage.requests == 1 and c.summary_usage.decode_tokens > 0
        assert c.usage.requests == 2  # generation + summary
    for c in await store.get_candidates(result.job_id, 1):
        shown = [t for _, t in ATTEMPT.findall(c.prompt)]
        assert shown == [round0[p].tail for p in c.parents]
        assert c.summary_usage.requests == 0 and c.tail  # the last stage keeps a cut tail
    # Usage: every call the backend answered, per round and for the job.
    assert result.usage.decode_tokens == sum(r.completion_tokens for r in backend.results)
    assert result.usage.requests == len(backend.calls) == 3 + 3 + 3
    summary_tokens = sum(c.summary_usage.decode_tokens for c in round0)
    assert result.rounds[0].summary_usage.decode_tokens == summary_tokens
    assert result.rounds[1].summary_usage.requests == 0


async def test_long_summaries_are_cut_to_the_summary_budget() -> None:
    def rambling(request: GenerationRequest) -> str:
        if request.tag.get("kind") == "summary":
            return "very " * 200
        return "Attempt \\boxed{1}"

    backend = FakeBackend(rambling)
    spec = make_spec(population=2, subset=1, rounds=1, tail_mode="summarize", summary_budget=15)
    result, store, _ = await run_job(backend, spec)
    assert result.status == JobStatus.succeeded
    for c in await store.get_candidates(result.job_id, 0):
        assert c.tail_tokens <= 15 and c.summary_usage.decode_tokens == 15


async def test_the_aggregate_selection_reads_summaries_of_the_last_stage() -> None:
    backend = FakeBackend(summary_script, split_reasoning=True)
    spec = make_spec(population=2, subset=2, rounds=1, tail_mode="summarize", selection="aggregate")
    result, _, _ = await run_job(backend, spec)
    assert result.status == JobStatus.succeeded
    assert sorted(int(q.tag["round"]) for q in backend.requests_for(kind="summary")) == [0, 0, 1, 1]
    (select,) = backend.requests_for(kind="select")
    assert "Summary of r1 i0" in user_prompt(select) and "Summary of r1 i1" in user_prompt(select)


async def test_a_redelivered_task_asks_for_the_same_summary() -> None:
    store = queue = RecordingStore()
    backend = FakeBackend(summary_script, failures={2: BackendUnavailable("connection reset")})
    runner = TaskRunner(JobService(store), backend)
    job = await runner.jobs.submit(make_spec(population=1, subset=1, rounds=1, tail_mode="summarize"))
    (delivery,) = await queue.take("w", 1, block_ms=0)
    try:
        await runner.run_task(delivery.task)  # the generation succeeds, its summary call fails
    except BackendUnavailable:
        pass
    else:  # pragma: no cover - the failure is scripted
        raise AssertionError("the summary call should have failed")
    assert await store.get_candidates(job.id, 0) == []  # nothing stored: the task stays pending
    await runner.run_task(delivery.task)  # redelivered
    failed, retried = [c.request for c in backend.calls if c.request.tag.get("kind") == "summary"]
    assert failed == retried  # same prompt, seed and sampling
    (cand,) = await store.get_candidates(job.id, 0)
    assert cand.summary_usage.requests == 1  # the failed call is not counted


@settings(max_examples=60, deadline=None)
@given(
    words=st.lists(
        st.sampled_from(["x", "=", "42", "so", "the", "answer", " ", "\n", "∑", "é"]), max_size=80
    ),
    limit=st.integers(1, 60),
)
def test_the_summary_prompt_holds_the_last_request_tokens_of_the_source(words: list[str], limit: int) -> None:
    """Token-exact: the text summarised is the last ``request_tokens`` tokens of the tail source
    (all of it when shorter), and the prompt is the template around it, problem first."""
    text = "".join(words)
    backend = FakeBackend("a summary")
    job = Job(id="j", spec=make_spec(population=1, subset=1, budget=limit, tail=1, tail_mode="summarize"))
    params = job.spec.params
    task = Task(job_id="j", round=0, index=0)
    summary = asyncio.run(summarise(backend, job, task, TailSourceText(text, False), None))
    tok = backend.tokenizer
    work = tok.decode(tok.encode(text)[-limit:])
    if not work.strip():  # nothing left to summarise once cut (e.g. the last token is a space)
        assert backend.calls == [] and summary.tail.text == ""
        return
    (call,) = backend.calls
    assert user_prompt(call.request) == prompts.summary_prompt("v1", PROBLEM, work, params.summary_budget)
    assert summary.tail.text == "a summary" and summary.usage.requests == 1


def test_summarised_candidates_round_trip_through_storage() -> None:
    cand = Candidate(round=0, index=0, summary_usage={"decode_tokens": 5, "requests": 1})  # type: ignore[arg-type]
    assert Candidate.model_validate_json(cand.model_dump_json()).summary_usage.decode_tokens == 5
