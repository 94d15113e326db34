"""Islands (``islands`` M): the schedule, parent subsets within islands, the M/N/K/T validation, and
per-island votes in a job's result."""

from __future__ import annotations

import asyncio
import hashlib
import random
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from evals.configs import build_configs
from evals.datasets import Dataset, Problem
from evals.records import CandidateRecord
from evals.report import compute, render_markdown
from evals.rundir import Manifest, RunDir, dataset_entry
from mrsa.domain import JobSpec
from mrsa.engine.islands import island_members, island_of, islands_at, phases
from mrsa.engine.planning import _subsets, plan_subsets, round_islands, round_tasks
from mrsa.params import RSAParams, describe_validation_error
from mrsa.store.memory import MemoryStore
from tests.fakes import FakeBackend
from workers.inprocess import InProcessRunner
from workers.loop import WorkerOptions

seeds = st.integers(min_value=0, max_value=2**63 - 1)


@st.composite
def island_params(draw: st.DrawFn) -> RSAParams:
    """Valid parameters with islands: M a power of two, N a multiple of M, K ≤ N/M, log2(M) ≤ T."""
    log_m = draw(st.integers(0, 4))
    m = 1 << log_m
    n = m * draw(st.integers(1, max(1, 64 // m)))
    k = draw(st.integers(1, n // m))
    t = draw(st.integers(log_m, 12))
    return RSAParams(population=n, subset=k, rounds=t, islands=m, seed=draw(seeds), budget=64, tail=16)


@given(params=island_params())
def test_every_subset_lies_within_its_prompts_island(params: RSAParams) -> None:
    n = params.population
    for r in range(1, params.rounds + 1):
        count = round_islands(params, r)
        for task in round_tasks("j", params, r):
            members = island_members(n, count, island_of(n, count, task.index))
            assert len(task.parents) == params.subset == len(set(task.parents))
            assert all(p in members for p in task.parents)


@given(params=island_params())
def test_islands_partition_the_population_and_merge_in_pairs(params: RSAParams) -> None:
    m, n, t = params.islands, params.population, params.rounds
    counts = [islands_at(m, t, s) for s in range(t + 1)]
    assert counts[0] == m and counts[-1] == 1  # split at round 0, one island by round T
    assert all(a in (b, 2 * b) for a, b in pairwise(counts))  # pairs, never faster
    assert len(set(counts)) == phases(m)  # every phase has at least one stage
    for count in set(counts):
        covered = [i for j in range(count) for i in island_members(n, count, j)]
        assert covered == list(range(n))  # contiguous, equal, disjoint
        # island j of a phase is islands 2j and 2j+1 of the phase before it
        if count < m:
            for j in range(count):
                halves = [*island_members(n, 2 * count, 2 * j), *island_members(n, 2 * count, 2 * j + 1)]
                assert halves == list(island_members(n, count, j))
    merges = [(a, b) for a, b in pairwise(counts) if b != a]
    assert merges == [(m >> p, m >> (p + 1)) for p in range(phases(m) - 1)]
    # phase lengths differ by at most one, the longer ones first
    lengths = [counts.count(m >> p) for p in range(phases(m))]
    assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)


@pytest.mark.parametrize(("m", "stages"), [(2, 4), (4, 6), (4, 9), (8, 8), (2, 2)])
def test_the_schedule_is_the_harness_schedule_when_it_divides(m: int, stages: int) -> None:
    """The RSA authors' harness: loops L (our T+1) a multiple of log2(M)+1, phases of L/(log2(M)+1)
    steps, M / 2^phase islands in a phase."""
    phase_len = stages // phases(m)
    expected = [m >> min(s // phase_len, phases(m) - 1) for s in range(stages)]
    assert [islands_at(m, stages - 1, s) for s in range(stages)] == expected


@given(seed=seeds, round_index=st.integers(0, 64), population=st.integers(1, 64), data=st.data())
def test_one_island_is_byte_identical_to_the_plans_before_islands(
    seed: int, round_index: int, population: int, data: st.DataObject
) -> None:
    """M=1 draws exactly what the planner drew before islands existed (same seed, same subsets)."""
    subset = data.draw(st.integers(1, population))
    prompts = data.draw(st.integers(0, 40))

    def before(index: int) -> list[int]:
        material = f"{seed}:subset:{round_index}:{index}".encode()
        rng_seed = int.from_bytes(hashlib.blake2b(material, digest_size=8).digest(), "big") & 0x7FFFFFFF
        return sorted(random.Random(rng_seed).sample(range(population), subset))

    assert plan_subsets(seed, round_index, population, subset, prompts) == [before(i) for i in range(prompts)]
    assert plan_subsets(seed, round_index, population, subset, prompts, islands=1) == [
        before(i) for i in range(prompts)
    ]


@given(params=island_params())
def test_island_plans_are_deterministic(params: RSAParams) -> None:
    for r in range(1, params.rounds + 1):
        first = round_tasks("j", params, r)
        _subsets.cache_clear()
        assert round_tasks("j", params, r) == first


def test_plan_subsets_rejects_a_subset_larger_than_an_island() -> None:
    with pytest.raises(ValueError, match="subset"):
        plan_subsets(0, 1, 8, 3, 8, islands=4)
    with pytest.raises(ValueError, match="islands"):
        plan_subsets(0, 1, 8, 1, 8, islands=3)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"islands": 3, "population": 12}, "islands: M=3 must be a power of two"),
        ({"islands": 4, "population": 10}, "islands: population N=10 must be divisible by M=4"),
        ({"islands": 4, "population": 8, "subset": 4}, "islands: subset K=4 must be ≤ N/M=2"),
        (
            {"islands": 8, "population": 16, "subset": 2, "rounds": 2},
            "islands: log2(M)=3 must be ≤ rounds T=2",
        ),
        ({"islands": 0}, "islands"),
    ],
)
def test_invalid_island_settings_name_the_field(overrides: dict[str, Any], message: str) -> None:
    base: dict[str, Any] = {"population": 16, "subset": 2, "rounds": 2, "budget": 64, "tail": 16}
    with pytest.raises(ValidationError) as err:
        RSAParams.model_validate(base | overrides)
    assert message in describe_validation_error(err.value)


def test_the_default_is_one_island() -> None:
    params = RSAParams()
    assert params.islands == 1
    assert [round_islands(params, r) for r in range(params.stages)] == [1] * params.stages


async def test_a_job_with_islands_reports_votes_per_island() -> None:
    """N=8, M=2, T=2: rounds 0 and 1 have two islands of four, round 2 is merged. Island 1 answers 7."""

    def script(request: Any) -> str:
        index, rnd = int(request.tag["index"]), int(request.tag["round"])
        answer = "7" if rnd < 2 and index >= 4 else "42"
        return f"Thinking about attempt r{rnd} i{index}, \\boxed{{{answer}}}"

    params = RSAParams(population=8, subset=2, rounds=2, islands=2, budget=64, tail=16, seed=5)
    spec = JobSpec(problem="Find $x$.", params=params, model="fake")
    options = WorkerOptions(block_ms=20, cancel_check_s=0.01, heartbeat_s=0.05, backend_hold_s=0.0)
    async with InProcessRunner(FakeBackend(script), MemoryStore(), capacity=2, options=options) as runner:
        result = await asyncio.wait_for(runner.solve(spec), 20)
    for summary in result.rounds[:2]:
        assert [(i.island, i.first, i.size) for i in summary.islands] == [(0, 0, 4), (1, 4, 4)]
        assert [[(v.answer, v.count) for v in i.votes] for i in summary.islands] == [[("42", 4)], [("7", 4)]]
        assert sum(i.decode_tokens for i in summary.islands) == summary.usage.decode_tokens
    for c in result.rounds[1].candidates:  # round 1 drew its parents within its island
        assert {p // 4 for p in c.parents} == {c.index // 4}
    assert result.rounds[2].islands == []  # one island: the round's own votes say it all
    assert result.answer == "42"


# -- the report ----------------------------------------------------------------------------------------


def island_run(path: Path) -> RunDir:
    """One configuration with islands (N=8, M=2, T=2): in rounds 0 and 1 island 0 is always right and
    island 1 always wrong; the merged round 2 is right everywhere."""
    config = build_configs(["smoke"], "population=8;islands=2;rounds=2")[0]
    dataset = Dataset(
        name="d", path="/d.jsonl", sha256="0" * 64, problems=[Problem(id="p1", problem="P", answer="5")]
    )
    manifest = Manifest(
        model="m",
        seeds=[0],
        configs=[config],
        datasets=[dataset_entry(dataset, None)],
        grading={"timeout_s": 5.0},
    )
    run = RunDir(path)
    run.save_manifest(manifest)
    records = []
    for r in range(3):
        for i in range(8):
            correct = r == 2 or i < 4
            records.append(
                CandidateRecord(
                    config=config.id,
                    dataset="d",
                    problem="p1",
                    seed=0,
                    round=r,
                    index=i,
                    parents=[],
                    answer="5" if correct else "6",
                    boxed="5" if correct else "6",
                    correct=correct,
                    reason="correct" if correct else "wrong",
                    finish_reason="stop",
                    decode_tokens=10,
                    prompt_tokens=10,
                )
            )
    run.records.append(records)
    return run


def test_the_report_shows_metrics_per_island(tmp_path: Path) -> None:
    data = compute(island_run(tmp_path / "run"), None)
    (group,) = data.groups
    for r in (0, 1):
        assert [(i.island, i.pass1, i.maj) for i in group.rounds[r].islands] == [(0, 1.0, 1.0), (1, 0.0, 0.0)]
    assert group.rounds[2].islands == []
    text = render_markdown(data)
    assert "## Islands" in text
    # The Islands section only: other tables (avg@k's rounds and seeds) may hold "| 2 | 1 |".
    islands = text.split("## Islands", 1)[1].split("\n## ", 1)[0]
    assert "| 0 | 2 | 100.0 · 0.0 | 100.0 · 0.0 |" in islands and "| 2 | 1 |" not in islands
