"""``GET /v1/jobs/{id}/rounds/{r}``: a round's votes, usage and the lineage of its candidates (their
parents), readable while the job runs; and the preset a job was made from, on its view. On the
memory store, with candidates written straight into it and their round's votes stored as the worker
that saves a candidate stores them (the engine's part is tests/engine/test_engine.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from mrsa.api.app import create_app
from mrsa.api.deps import ApiConfig, ApiDeps
from mrsa.cli.settings import Settings
from mrsa.domain import Candidate, FinishReason, Usage
from mrsa.engine.job_service import JobService
from mrsa.params import PRESETS
from mrsa.store.memory import MemoryStore

KEY1, KEY2 = "rounds-key-one-4e1a", "rounds-key-two-77b0"
H1 = {"Authorization": f"Bearer {KEY1}"}
H2 = {"Authorization": f"Bearer {KEY2}"}
SMALL: dict[str, Any] = {"population": 3, "subset": 2, "rounds": 1, "budget": 32, "tail": 8}


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
async def api(store: MemoryStore) -> AsyncIterator[httpx.AsyncClient]:
    deps = ApiDeps(store=store, config=ApiConfig(api_keys=[KEY1, KEY2]))
    transport = httpx.ASGITransport(app=create_app(Settings(), deps))
    async with httpx.AsyncClient(transport=transport, base_url="http://rounds.test", timeout=30) as client:
        yield client


async def submit(api: httpx.AsyncClient, **params: Any) -> str:
    body = {"problem": "What is 7*6?", "preset": "smoke", "params": {**SMALL, **params}}
    r = await api.post("/v1/jobs", json=body, headers=H1)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def candidate(
    round_index: int, index: int, parents: list[int], answer: str | None, finish: FinishReason = "stop"
) -> Candidate:
    return Candidate(
        round=round_index,
        index=index,
        parents=parents,
        answer=answer,
        finish_reason=finish,
        usage=Usage(decode_tokens=10 + index, prompt_tokens=100, requests=1),
        tail=f"tail {round_index}:{index}",
    )


async def save(store: MemoryStore, job_id: str, cand: Candidate) -> None:
    """What a worker does with a candidate: store it, then cluster its round and store the votes."""
    await store.save_candidate(job_id, cand)
    await JobService(store).tally(job_id, cand.round)


async def test_a_running_round_shows_what_is_stored_so_far(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    job_id = await submit(api)
    r = await api.get(f"/v1/jobs/{job_id}/rounds/1", headers=H1)
    assert r.status_code == 200
    assert r.json()["candidates"] == [] and r.json()["votes"] == []
    await save(store, job_id, candidate(0, 0, [], "42"))
    await save(store, job_id, candidate(0, 2, [], None, "length"))
    r = await api.get(f"/v1/jobs/{job_id}/rounds/0", headers=H1)
    summary = r.json()
    assert [c["index"] for c in summary["candidates"]] == [0, 2]
    assert summary["votes"] == [{"answer": "42", "count": 1, "finished": 1}]
    assert summary["tallied"] == 2
    assert summary["truncated"] == 1
    assert summary["usage"] == {
        "decode_tokens": 22,
        "prompt_tokens": 200,
        "cached_prompt_tokens": 0,
        "requests": 2,
    }


async def test_a_running_round_reads_the_stored_votes_and_never_clusters(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    """The API compares no answers: a candidate whose worker has not stored the round's votes yet is
    listed, and ``tallied`` says the votes do not count it."""
    job_id = await submit(api)
    await save(store, job_id, candidate(0, 0, [], "42"))
    await store.save_candidate(job_id, candidate(0, 1, [], "\\frac{84}{2}"))  # votes not stored yet
    summary = (await api.get(f"/v1/jobs/{job_id}/rounds/0", headers=H1)).json()
    assert [c["index"] for c in summary["candidates"]] == [0, 1]
    assert summary["votes"] == [{"answer": "42", "count": 1, "finished": 1}] and summary["tallied"] == 1
    await JobService(store).tally(job_id, 0)
    summary = (await api.get(f"/v1/jobs/{job_id}/rounds/0", headers=H1)).json()
    assert summary["votes"] == [{"answer": "42", "count": 2, "finished": 2}] and summary["tallied"] == 2


async def test_parents_and_the_stored_result_of_an_ended_job(
    api: httpx.AsyncClient, store: MemoryStore
) -> None:
    job_id = await submit(api)
    for i in range(3):
        await save(store, job_id, candidate(0, i, [], "42"))
    lineage = {0: [1, 2], 1: [0, 2], 2: [0, 1]}
    for i, parents in lineage.items():
        await save(store, job_id, candidate(1, i, parents, "42"))
    live = (await api.get(f"/v1/jobs/{job_id}/rounds/1", headers=H1)).json()
    assert {c["index"]: c["parents"] for c in live["candidates"]} == lineage
    assert await JobService(store).finish(job_id)
    ended = (await api.get(f"/v1/jobs/{job_id}/rounds/1", headers=H1)).json()
    result = (await api.get(f"/v1/jobs/{job_id}/result", headers=H1)).json()
    assert ended == result["rounds"][1] == live  # the same summary before and after the end


async def test_rounds_past_the_last_one_are_404_and_other_keys_see_nothing(api: httpx.AsyncClient) -> None:
    job_id = await submit(api)
    r = await api.get(f"/v1/jobs/{job_id}/rounds/2", headers=H1)
    assert r.status_code == 404 and "rounds are 0 … 1" in r.json()["message"]
    assert (await api.get(f"/v1/jobs/{job_id}/rounds/0", headers=H2)).status_code == 404
    assert (await api.get(f"/v1/jobs/{job_id}/rounds/0")).status_code == 401
    r = await api.get(f"/v1/jobs/{job_id}/rounds/-1", headers=H1)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["path", "round_index"]
    # with selection "aggregate" the final call is stored as round T+1
    aggregate = await submit(api, selection="aggregate")
    assert (await api.get(f"/v1/jobs/{aggregate}/rounds/2", headers=H1)).status_code == 200
    assert (await api.get(f"/v1/jobs/{aggregate}/rounds/3", headers=H1)).status_code == 404


async def test_a_job_shows_the_preset_it_was_made_from(api: httpx.AsyncClient) -> None:
    job_id = await submit(api)
    assert (await api.get(f"/v1/jobs/{job_id}", headers=H1)).json()["preset"] == "smoke"
    r = await api.post("/v1/jobs", json={"problem": "1+1?", "params": {"budget": 64, "tail": 32}}, headers=H1)
    default = (await api.get(f"/v1/jobs/{r.json()['id']}", headers=H1)).json()
    assert default["preset"] == "zaya1"  # the default preset, named
    listed = (await api.get("/v1/jobs", headers=H1)).json()["jobs"]
    assert {j["preset"] for j in listed} == {"smoke", "zaya1"}


async def test_the_schema_carries_each_presets_values_for_forms(api: httpx.AsyncClient) -> None:
    schema = (await api.get("/openapi.json")).json()
    preset = schema["components"]["schemas"]["JobRequest"]["properties"]["preset"]
    assert preset["x-presets"] == PRESETS
    assert "/v1/jobs/{job_id}/rounds/{round_index}" in schema["paths"]
    assert {"/v1/reports", "/v1/reports/{name}", "/v1/reports/{name}/files/{file_name}"} <= set(
        schema["paths"]
    )
