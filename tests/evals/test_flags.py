"""Flags per candidate and per run (pure): which candidate carries which flag, how a group's flags
add up over its runs, and how a run the backend failed is counted."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from evals.flags import FLAGS, candidate_flags, cell_letters, group_flags
from evals.grading import REASONS
from evals.records import CandidateRecord, UnitKey


def record(unit: UnitKey, rnd: int, index: int, **fields: Any) -> CandidateRecord:
    base: dict[str, Any] = {
        "parents": [],
        "correct": False,
        "reason": "wrong",
        "finish_reason": "stop",
        "decode_tokens": 1,
        "prompt_tokens": 1,
        "boxed": "1",
        "answer": "1",
    }
    return CandidateRecord(
        config=unit.config,
        dataset=unit.dataset,
        problem=unit.problem,
        seed=unit.seed,
        round=rnd,
        index=index,
        **{**base, **fields},
    )


U = UnitKey("c", "d", "p", 0)


def test_each_flag_by_hand() -> None:
    assert candidate_flags(record(U, 0, 0)) == []
    assert candidate_flags(record(U, 0, 0, reason="parse_error", boxed="\\quad")) == ["unparsed_box"]
    assert candidate_flags(record(U, 0, 0, reason="no_boxed", boxed=None, answer="42")) == ["unboxed_answer"]
    assert (
        candidate_flags(record(U, 0, 0, reason="no_boxed", boxed=None, answer=None)) == []
    )  # no answer at all
    assert candidate_flags(record(U, 0, 0, finish_reason="length", boxed=None, answer=None)) == ["truncated"]
    assert candidate_flags(record(U, 0, 0, finish_reason="abort")) == ["backend_failed"]
    assert candidate_flags(record(U, 0, 0, finish_reason="error")) == ["backend_failed"]


outcomes = st.tuples(
    st.sampled_from(REASONS),
    st.sampled_from(["stop", "length", "abort", "error"]),
    st.booleans(),  # boxed
    st.booleans(),  # the engine found an answer
)


@given(
    st.dictionaries(
        st.tuples(st.sampled_from(["p1", "p2", "p3"]), st.integers(0, 2)),
        st.lists(st.lists(outcomes, min_size=0, max_size=3), min_size=2, max_size=2),
        min_size=1,
    ),
    st.sets(st.tuples(st.sampled_from(["p1", "p2", "p3"]), st.integers(0, 2))),
)
def test_group_flags_add_up_over_runs(
    runs: dict[tuple[str, int], list[list[tuple[str, str, bool, bool]]]], failed: set[tuple[str, int]]
) -> None:
    """Two stages of 3 candidates; a run may miss candidates. Round totals are the sums of the runs'
    counts; a run counts as failed only when it is logged as failed *and* incomplete, in the first
    round it did not complete."""
    units = [UnitKey("c", "d", p, s) for p, s in runs]
    records = [
        record(
            UnitKey("c", "d", p, s),
            rnd,
            i,
            reason=reason,
            finish_reason=finish,
            boxed="1" if boxed else None,
            answer="1" if found else None,
        )
        for (p, s), stages in runs.items()
        for rnd, cands in enumerate(stages)
        for i, (reason, finish, boxed, found) in enumerate(cands)
    ]
    failures = {UnitKey("c", "d", p, s): "HTTP 500" for p, s in failed}
    flags = group_flags(units, records, [3, 3], failures)
    all_runs = [run for per in flags.problems.values() for run in per]
    assert sorted((p, r.seed) for p, per in flags.problems.items() for r in per) == sorted(runs)
    for rnd, total in enumerate(flags.rounds):
        assert total.candidates == sum(len(stages[rnd]) for stages in runs.values())
        for flag in FLAGS:
            assert total.count(flag) == sum(run.rounds[rnd].count(flag) for run in all_runs)
            assert total.count(flag) == sum(flag in candidate_flags(r) for r in records if r.round == rnd)
    for (p, s), stages in runs.items():
        [run] = [r for r in flags.problems[p] if r.seed == s]
        listed = {(c.round, c.index): c.flags for c in run.candidates}
        mine = [r for r in records if (r.problem, r.seed) == (p, s)]
        assert listed == {(r.round, r.index): candidate_flags(r) for r in mine if candidate_flags(r)}
        incomplete = [rnd for rnd, cands in enumerate(stages) if len(cands) < 3]
        if (p, s) in failed and incomplete:
            assert run.failed == "HTTP 500" and run.failed_round == incomplete[0]
        else:
            assert run.failed is None and run.failed_round is None
    assert sum(t.failed_runs for t in flags.rounds) == sum(r.failed is not None for r in all_runs)


def test_cell_letters_count_over_seeds() -> None:
    a, b = UnitKey("c", "d", "p", 0), UnitKey("c", "d", "p", 1)
    records = [
        record(a, 0, 0, finish_reason="length", boxed=None, answer=None),
        record(a, 0, 1, reason="no_boxed", boxed=None, answer="7"),
        record(b, 0, 0, finish_reason="length", boxed=None, answer=None),
        record(b, 0, 1),
    ]
    flags = group_flags([a, b], records, [2, 2], {b: "HTTP 500"})
    runs = flags.problems["p"]
    assert cell_letters(runs, 0) == "U1 T2"
    assert cell_letters(runs, 1) == "F1"  # seed 1 failed in round 1 (seed 0 never ran round 1: unlogged)
