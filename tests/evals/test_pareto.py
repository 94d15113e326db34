"""The Pareto front of accuracy against cost (property), and the pure parts of a sweep's timing:
session spans of killed sessions and the hardware a report states."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from evals.configs import build_configs
from evals.pareto import ParetoPoint, front
from evals.records import CandidateRecord, UnitKey
from evals.rundir import BackendEntry, Manifest, Session
from evals.timing import Hardware, hardware_of, session_spans
from tests.evals.test_flags import record


def point(i: int, accuracy: float, tokens: float) -> ParetoPoint:
    return ParetoPoint(config=f"c{i}", dataset="d", round=0, accuracy=accuracy, tokens=tokens)


def tokens(p: ParetoPoint) -> float:
    return p.tokens


def dominates(a: ParetoPoint, b: ParetoPoint) -> bool:
    return (
        a.tokens <= b.tokens and a.accuracy >= b.accuracy and (a.tokens, a.accuracy) != (b.tokens, b.accuracy)
    )


@given(st.lists(st.tuples(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), st.integers(1, 20)), max_size=12))
def test_front_is_exactly_the_undominated_points(raw: list[tuple[float, int]]) -> None:
    points = [point(i, a, float(t)) for i, (a, t) in enumerate(raw)]
    best = front(points, tokens)
    for p in best:  # nothing beats a point of the front
        assert not any(dominates(q, p) for q in points)
    for p in points:  # and every other point is beaten by one of it, or ties one exactly
        if p not in best:
            assert any(dominates(q, p) or (q.tokens, q.accuracy) == (p.tokens, p.accuracy) for q in best)
    assert [p.tokens for p in best] == sorted(p.tokens for p in best)
    assert all(a.accuracy < b.accuracy for a, b in itertools.pairwise(best))


def test_points_without_a_cost_are_left_out() -> None:
    points = [point(0, 0.5, 10.0), point(1, 0.9, 20.0)]
    assert front(points, lambda p: p.cost) == []
    assert [p.config for p in front(points, tokens)] == ["c0", "c1"]


def session(
    started: float, finished: float | None, gpus: int | None = None, name: str | None = None
) -> Session:
    return Session(
        started_at=started,
        finished_at=finished,
        backend=BackendEntry(url="http://x", kind="vllm"),
        mrsa_version="0",
        git_revision=None,
        gpus=gpus,
        gpu_name=name,
    )


def rec(finished: float) -> CandidateRecord:
    return record(UnitKey("c", "d", "p", 0), 0, int(finished), started_at=finished - 1, finished_at=finished)


def test_a_killed_session_ends_at_its_last_record_before_the_next() -> None:
    sessions = [session(100, None), session(200, 260), session(300, None)]
    records = [rec(t) for t in (110, 150, 210, 250)]
    # the first was killed after its record at 150; the third started but recorded nothing
    assert session_spans(sessions, records) == [50, 60, 0]


def test_the_hardware_a_report_states() -> None:
    configs = build_configs(["smoke"])
    manifest = Manifest(seeds=[0], configs=configs, datasets=[], grading={})
    assert hardware_of(manifest, None) == Hardware()
    manifest.sessions = [session(0, 1, 8, "H100"), session(2, 3, 8, "H100")]
    assert hardware_of(manifest, None) == Hardware(gpus=8, gpu_name="H100")
    assert hardware_of(manifest, Hardware(gpus=2)) == Hardware(gpus=2)  # mrsa report --gpus wins
    manifest.sessions.append(session(4, 5, 4, "A100"))
    assert hardware_of(manifest, None) == Hardware()  # sessions disagree: not stated
