"""Adaptive compute: the stop rules (pure), and jobs that stop early on the memory store and on a
real redis-server, with redelivery, the token budget and the result's account of what was saved."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from evals.configs import ConfigError, build_configs
from mrsa.backends.base import GenerationRequest
from mrsa.cli.settings import Settings
from mrsa.cli.solve import render_result
from mrsa.domain import CandidateSummary, JobResult, JobSpec, JobStatus, RoundSummary, Usage, Vote
from mrsa.engine.adaptive import agreement, decide
from mrsa.engine.job_service import JobService
from mrsa.engine.runner import TaskRunner
from mrsa.params import PRESETS, RSAParams, describe_validation_error, resolve_params
from mrsa.store.base import Store
from mrsa.store.memory import MemoryStore
from mrsa.store.opening import open_store
from tests.fakes import FakeBackend
from tests.plugins.redis_server import RedisServer
from workers.inprocess import InProcessRunner
from workers.loop import WorkerOptions

TIMEOUT = 20.0


def params(**overrides: Any) -> RSAParams:
    base: dict[str, Any] = {"population": 4, "subset": 2, "rounds": 3, "budget": 64, "tail": 16, "seed": 3}
    return RSAParams.model_validate(base | overrides)


def summary(index: int, answers: list[str | None], truncated: int = 0, decode: int = 100) -> RoundSummary:
    """A round whose candidates answered ``answers`` (the first ``truncated`` cut at the budget)."""
    reasons = ["length" if i < truncated else "stop" for i in range(len(answers))]
    votes: dict[str, Vote] = {}
    for answer, reason in zip(answers, reasons, strict=True):
        if answer is not None:
            v = votes.setdefault(answer, Vote(answer=answer, count=0))
            v.count += 1
            v.finished += reason == "stop"
    return RoundSummary(
        index=index,
        usage=Usage(decode_tokens=decode),
        truncated=truncated,
        votes=sorted(votes.values(), key=lambda v: -v.count),
        candidates=[
            CandidateSummary(
                index=i,
                answer=a,
                finish_reason=r,  # type: ignore[arg-type]
                decode_tokens=decode // len(answers),
                prompt_tokens=0,
                tail_tokens=0,
                source_tokens=0,
                parents=[],
            )
            for i, (a, r) in enumerate(zip(answers, reasons, strict=True))
        ],
    )


# -- the rules ---------------------------------------------------------------------------------------


def test_off_by_default_and_in_every_preset() -> None:
    assert not RSAParams().adaptive
    for name in PRESETS:
        assert not resolve_params(name).adaptive, name
    agreeing = [summary(r, ["42"] * 4) for r in range(3)]
    assert decide(params(), agreeing) is None


def test_converged_after_the_min_round_with_few_truncated() -> None:
    p = params(stop_agreement=0.75, stop_min_round=1, stop_max_truncated=0.25)
    assert decide(p, [summary(0, ["42"] * 4)]) is None  # round 0 < stop_min_round
    rounds = [summary(0, ["1", "2", "3", "4"]), summary(1, ["42", "42", "42", "7"], decode=120)]
    stop = decide(p, rounds)
    assert stop is not None and stop.reason == "converged" and stop.after_round == 1
    assert stop.rounds_skipped == 2 and stop.decode_tokens_saved_estimate == 240
    assert stop.agreement == 0.75 and stop.truncated_share == 0.0
    assert decide(p, [rounds[0], summary(1, ["42", "42", "7", "8"])]) is None  # 0.5 < q


def test_truncated_candidates_block_convergence_and_do_not_count_as_agreeing() -> None:
    p = params(stop_agreement=0.6, stop_max_truncated=0.25)
    two_cut = summary(1, ["42", "42", "42", "42"], truncated=2)  # agreement 1.0 among finished, 50% cut
    assert agreement(two_cut) == 1.0
    assert decide(p, [summary(0, ["1"] * 4), two_cut]) is None
    one_cut = summary(1, ["9", "42", "42", "7"], truncated=1)  # finished: 42, 42, 7
    assert decide(p, [summary(0, ["1"] * 4), one_cut]) is not None
    assert agreement(summary(1, [None] * 4, truncated=4)) == 0.0


def test_the_token_budget_stops_before_a_round_that_would_exceed_it() -> None:
    p = params(token_budget=350)
    rounds = [summary(0, ["1", "2", "3", "4"], decode=100), summary(1, ["1", "2", "3", "5"], decode=150)]
    assert decide(p, rounds[:1]) is None  # 100 spent + 100 projected ≤ 350
    stop = decide(p, rounds)  # 250 spent + 150 projected > 350
    assert stop is not None and stop.reason == "token_budget" and stop.after_round == 1
    assert stop.decode_tokens_saved_estimate == 2 * 150


@given(
    rounds=st.integers(1, 6),
    done=st.integers(0, 6),
    q=st.floats(0.05, 1.0),
    answers=st.lists(st.sampled_from(["1", "2", None]), min_size=1, max_size=8),
    budget=st.none() | st.integers(1, 5000),
)
def test_a_stop_is_always_before_round_t_and_accounts_for_the_rest(
    rounds: int, done: int, q: float, answers: list[str | None], budget: int | None
) -> None:
    p = RSAParams(population=len(answers), subset=1, rounds=rounds, stop_agreement=q, token_budget=budget)
    history = [summary(r, answers) for r in range(min(done, rounds) + 1)]
    stop = decide(p, history)
    if stop is None:
        return
    assert stop.after_round == history[-1].index < rounds
    assert stop.rounds_skipped == rounds - stop.after_round
    assert stop.decode_tokens_saved_estimate == stop.rounds_skipped * history[-1].usage.decode_tokens
    if stop.reason == "converged":
        assert stop.agreement >= round(q, 4) - 1e-9 and stop.after_round >= p.stop_min_round


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"stop_agreement": 0.0}, "stop_agreement"),
        ({"stop_agreement": 1.5}, "stop_agreement"),
        ({"stop_max_truncated": -0.1}, "stop_max_truncated"),
        ({"token_budget": 0}, "token_budget"),
        ({"stop_agreement": 0.8, "stop_min_round": 4}, "stop_min_round"),
    ],
)
def test_bad_adaptive_settings_name_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        params(**overrides)
    assert describe_validation_error(err.value).startswith(field)


def test_adaptive_knobs_cannot_be_swept() -> None:
    with pytest.raises(ConfigError, match=r"stop_agreement.*benchmarks/adaptive\.py"):
        build_configs(["smoke"], "stop_agreement=0.8")


# -- jobs --------------------------------------------------------------------------------------------


def agreeing_from_round(first: int) -> Any:
    """Round-0 candidates disagree; from round ``first`` on every candidate answers 42."""

    def script(request: GenerationRequest) -> str:
        r, i = int(request.tag["round"]), int(request.tag["index"])
        answer = "42" if r >= first else str(i)
        return f"Attempt r{r} i{i} reasons at some length and concludes \\boxed{{{answer}}}"

    return script


OPTIONS = WorkerOptions(block_ms=20, cancel_check_s=0.01, heartbeat_s=0.05, backend_hold_s=0.0)


async def solve(backend: FakeBackend, store: Store, p: RSAParams) -> JobResult:
    async with InProcessRunner(backend, store, capacity=2, options=OPTIONS) as runner:
        return await asyncio.wait_for(
            runner.solve(JobSpec(problem="Find $x$.", params=p, model="f")), TIMEOUT
        )


@pytest.mark.parametrize("selection", ["majority", "aggregate"])
async def test_a_converged_job_stops_and_says_why(selection: str) -> None:
    backend = FakeBackend(agreeing_from_round(1))
    result = await solve(backend, MemoryStore(), params(stop_agreement=0.75, selection=selection))
    assert result.status == JobStatus.succeeded and result.answer == "42"
    assert [r.index for r in result.rounds] == [0, 1]
    assert len(backend.calls) == 8  # rounds 2 and 3 never ran, nor a final aggregation
    stop = result.early_stop
    assert stop is not None and stop.reason == "converged" and stop.after_round == 1
    assert stop.rounds_skipped == 2
    assert stop.decode_tokens_saved_estimate == 2 * result.rounds[1].usage.decode_tokens
    assert result.usage.decode_tokens == sum(r.usage.decode_tokens for r in result.rounds)


async def test_the_same_job_without_adaptive_runs_every_round() -> None:
    backend = FakeBackend(agreeing_from_round(1))
    result = await solve(backend, MemoryStore(), params())
    assert [r.index for r in result.rounds] == [0, 1, 2, 3] and result.early_stop is None
    assert len(backend.calls) == 16


async def test_a_job_that_never_converges_runs_every_round() -> None:
    backend = FakeBackend(agreeing_from_round(99))
    result = await solve(backend, MemoryStore(), params(stop_agreement=0.75))
    assert [r.index for r in result.rounds] == [0, 1, 2, 3] and result.early_stop is None


async def test_a_token_budget_stops_before_the_round_that_would_exceed_it() -> None:
    backend = FakeBackend(agreeing_from_round(99))
    probe = await solve(FakeBackend(agreeing_from_round(99)), MemoryStore(), params())
    per_round = [r.usage.decode_tokens for r in probe.rounds]
    budget = sum(per_round[:2]) + per_round[1] - 1  # room for rounds 0 and 1, not for round 2
    result = await solve(backend, MemoryStore(), params(token_budget=budget))
    assert [r.index for r in result.rounds] == [0, 1]
    assert result.early_stop is not None and result.early_stop.reason == "token_budget"
    assert result.usage.decode_tokens <= budget


async def test_redelivered_completions_neither_replan_nor_restop() -> None:
    store = MemoryStore()
    backend = FakeBackend(agreeing_from_round(1))
    runner = TaskRunner(JobService(store), backend)
    job = await runner.jobs.submit(
        JobSpec(problem="Find $x$.", params=params(stop_agreement=0.75), model="f")
    )
    ran = []
    while got := await store.take("w", 100, block_ms=0):
        for d in got:
            await runner.run_task(d.task)
            await runner.run_task(d.task)  # every task delivered twice
            await store.ack(d)
            ran.append(d.task)
    assert sorted((t.round, t.index) for t in ran) == [(r, i) for r in (0, 1) for i in range(4)]
    for task in ran:  # late redeliveries after the stop change nothing
        await runner.run_task(task)
    assert len(backend.calls) == 8
    result = await store.get_result(job.id)
    assert result is not None and result.early_stop is not None and result.early_stop.after_round == 1
    events = [e for _, e in await store.read_events(job.id, None, block_ms=0, count=1000)]
    assert [e.round for e in events if e.type == "round"] == [1]
    assert [e.type for e in events].count("done") == 1


@pytest.mark.redis
async def test_an_adaptive_job_stops_early_through_redis(redis_server: RedisServer) -> None:
    async with open_store(Settings(redis_url=redis_server.url)) as store:
        backend = FakeBackend(agreeing_from_round(1))
        result = await solve(backend, store, params(stop_agreement=0.75))
    assert [r.index for r in result.rounds] == [0, 1] and len(backend.calls) == 8
    assert result.early_stop is not None and result.early_stop.reason == "converged"


async def test_mrsa_solve_says_it_stopped_early(capsys: pytest.CaptureFixture[str]) -> None:
    result = await solve(FakeBackend(agreeing_from_round(1)), MemoryStore(), params(stop_agreement=0.75))
    render_result(result)
    out = " ".join(capsys.readouterr().out.split())
    assert "stopped early after round 1 (converged: 100% of the finished candidates agree)" in out
    assert "2 round(s) skipped" in out and "(estimate)" in out
