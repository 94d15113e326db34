"""Round views shared between keys (issue 20, item 4), as a user runs the service: ``mrsa serve`` and
``mrsa worker`` processes on a real Redis, the worker on the hostile server.

A round view of a running round clustered its answers on every read, in the API's one math-verify
pool: with a hostile answer each view cost the equivalence limit or more, and key B's view of its
own job waited behind key C's views (61 s). Now the worker that saves a candidate clusters its round
and stores the votes with it; the API only reads them.

The hostile server answers each problem's first two requests at once and holds the rest until the
test ends, so both jobs stay running with a round of two stored candidates: key C's holds
``9^{9^{9}}`` beside ``42`` (comparing them runs away), key B's ``42`` and ``\\frac{84}{2}``
(benign, but two normal forms: comparing them needs the math pool).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from mrsa.domain import Candidate
from mrsa.engine.equivalence import Equivalence
from mrsa.engine.selection import tally_bounded
from mrsa.engine.settings import EQUIVALENCE_TIMEOUT_S
from tests.console_stack import ConsoleStack, console_stack
from tests.hostile.server import HostileServer, completion

POISON = "9^{9^{9}}"
KEY_B, KEY_C = "round-views-key-b-5c1e", "round-views-key-c-93d0"
LIMIT_S = EQUIVALENCE_TIMEOUT_S  # the default limit (5 s): clustering the hostile round costs more
FAST_S = 1.0  # the bound on key B's view (median: the machine is shared)
VIEWS_OF_C = 6
ATTEMPTS = 5
PARAMS: dict[str, Any] = {"population": 3, "subset": 1, "rounds": 0, "budget": 64, "tail": 8, "seed": 1}
ANSWERS = {"KEYC": [POISON, "42"], "KEYB": ["42", "\\frac{84}{2}"]}


class TwoThenHold:
    """Per problem (the marker in its text), its two scripted answers, then replies held until
    ``release`` is set: the job's round stays running with two candidates stored."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.seen: collections.Counter[str] = collections.Counter()

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        prompt = str((await request.json())["messages"])
        marker = next(m for m in ANSWERS if m in prompt)
        turn = self.seen[marker]
        self.seen[marker] += 1
        if turn >= len(ANSWERS[marker]):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), 300)
            return web.json_response(completion("\\boxed{42}"))
        return web.json_response(completion(f"The answer is \\boxed{{{ANSWERS[marker][turn]}}}."))


@contextlib.asynccontextmanager
async def service(backend: str, folder: Path) -> AsyncIterator[ConsoleStack]:
    """The console tests' stack (Redis, ``mrsa serve`` with keys B and C, one ``mrsa worker`` on
    ``backend``), entered and left in a thread: the hostile server lives on this event loop."""
    worker_args = [
        "--backend",
        backend,
        "--backend-kind",
        "vllm",
        "--concurrency",
        "8",
        "--consumer",
        "views-w1",
    ]
    stack = console_stack(folder, worker_args, serve_args=["--api-keys", f"{KEY_B},{KEY_C}"])
    entered = await asyncio.to_thread(stack.__enter__)
    try:
        yield entered
    finally:
        await asyncio.to_thread(stack.__exit__, None, None, None)


def fmt(times: list[float]) -> str:
    return f"median {statistics.median(times):.3f}s, max {max(times):.3f}s over {len(times)}"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def submit(client: httpx.AsyncClient, stack: ConsoleStack, key: str, marker: str) -> str:
    body = {"problem": f"{marker}: what is 6*7?", "preset": "smoke", "params": PARAMS}
    r = await client.post(f"{stack.url}/v1/jobs", json=body, headers=auth(key))
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


async def timed_view(
    client: httpx.AsyncClient, stack: ConsoleStack, key: str, job_id: str
) -> tuple[float, dict[str, Any]]:
    started = time.monotonic()
    r = await client.get(f"{stack.url}/v1/jobs/{job_id}/rounds/0", headers=auth(key))
    elapsed = time.monotonic() - started
    assert r.status_code == 200, f"{r.status_code} {r.text}\n{stack.logs()}"
    return elapsed, r.json()


