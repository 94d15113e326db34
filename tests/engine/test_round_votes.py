"""A round's votes are clustered by the worker that saves a candidate and stored with the round
(issue 20, item 4): the stored classes are what clustering the stored answers gives, an ended
round's count every candidate, and one process's clusterings of one round are coalesced."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from mrsa.domain import Candidate, Job, JobSpec, JobStatus
from mrsa.engine.equivalence import Clustering, Equivalence, cluster
from mrsa.engine.job_service import JobService
from mrsa.params import RSAParams
from mrsa.store.memory import MemoryStore
from tests.fakes import FakeBackend
from workers.inprocess import InProcessRunner
from workers.loop import WorkerOptions

ANSWERS = ["42", "\\frac{84}{2}", "41", "42.0"]


def script(request: Any) -> str:
    return f"So the answer is \\boxed{{{ANSWERS[int(request.tag['index']) % len(ANSWERS)]}}}"


async def test_the_stored_votes_are_what_clustering_the_stored_answers_gives() -> None:
    params = RSAParams(population=4, subset=2, rounds=1, budget=64, tail=16, seed=2)
    store = MemoryStore()
    options = WorkerOptions(block_ms=20, cancel_check_s=0.01, heartbeat_s=0.05)
    async with InProcessRunner(FakeBackend(script), store, capacity=4, options=options) as runner:
        result = await asyncio.wait_for(runner.solve(JobSpec(problem="What is 6*7?", params=params)), 120)
    assert result.status == JobStatus.succeeded
    for summary in result.rounds:
        candidates = await store.get_candidates(result.job_id, summary.index)
        stored = await store.get_round_votes(result.job_id, summary.index)
        assert stored is not None and stored.tallied == summary.tallied == len(candidates) == 4
        answers = [c.answer or "" for c in candidates]
        expected = [[candidates[i].index for i in group] for group in cluster(answers)]
        assert stored.groups == expected
    assert [(v.answer, v.count) for v in result.rounds[0].votes] == [("42", 3), ("41", 1)]


class CountingEquivalence(Equivalence):
    """An Equivalence that counts its clusterings and holds each one until ``gate`` opens."""

    def __init__(self) -> None:
        super().__init__(timeout_s=10.0, workers=1)
        self.runs: list[int] = []
        self.gate = asyncio.Event()

    async def acluster(self, answers: Sequence[str]) -> Clustering:
        self.runs.append(len(answers))
        await self.gate.wait()
        return Clustering(groups=cluster(answers))


async def test_one_rounds_clusterings_in_a_process_are_coalesced() -> None:
    """Five candidates saved while the round is being clustered share one next run, which sees them
    all; every caller returns votes that count its own candidate."""
    store = MemoryStore()
    job = Job(id="j1", spec=JobSpec(problem="q", params=RSAParams(population=8, subset=2, rounds=0)))
    await store.create_job(job, [])
    eq = CountingEquivalence()
    jobs = JobService(store, eq)
    try:
        await store.save_candidate("j1", Candidate(round=0, index=0, answer="42", finish_reason="stop"))
        first = asyncio.create_task(jobs.tally("j1", 0))
        await asyncio.sleep(0.05)  # the first run has started and waits at the gate
        waiting = []
        for i in range(1, 6):
            await store.save_candidate("j1", Candidate(round=0, index=i, answer="42", finish_reason="stop"))
            waiting.append(asyncio.create_task(jobs.tally("j1", 0)))
        await asyncio.sleep(0.05)
        eq.gate.set()
        tallied = [v.tallied for v in await asyncio.gather(first, *waiting)]
    finally:
        eq.close()
    assert eq.runs == [1, 6]  # two runs for six candidates
    assert tallied == [1, 6, 6, 6, 6, 6]
    stored = await store.get_round_votes("j1", 0)
    assert stored is not None and stored.tallied == 6 and stored.groups == [[0, 1, 2, 3, 4, 5]]
