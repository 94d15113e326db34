"""Parameters: presets, overrides, validation messages that name the field, context fit."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from mrsa.domain import JobSpec
from mrsa.engine.limits import CHAT_TEMPLATE_MARGIN, worst_case_tokens
from mrsa.params import (
    DEFAULT_PRESET,
    MAX_BUDGET,
    MAX_POPULATION,
    MAX_ROUNDS,
    MAX_SUBSET,
    PRESETS,
    RSAParams,
    UnknownPresetError,
    describe_validation_error,
    resolve_params,
)


def error_of(overrides: dict[str, Any], preset: str = "zaya1") -> str:
    with pytest.raises(ValidationError) as info:
        resolve_params(preset, overrides)
    message = describe_validation_error(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_resolves(name: str) -> None:
    params = resolve_params(name)
    expected = PRESETS[name]
    for key in ("population", "subset", "rounds", "budget", "tail"):
        assert getattr(params, key) == expected[key]
    assert params.sampling.model_dump() == expected["sampling"]
    assert params.stages == params.rounds + 1


def test_preset_values_match_the_design() -> None:
    z = resolve_params("zaya1")
    assert (z.population, z.subset, z.rounds, z.budget, z.tail) == (16, 4, 2, 40960, 4096)
    assert (z.sampling.temperature, z.sampling.top_p, z.sampling.top_k) == (1.0, 1.0, -1)
    assert z.selection == "majority" and z.tail_source == "trace" and z.chunk is None
    x = resolve_params("zaya1-extra-high")
    assert (x.population, x.subset, x.rounds, x.budget, x.tail) == (32, 4, 8, 32768, 4096)
    r = resolve_params("rsa-paper")
    assert (r.population, r.subset, r.rounds) == (16, 4, 9)
    assert r.tail == r.budget == 8192  # full chains


def test_default_preset() -> None:
    assert DEFAULT_PRESET == "zaya1"
    assert resolve_params() == resolve_params("zaya1")
    assert resolve_params(None, {}) == resolve_params("zaya1")


def test_overrides_merge_into_the_preset() -> None:
    p = resolve_params("zaya1", {"rounds": 5, "sampling": {"temperature": 0.7}, "seed": 3})
    assert p.rounds == 5 and p.seed == 3
    assert p.population == 16  # untouched
    assert p.sampling.temperature == 0.7
    assert p.sampling.top_p == 1.0  # nested keys merge rather than replace
    # None means "not given" (e.g. an unset CLI option).
    assert resolve_params("zaya1", {"rounds": None, "sampling": {"top_k": None}}) == resolve_params("zaya1")
    # Overrides never mutate the preset table.
    assert PRESETS["zaya1"]["rounds"] == 2
    assert PRESETS["zaya1"]["sampling"]["temperature"] == 1.0


def test_request_tokens() -> None:
    assert resolve_params("zaya1").request_tokens == 40960
    assert resolve_params("zaya1", {"chunk": 8192}).request_tokens == 8192


def test_unknown_preset_names_the_choices() -> None:
    with pytest.raises(UnknownPresetError) as info:
        resolve_params("zaya2")
    message = str(info.value)
    assert message.startswith("preset:")
    assert "'zaya2'" in message
    for name in PRESETS:
        assert name in message
    assert info.value.name == "zaya2"
    assert isinstance(info.value, ValueError)


# -- validation rules name the field ----------------------------------------------------------------


def test_subset_larger_than_population() -> None:
    message = error_of({"population": 4, "subset": 5})
    assert message.startswith("subset:")
    assert "population" in message


def test_tail_larger_than_budget() -> None:
    assert error_of({"budget": 100, "tail": 101}).startswith("tail:")
    assert resolve_params("zaya1", {"budget": 100, "tail": 100}).tail == 100  # τ = β is full-chain RSA


def test_carryover_must_be_below_chunk() -> None:
    assert error_of({"chunk": 512, "carryover": 512}).startswith("carryover:")
    assert error_of({"chunk": 512, "carryover": 600}).startswith("carryover:")
    assert resolve_params("zaya1", {"chunk": 512, "carryover": 511}).carryover == 511
    # Without chunking the carry-over is unused and not checked against anything.
    assert resolve_params("smoke").carryover >= resolve_params("smoke").budget


def test_chunk_larger_than_budget() -> None:
    assert error_of({"budget": 1000, "tail": 100, "chunk": 1001, "carryover": 10}).startswith("chunk:")
    assert resolve_params("zaya1", {"chunk": 40960}).chunk == 40960


@pytest.mark.parametrize("field", ["population", "subset", "budget", "tail", "chunk"])
@pytest.mark.parametrize("value", [0, -1])
def test_non_positive_sizes(field: str, value: int) -> None:
    message = error_of({field: value})
    assert message.startswith(f"{field}:")
    assert "greater than or equal to 1" in message


def test_negative_rounds_carryover_and_seed() -> None:
    assert error_of({"rounds": -1}).startswith("rounds:")
    assert error_of({"carryover": -1}).startswith("carryover:")
    assert error_of({"seed": -1}).startswith("seed:")
    assert resolve_params("zaya1", {"rounds": 0}).stages == 1  # T = 0 is parallel sampling


@pytest.mark.parametrize(
    ("field", "limit"),
    [
        ("population", MAX_POPULATION),
        ("subset", MAX_SUBSET),
        ("rounds", MAX_ROUNDS),
        ("budget", MAX_BUDGET),
        ("tail", MAX_BUDGET),
        ("chunk", MAX_BUDGET),
    ],
)
def test_upper_limits(field: str, limit: int) -> None:
    message = error_of({field: limit + 1})
    assert message.startswith(f"{field}:")
    assert str(limit) in message


def test_upper_limits_are_reachable() -> None:
    p = RSAParams(
        population=MAX_POPULATION, subset=MAX_SUBSET, rounds=MAX_ROUNDS, budget=MAX_BUDGET, tail=MAX_BUDGET
    )
    assert p.budget == MAX_BUDGET


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"sampling": {"temperature": -0.1}}, "sampling.temperature"),
        ({"sampling": {"top_p": 0}}, "sampling.top_p"),
        ({"sampling": {"top_k": -2}}, "sampling.top_k"),
        ({"aggregate_temperature": 6}, "aggregate_temperature"),
        ({"selection": "best"}, "selection"),
        ({"tail_source": "answer"}, "tail_source"),
        ({"prompts": "a/b"}, "prompts"),
        ({"bogus": 1}, "bogus"),
        ({"sampling": {"min_p": 0.1}}, "sampling.min_p"),
    ],
)
def test_other_fields_are_named(overrides: dict[str, Any], field: str) -> None:
    assert error_of(overrides).startswith(f"{field}:")


def test_describe_validation_error_joins_several_errors_on_one_line() -> None:
    message = error_of({"population": 0, "budget": 0})
    assert "population:" in message and "budget:" in message
    assert "; " in message
    assert "Value error" not in error_of({"population": 2, "subset": 3})


# -- the smoke preset fits SmolLM2 ------------------------------------------------------------------


def test_smoke_preset_fits_smollm2_context() -> None:
    """|q| + K·τ + β (plus templates) inside SmolLM2-135M's 8192-token context, with generous
    estimates: a 2,000-token problem, 600 tokens of aggregation template, 300 of continuation."""
    context = 8192
    problem_tokens = 2000
    for selection in ("majority", "aggregate", "population"):
        spec = JobSpec(problem="q", params=resolve_params("smoke", {"selection": selection}))
        p = spec.params
        worst = worst_case_tokens(problem_tokens + 100, problem_tokens + 600, 300, spec)
        assert (
            worst
            == max(problem_tokens + 100, problem_tokens + 600 + p.subset * p.tail)
            + p.budget
            + CHAT_TEMPLATE_MARGIN
        )
        assert worst < context / 2  # room to spare even for a long problem


def test_worst_case_tokens_counts_chunk_and_carryover() -> None:
    spec = JobSpec(problem="q", params=resolve_params("zaya1", {"chunk": 8192, "carryover": 512}))
    worst = worst_case_tokens(300, 400, 50, spec)
    head = 100  # the Delethink head every continuation keeps (default)
    assert worst == 400 + 4 * 4096 + head + 512 + 50 + 8192 + CHAT_TEMPLATE_MARGIN
    no_head = JobSpec(problem="q", params=spec.params.model_copy(update={"head": 0}))
    assert worst_case_tokens(300, 400, 50, no_head) == worst - head
    # The larger stage budget bounds a request; summaries bound the tails and their own request.
    final = JobSpec(problem="q", params=resolve_params("zaya1", {"final_budget": 61440}))
    assert worst_case_tokens(300, 400, 50, final) == 400 + 4 * 4096 + 61440 + CHAT_TEMPLATE_MARGIN
    summarize = resolve_params("zaya1", {"tail_mode": "summarize", "summary_budget": 1000})
    summary = JobSpec(problem="q", params=summarize)
    assert worst_case_tokens(300, 400, 50, summary, 350) == 400 + 4 * 1000 + 40960 + CHAT_TEMPLATE_MARGIN
    big = JobSpec(problem="q", params=summarize.model_copy(update={"summary_budget": 30000, "subset": 1}))
    assert worst_case_tokens(300, 400, 50, big, 500) == 500 + 40960 + 30000 + CHAT_TEMPLATE_MARGIN
    # T = 0 without the aggregate selection: no aggregation prompt at all.
    spec0 = JobSpec(problem="q", params=resolve_params("zaya1", {"rounds": 0}))
    assert worst_case_tokens(300, 400, 50, spec0) == 300 + 40960 + CHAT_TEMPLATE_MARGIN
    # The headline preset needs a model with a long context.
    assert worst_case_tokens(300, 400, 50, JobSpec(problem="q", params=resolve_params("zaya1"))) > 8192


def test_carryover_defaults_to_half_a_small_chunk() -> None:
    assert resolve_params("smoke", {"chunk": 32}).carryover == 16
    assert resolve_params("zaya1", {"chunk": 8192}).carryover == 512
    assert resolve_params("zaya1").carryover == 512


def test_prompt_set_name_cannot_climb_out_of_prompts() -> None:
    with pytest.raises(ValidationError, match="prompts"):
        RSAParams(prompts="..")
