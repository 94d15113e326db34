"""The last generation stage's own settings: final_population, final_budget and the final
sampling (round T; round 0 when T=0) — planning as properties, then whole jobs on the fake
backend, and validation naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from mrsa.backends.base import GenerationRequest
from mrsa.domain import JobStatus
from mrsa.engine.planning import release_tasks, round_tasks, select_round, selection_subset
from mrsa.params import RSAParams, describe_validation_error, resolve_params
from tests.engine.test_engine import make_spec, run_job
from tests.fakes import FakeBackend


@st.composite
def final_params(draw: st.DrawFn) -> RSAParams:
    population = draw(st.integers(1, 24))
    subset = draw(st.integers(1, population))
    final = draw(st.one_of(st.none(), st.integers(1, 24)))
    aggregate = final is None or final >= subset
    return RSAParams(
        population=population,
        subset=subset,
        rounds=draw(st.integers(0, 4)),
        budget=64,
        tail=16,
        seed=draw(st.integers(0, 2**40)),
        final_population=final,
        selection="aggregate" if aggregate and draw(st.booleans()) else "majority",
    )


@settings(max_examples=150, deadline=None)
@given(params=final_params())
def test_stage_sizes_and_parents(params: RSAParams) -> None:
    """Every round has its stage's size; the last draws its K parents from the round before it
    (from N candidates), and the candidates of round T-1 release exactly round T's tasks."""
    t = params.rounds
    last = params.final_population or params.population
    sizes = [len(round_tasks("j", params, r)) for r in range(params.stages)]
    assert sizes == [params.population] * t + [last]
    assert params.total_candidates == sum(sizes)
    for r in range(1, params.stages):
        for task in round_tasks("j", params, r):
            assert len(set(task.parents)) == params.subset
            assert all(0 <= p < params.stage_population(r - 1) for p in task.parents)
    if t >= 1:
        released = {
            (task.index, tuple(task.parents))
            for parent in round_tasks("j", params, t - 1)
            for task in release_tasks("j", params, parent)
        }
        assert released == {(task.index, tuple(task.parents)) for task in round_tasks("j", params, t)}
        # The subsets of the prompts both sizes have are the same: only the count changes.
        plain = params.model_copy(update={"final_population": None})
        both = min(last, params.population)
        assert round_tasks("j", params, t)[:both] == round_tasks("j", plain, t)[:both]
    if params.selection == "aggregate":
        parents = selection_subset(params)
        assert len(set(parents)) == params.subset and all(0 <= p < last for p in parents)
    assert release_tasks("j", params, round_tasks("j", params, t)[0]) == []


def test_unset_final_settings_are_the_population_settings() -> None:
    params = resolve_params("zaya1")
    for r in range(params.stages):
        assert params.stage_population(r) == 16 and params.stage_budget(r) == 40960
        assert params.stage_sampling(r) == params.sampling
    final = resolve_params("zaya1", {"final_temperature": 0.6, "final_top_k": 40, "final_budget": 61440})
    assert final.stage_sampling(2).model_dump() == {"temperature": 0.6, "top_p": 1.0, "top_k": 40}
    assert final.stage_sampling(1) == final.sampling and final.stage_budget(1) == 40960
    assert final.stage_budget(2) == 61440 and final.request_tokens == 61440


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"final_population": 3, "selection": "aggregate"}, "final_population"),
        ({"final_population": 0}, "final_population"),
        ({"final_budget": 0}, "final_budget"),
        ({"final_temperature": 9}, "final_temperature"),
        ({"final_top_p": 0}, "final_top_p"),
        ({"final_top_k": -2}, "final_top_k"),
    ],
)
def test_bad_final_settings_name_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        resolve_params("zaya1", overrides)
    assert describe_validation_error(caught.value).startswith(f"{field}:")


def test_a_small_final_stage_is_fine_without_the_aggregate_selection() -> None:
    assert resolve_params("zaya1", {"final_population": 1}).stage_population(2) == 1


def stage_script(request: GenerationRequest) -> str:
    """Round-2 candidates answer 7, the others 42 (so the votes show which stage counted)."""
    if request.tag.get("kind") == "select":
        return "Chosen: \\boxed{99}"
    answer = 7 if request.tag["round"] == 2 else 42
    return f"Round {request.tag['round']} attempt {request.tag['index']} " + "x " * 8 + f"\\boxed{{{answer}}}"


async def test_a_job_runs_its_last_stage_with_the_final_settings() -> None:
    backend = FakeBackend(stage_script)
    spec = make_spec(
        population=4,
        subset=2,
        rounds=2,
        budget=64,
        final_population=3,
        final_budget=40,
        final_temperature=0.6,
        final_top_p=0.95,
        final_top_k=40,
    )
    result, store, _ = await run_job(backend, spec)
    assert result.status == JobStatus.succeeded
    by_round = {r: backend.requests_for(round=r) for r in range(3)}
    assert [len(by_round[r]) for r in range(3)] == [4, 4, 3]
    for r in (0, 1):
        assert {(q.max_tokens, q.temperature, q.top_p, q.top_k) for q in by_round[r]} == {(64, 1.0, 1.0, -1)}
    assert {(q.max_tokens, q.temperature, q.top_p, q.top_k) for q in by_round[2]} == {(40, 0.6, 0.95, 40)}
    # Votes, answers and the answer are the last stage's own.
    assert result.answer == "7" and result.answers == ["7", "7", "7"]
    assert [v.count for v in result.votes] == [3]
    assert [len(s.candidates) for s in result.rounds] == [4, 4, 3]
    assert result.usage.decode_tokens == sum(r.completion_tokens for r in backend.results)
    assert all(c.usage.decode_tokens <= 40 for c in await store.get_candidates(result.job_id, 2))
    assert (await store.get_job(result.job_id)).round == 3  # type: ignore[union-attr]


async def test_with_no_rounds_the_final_stage_is_round_zero() -> None:
    backend = FakeBackend(stage_script)
    spec = make_spec(rounds=0, population=4, final_population=6, final_budget=20, final_temperature=0.3)
    result, _, _ = await run_job(backend, spec)
    assert result.status == JobStatus.succeeded
    requests = backend.requests_for(round=0)
    assert len(requests) == 6 and {(q.max_tokens, q.temperature) for q in requests} == {(20, 0.3)}
    assert len(result.answers) == 6 and len(result.rounds) == 1


async def test_the_aggregate_selection_draws_from_the_final_stage() -> None:
    backend = FakeBackend(stage_script)
    spec = make_spec(
        population=5, subset=2, rounds=1, selection="aggregate", final_population=2, final_temperature=0.2
    )
    result, store, _ = await run_job(backend, spec)
    assert result.status == JobStatus.succeeded and result.answer == "99"
    (select,) = [c.request for c in backend.calls if c.request.tag.get("kind") == "select"]
    # The selection call keeps its own temperature and the population's budget.
    assert select.temperature == spec.params.aggregate_temperature and select.max_tokens == 64
    (chosen,) = await store.get_candidates(result.job_id, select_round(spec.params))
    assert sorted(chosen.parents) == [0, 1]
