"""The chat endpoint as a drop-in for Zyphra's RSA proxy: its fields and aliases, the ``rsa`` object,
passthrough of non-RSA requests (against the real simulator), metadata, and multi-turn problems."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mrsa.api.chat.passthrough import PASSTHROUGH_HEADER, passthrough_reason
from mrsa.api.chat.proxy_fields import PROXY_FIELDS, ProxyFieldConflict
from mrsa.api.chat.schemas import ChatCompletionRequest
from mrsa.api.deps import BackendHandle
from mrsa.backends.factory import make_backend
from mrsa.engine.prompts import aggregation_prompt, conversation_problem, round0_prompt
from mrsa.params import RSAParams, resolve_params
from mrsa.prices import Price, PriceTable
from mrsa.store.redis import RedisStore
from testkit.simulator.process import running_simulator
from tests.api.test_api import H1, client_for, make_app, served, sse_events
from workers.inprocess import InProcessRunner

DOCS = Path(__file__).resolve().parents[2] / "docs" / "zyphra-proxy.md"
USER = [{"role": "user", "content": "Solve the problem and explain your reasoning: 15 * 17"}]
# The curl example of the proxy's README (examples/online_serving/rsa_proxy_server_README.md).
PROXY_README_CURL: dict[str, Any] = {
    "model": "meta-llama/Llama-3.1-8B-Instruct",
    "messages": USER,
    "temperature": 0.8,
    "max_tokens": 2048,
    "rsa_t": 1,
    "rsa_n": 4,
    "rsa_k": 2,
    "rsa_final_n": 1,
    "final_temperature": 0.2,
    "return_aggregation_prompt": True,
}


def params_of(body: dict[str, Any]) -> RSAParams:
    request = ChatCompletionRequest.model_validate(body)
    return resolve_params(request.preset, request.overrides())


# -- the mapping ----------------------------------------------------------------------------------


def test_the_proxy_readme_request_maps_onto_our_knobs() -> None:
    params = params_of(PROXY_README_CURL)
    assert (params.population, params.subset, params.rounds) == (4, 2, 1)
    assert params.stages == 2  # rsa_t counts aggregation steps, as our rounds (T) do
    assert params.final_population == 1 and params.final_temperature == 0.2
    assert params.budget == 2048 and params.sampling.temperature == 0.8
    assert params.tail == 2048  # the preset's τ=4096 does not fit β=2048: cut to β, not refused


def test_aliases_and_the_rsa_object_mean_the_same() -> None:
    plain = {"model": "m", "messages": USER, "max_tokens": 900, "rsa_t": 2, "rsa_n": 6, "rsa_k": 3}
    long_names = {
        **plain,
        "rsa_short_resp_len": 500,
        "rsa_tail_window_len": 200,
        "rsa_use_pacore": True,
        "final_aggregation_prompts": 2,
        "rsa_final_top_p": 0.9,
        "rsa_final_top_k": 40,
        "rsa_final_temperature": 0.6,
    }
    short_names = {
        **plain,
        "short_resp_len": 500,
        "tail_window_len": 200,
        "use_pacore": True,
        "rsa_final_n": 2,
        "final_top_p": 0.9,
        "final_top_k": 40,
        "final_temperature": 0.6,
    }
    inner = {k: v for k, v in short_names.items() if k not in ("model", "messages", "max_tokens")}
    nested = {"model": "m", "messages": USER, "max_tokens": 900, "rsa": inner}
    expected = params_of(short_names)
    assert params_of(long_names) == expected == params_of(nested)
    assert (expected.budget, expected.final_budget, expected.tail) == (
        500,
        900,
        200,
    )  # max_tokens: last stage
    assert (expected.prompts, expected.tail_source) == ("pacore", "answer_or_tail")
    assert (expected.final_population, expected.final_top_p, expected.final_top_k) == (2, 0.9, 40)
    summarize = params_of({**plain, "summarize": "yes", "rsa_tail_window": False})
    assert summarize.tail_mode == "summarize" and summarize.tail == summarize.budget == 900
    assert params_of({**plain, "rsa_final_n": 0}).final_population is None  # 0 = N, as in the proxy


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"rsa_n": 4, "population": 8}, ("rsa_n", "population")),
        ({"rsa_final_n": 1, "final_aggregation_prompts": 2}, ("final_aggregation_prompts", "rsa_final_n")),
        ({"use_pacore": True, "tail_source": "trace"}, ("use_pacore", "tail_source")),
        ({"rsa_tail_window": True, "rsa_summarize": True}, ("rsa_tail_window", "rsa_summarize")),
        ({"rsa_tail_window": False, "tail_window_len": 10}, ("rsa_tail_window",)),
        ({"summary_prompt": "Summarise."}, ("summary_prompt",)),
    ],
)
def test_conflicting_names_are_refused_naming_both(extra: dict[str, Any], named: tuple[str, ...]) -> None:
    request = ChatCompletionRequest.model_validate({"model": "m", "messages": USER, "rsa_t": 1, **extra})
    with pytest.raises(ProxyFieldConflict) as caught:
        request.overrides()
    assert str(caught.value).split(":", 1)[0] == named[0]
    for name in named:
        assert name in str(caught.value)


async def test_conflicts_and_bad_values_are_422_naming_the_field(redis_store: RedisStore) -> None:
    app, _ = make_app(redis_store)
    cases = [
        ({"rsa_n": 4, "population": 8}, "rsa_n", "population"),
        ({"rsa": {"rsa_n": 4}, "rsa_n": 5}, "rsa_n", "rsa.rsa_n"),
        ({"rsa_n": "many"}, "rsa_n", "rsa_n"),
        ({"rsa_n": 2, "rsa_k": 3}, "subset", "subset"),
    ]
    async with client_for(app) as api:
        for extra, field, mentioned in cases:
            body = {"model": "m", "messages": USER, "rsa_t": 1, **extra}
            r = await api.post("/v1/chat/completions", json=body, headers=H1)
            assert r.status_code == 422, r.text
            assert r.json()["detail"][0]["loc"][-1] == field, r.json()
            assert mentioned in r.json()["message"]


def test_every_proxy_field_is_declared_and_documented() -> None:
    declared = ChatCompletionRequest.model_fields
    table = DOCS.read_text(encoding="utf-8")
    rows = {m.group(1) for m in re.finditer(r"^\| `([a-z_]+)`", table, re.MULTILINE)}
    for field in PROXY_FIELDS:
        for name in field.names:
            assert name in declared, name
            assert f"`{name}`" in table, f"{name} is missing from {DOCS.name}"
        assert field.name in rows, f"{field.name} has no row in the mapping table"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"model": "m", "messages": USER}, "no RSA fields"),
        ({"model": "m", "messages": USER, "temperature": 0.7, "seed": 1, "max_tokens": 9}, "no RSA fields"),
        ({"model": "m", "messages": USER, "rsa": False, "rsa_n": 4}, "rsa: false"),
        ({"model": "m", "messages": USER, "preset": "smoke", "tools": [{"type": "function"}]}, "tools"),
        ({"model": "m", "messages": USER, "rsa_n": 4, "n": 2}, "n > 1"),
        ({"model": "m", "messages": USER, "rsa_t": 0, "rsa_n": 4}, "rsa_t: 0"),
        ({"model": "m", "messages": USER, "rsa_n": 4}, None),
        ({"model": "m", "messages": USER, "preset": "smoke"}, None),
        ({"model": "m", "messages": USER, "population": 2}, None),
        ({"model": "m", "messages": USER, "rsa": True}, None),
        ({"model": "m", "messages": USER, "rsa": {"rsa_t": 1}}, None),
        ("not an object", None),
    ],
)
def test_which_requests_pass_through(body: Any, reason: str | None) -> None:
    assert passthrough_reason(body) == reason


# -- multi-turn -----------------------------------------------------------------------------------

turn = st.tuples(st.sampled_from(["system", "user", "assistant", "developer", "tool"]), st.text(max_size=40))


@given(st.lists(turn, max_size=6), st.text(min_size=1, max_size=40).filter(str.strip))
def test_the_conversation_is_one_problem_shared_by_every_prompt(
    earlier: list[tuple[str, str]], question: str
) -> None:
    turns = [*earlier, ("user", question)]
    problem = conversation_problem(turns)
    assert problem.endswith(question.strip())
    for _role, text in earlier:
        if text.strip():
            assert text.strip() in problem
    # Every prompt of a job starts with the same bytes: the conversation (prefix caching reuses it).
    for prompt in (
        round0_prompt("v1", problem),
        aggregation_prompt("v1", problem, ["tail one"]),
        aggregation_prompt("v1", problem, ["a", "b"]),
    ):
        assert prompt.startswith(problem + "\n")


def test_conversation_rendering() -> None:
    assert conversation_problem([("user", "  What is 2+2?  ")]) == "What is 2+2?"
    chat = [
        ("system", "You are terse."),
        ("user", "Let x = 3."),
        ("assistant", "Noted."),
        ("user", "What is x^2?"),
        ("assistant", "Prefill that is left out"),
    ]
    assert conversation_problem(chat) == (
        "System: You are terse.\n\nUser: Let x = 3.\n\nAssistant: Noted.\n\nUser: What is x^2?"
    )
    assert conversation_problem([("system", "only a system prompt")]) == ""


# -- against the simulator ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def simulator() -> Iterator[str]:
    with running_simulator(["--step-base-ms=1", "--step-per-seq-ms=0", "--prefill-ms-per-token=0"]) as url:
        yield url


@pytest.mark.timeout(60)
async def test_passthrough_plain_streaming_and_errors(redis_store: RedisStore, simulator: str) -> None:
    app, deps = make_app(redis_store)
    deps.backend = BackendHandle(simulator)
    plain = {"model": "m", "messages": USER, "max_tokens": 40, "seed": 3, "temperature": 0.7}
    async with (
        served(app) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as api,
        httpx.AsyncClient(base_url=simulator, timeout=30) as sim,
    ):
        direct = (await sim.post("/v1/chat/completions", json=plain)).json()
        r = await api.post("/v1/chat/completions", json=plain, headers=H1)
        assert r.status_code == 200 and r.headers[PASSTHROUGH_HEADER] == "no RSA fields"
        through = r.json()
        assert through["choices"] == direct["choices"]
        assert through["usage"]["completion_tokens"] == direct["usage"]["completion_tokens"]
        assert "mrsa" not in through  # the backend's answer, not an RSA job

        # Streaming: the backend's server-sent events, relayed as they came.
        body = {**plain, "stream": True, "stream_options": {"include_usage": True}}
        async with api.stream("POST", "/v1/chat/completions", json=body, headers=H1) as streamed:
            assert streamed.status_code == 200
            assert streamed.headers["content-type"].startswith("text/event-stream")
            text = (await streamed.aread()).decode()
        data = [d for _, _, d in sse_events(text)]
        assert data[-1] == "[DONE]"
        chunks = [json.loads(d) for d in data[:-1]]
        content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        assert content == direct["choices"][0]["message"]["content"]
        counts = ("prompt_tokens", "completion_tokens")  # (the prefix cache now holds the prompt)
        assert [chunks[-1]["usage"][k] for k in counts] == [direct["usage"][k] for k in counts]

        # An upstream error comes back as the backend answered it: status and body.
        bad = {**plain, "max_tokens": 10**6}
        direct_error = await sim.post("/v1/chat/completions", json=bad)
        r = await api.post("/v1/chat/completions", json=bad, headers=H1)
        assert r.status_code == direct_error.status_code == 400
        assert r.json() == direct_error.json()

        # Auth still applies.
        r = await api.post("/v1/chat/completions", json=plain)
        assert r.status_code == 401


async def test_passthrough_without_a_backend_is_400(redis_store: RedisStore) -> None:
    app, _ = make_app(redis_store)
    async with client_for(app) as api:
        r = await api.post("/v1/chat/completions", json={"model": "m", "messages": USER}, headers=H1)
    assert r.status_code == 400
    assert "MRSA_BACKEND_URL" in r.json()["error"]["message"]


@pytest.mark.timeout(90)
async def test_the_proxy_readme_curl_works_unchanged(redis_store: RedisStore, simulator: str) -> None:
    prices = PriceTable(models={"*": Price(prompt=1.0, cached_prompt=0.5, decode=4.0)})
    app, deps = make_app(redis_store, prices=prices)
    deps.backend = BackendHandle(simulator)
    backend = await make_backend(simulator, "vllm")
    try:
        async with (
            served(app) as url,
            httpx.AsyncClient(base_url=url, timeout=60) as api,
            InProcessRunner(backend, redis_store, capacity=8),
        ):
            r = await api.post("/v1/chat/completions", json=PROXY_README_CURL, headers=H1)
            job_id = r.json()["mrsa"]["job_id"]
            result = (await api.get(f"/v1/jobs/{job_id}/result", headers=H1)).json()
    finally:
        await backend.aclose()
        await deps.backend.aclose()
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["choices"][0]["message"]["content"]
    metadata = answer["rsa_metadata"]
    assert (metadata["rsa_iterations"], metadata["rsa_n"], metadata["rsa_k"]) == (1, 4, 2)
    history = metadata["rsa_token_count_history"]
    assert len(history) == 2 and all(tokens > 0 for tokens in history)  # one mean per stage
    prompt = answer["aggregation_prompt"]
    assert metadata["rsa_final_aggregation_prompt"] == prompt
    assert prompt[0]["role"] == "user" and prompt[0]["content"].startswith(USER[0]["content"])
    job = await redis_store.get_job(answer["mrsa"]["job_id"])
    assert job is not None and job.spec.problem == USER[0]["content"]
    assert answer["usage"]["completion_tokens"] > 0
    # Cost: the price table of the API prices the result; the chat's usage reports cached tokens.
    usage = result["usage"]
    assert answer["usage"]["prompt_tokens_details"]["cached_tokens"] == usage["cached_prompt_tokens"] > 0
    expected = (usage["prompt_tokens"] - usage["cached_prompt_tokens"]) + 0.5 * usage["cached_prompt_tokens"]
    expected = (expected + 4.0 * usage["decode_tokens"]) / 1e6
    assert result["cost"]["total"] == pytest.approx(expected) == answer["mrsa"]["cost"]["total"]


@pytest.mark.embedded
@pytest.mark.timeout(120)
async def test_passthrough_to_the_embedded_llama_cpp_server(
    redis_store: RedisStore, embedded_url: str
) -> None:
    """The embedded model's own server answers a plain chat request through mrsa, streamed or not."""
    app, deps = make_app(redis_store)
    deps.backend = BackendHandle(embedded_url)
    plain = {"model": "m", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8, "seed": 1}
    async with served(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as api:
        r = await api.post("/v1/chat/completions", json=plain, headers=H1)
        assert r.status_code == 200, r.text
        assert r.headers[PASSTHROUGH_HEADER] == "no RSA fields"
        body = r.json()
        assert body["object"] == "chat.completion" and "mrsa" not in body
        assert body["usage"]["completion_tokens"] <= 8
        async with api.stream(
            "POST", "/v1/chat/completions", json={**plain, "stream": True}, headers=H1
        ) as s:
            assert s.status_code == 200 and s.headers["content-type"].startswith("text/event-stream")
            text = (await s.aread()).decode()
    data = [d for _, _, d in sse_events(text)]
    assert data[-1] == "[DONE]"
    assert all(json.loads(d)["object"] == "chat.completion.chunk" for d in data[:-1])