async def two_stored(client: httpx.AsyncClient, stack: ConsoleStack, key: str, job_id: str) -> None:
    """Wait until the job's round 0 holds its two answered candidates (the third is held) and its
    votes count both (the worker clusters the round before announcing a candidate)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        _, view = await timed_view(client, stack, key, job_id)
        if len(view["candidates"]) == 2 and view.get("tallied", 2) == 2:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"job {job_id}: two candidates not stored and counted within 90 s\n{stack.logs()}")


async def api_clusterings(client: httpx.AsyncClient, stack: ConsoleStack) -> float:
    """The API process's ``mrsa_equivalence_fallbacks_total`` plus ``mrsa_round_clusterings_total``:
    any clustering it ran of the hostile round counts a timeout in the first."""
    text = (await client.get(f"{stack.url}/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(("mrsa_equivalence_fallbacks_total{", "mrsa_round_clusterings_total "))
    )


@pytest.mark.redis
@pytest.mark.timeout(900)
async def test_one_keys_hostile_round_views_do_not_delay_anothers(
    server: HostileServer, tmp_path: Path
) -> None:
    held = TwoThenHold()
    server.play(held)
    async with service(server.url, tmp_path) as stack, httpx.AsyncClient(timeout=120) as client:
        try:
            job_c = await submit(client, stack, KEY_C, "KEYC")
            job_b = await submit(client, stack, KEY_B, "KEYB")
            await two_stored(client, stack, KEY_C, job_c)
            await two_stored(client, stack, KEY_B, job_b)

            # Key C's views of its hostile round in flight, then key B's view of its own job; five
            # times, for a median on a busy machine.
            times_b: list[float] = []
            times_c: list[float] = []
            views_b: list[dict[str, Any]] = []
            for _ in range(ATTEMPTS):
                views_c = [
                    asyncio.create_task(timed_view(client, stack, KEY_C, job_c)) for _ in range(VIEWS_OF_C)
                ]
                await asyncio.sleep(0.2)
                elapsed_b, view_b = await timed_view(client, stack, KEY_B, job_b)
                times_b.append(elapsed_b)
                views_b.append(view_b)
                times_c += [t for t, _ in await asyncio.gather(*views_c)]
            print(f"key B's view: {fmt(times_b)}; key C's views: {fmt(times_c)}")
            # Clustering key C's round costs at least one limit: no view waited for one.
            assert max(times_b) < LIMIT_S and max(times_c) < LIMIT_S, (times_b, times_c)
            assert statistics.median(times_b) < FAST_S, f"key B's views took {fmt(times_b)}"
            for view_b in views_b:  # 84/2 is 42: one class, named by its lower-indexed answer
                [vote] = view_b["votes"]
                assert vote["answer"] in ANSWERS["KEYB"] and vote["count"] == vote["finished"] == 2
                assert view_b.get("tallied") == 2 and len(view_b["candidates"]) == 2

            # The same running round viewed again and again: read, never clustered again.
            repeats = [await timed_view(client, stack, KEY_C, job_c) for _ in range(3)]
            assert max(t for t, _ in repeats) < LIMIT_S
            assert await api_clusterings(client, stack) == 0  # the API compared no answers

            # The stored votes are what clustering the stored answers gives.
            view_c = repeats[-1][1]
            answers = [
                Candidate(round=0, index=c["index"], answer=c["answer"], finish_reason=c["finish_reason"])
                for c in view_c["candidates"]
            ]
            eq = Equivalence(timeout_s=LIMIT_S, workers=1)
            try:
                votes, clustering = await tally_bounded(answers, eq)
            finally:
                eq.close()
            assert [v.model_dump() for v in votes] == view_c["votes"]
            assert clustering.timeouts == view_c["equivalence_timeouts"] == 1
            assert sorted(v["answer"] for v in view_c["votes"]) == sorted([POISON, "42"])

            # A cancelled hostile job's result: built from the stored votes, not clustered (11.4 s).
            r = await client.post(f"{stack.url}/v1/jobs/{job_c}/cancel", headers=auth(KEY_C))
            assert r.status_code == 200, r.text
            started = time.monotonic()
            r = await client.get(f"{stack.url}/v1/jobs/{job_c}/result", headers=auth(KEY_C))
            elapsed = time.monotonic() - started
            assert r.status_code == 200, r.text
            assert elapsed < LIMIT_S, f"the cancelled job's result took {elapsed:.2f}s"
            assert r.json()["rounds"][0]["votes"] == view_c["votes"]
        finally:
            held.release.set()
            await asyncio.sleep(0.5)  # let the held replies go out before the worker is stopped
