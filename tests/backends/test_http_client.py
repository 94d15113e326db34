"""``HttpClient``: retries and backoff, error classification, context overflow, concurrency limit.

Every test talks to a :class:`~mrsa.backends.wire.MockWire` under the client's own retry path;
sleeping is replaced by a recorder, so backoff is asserted on the delays asked for, not on
wall-clock time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from mrsa.backends.base import (
    BackendRequestError,
    BackendServerError,
    BackendUnavailable,
    ContextOverflowError,
    ReplyTooLargeError,
)
from mrsa.backends.http import BackendDeadlineExceeded, HttpClient, HttpOptions
from mrsa.backends.wire import MockWire, WireError, WireRequest, WireResponse, WireTimeout
from tests.fakes import Sleeps

BASE = "http://mock-server:8000"

Handler = Callable[[WireRequest], Any]


class Script:
    """A wire handler answering from a list, one entry per call (the last one repeats).

    An entry is a ``WireResponse``, or a wire failure raised for that request."""

    def __init__(self, *answers: WireResponse | WireError) -> None:
        self.answers = list(answers)
        self.requests: list[WireRequest] = []

    def __call__(self, request: WireRequest) -> WireResponse:
        self.requests.append(request)
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        if isinstance(answer, WireError):
            raise answer
        return answer


def make_client(handler: Handler, sleeps: Sleeps, **options: Any) -> HttpClient:
    opts = HttpOptions(**{"max_retries": 3, "backoff_s": 0.5, "backoff_cap_s": 20.0, **options})
    return HttpClient(BASE, opts, backend_kind="test", wire=MockWire(handler), sleep=sleeps)


@pytest.fixture
def upper_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the full-jitter backoff deterministic: always the upper bound of the window."""
    monkeypatch.setattr("mrsa.backends.http.random.uniform", lambda low, high: high)


# -- retries ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 429])
async def test_retries_on_5xx_and_429_with_doubling_backoff(status: int, upper_jitter: None) -> None:
    script = Script(
        WireResponse.of_json(status, {"error": "busy"}),
        WireResponse.of_json(status, {"error": "busy"}),
        WireResponse.of_json(200, {"ok": True}),
    )
    sleeps = Sleeps()
    client = make_client(script, sleeps)
    assert await client.request_json("POST", "/v1/chat/completions", {"x": 1}) == {"ok": True}
    assert len(script.requests) == 3
    assert sleeps.delays == [0.5, 1.0]  # backoff_s * 2**attempt
    # the same body is sent on every attempt
    assert {r.body for r in script.requests} == {b'{"x":1}'}
    await client.aclose()


async def test_backoff_is_capped(upper_jitter: None) -> None:
    script = Script(WireResponse.of_json(503, {"error": "down"}))
    sleeps = Sleeps()
    client = make_client(script, sleeps, max_retries=5, backoff_s=1.0, backoff_cap_s=3.0)
    with pytest.raises(BackendServerError):
        await client.request_json("GET", "/x")
    assert sleeps.delays == [1.0, 2.0, 3.0, 3.0, 3.0]
    await client.aclose()


async def test_jittered_backoff_stays_inside_its_window() -> None:
    script = Script(WireResponse.of_json(500, {"error": "x"}))
    sleeps = Sleeps()
    client = make_client(script, sleeps, max_retries=4, backoff_s=0.5)
    with pytest.raises(BackendServerError):
        await client.request_json("GET", "/x")
    assert len(sleeps.delays) == 4
    for attempt, delay in enumerate(sleeps.delays):
        assert 0.0 <= delay <= 0.5 * 2**attempt
    await client.aclose()


async def test_retry_after_header_is_honoured(upper_jitter: None) -> None:
    script = Script(
        WireResponse.of_json(429, {"error": "rate limited"}, {"Retry-After": "7"}),
        WireResponse.of_json(503, {"error": "loading"}, {"Retry-After": "0.25"}),
        WireResponse.of_json(503, {"error": "loading"}),  # no header: backoff again
        WireResponse.of_json(200, {"ok": 1}),
    )
    sleeps = Sleeps()
    client = make_client(script, sleeps)
    assert await client.request_json("GET", "/x") == {"ok": 1}
    assert sleeps.delays == [7.0, 0.25, 2.0]
    await client.aclose()


async def test_retry_after_is_capped(upper_jitter: None) -> None:
    script = Script(
        WireResponse.of_json(503, {"error": "loading"}, {"Retry-After": "86400"}),
        WireResponse.of_json(503, {"error": "loading"}, {"Retry-After": "inf"}),
        WireResponse.of_json(200, {"ok": 1}),
    )
    sleeps = Sleeps()
    client = make_client(script, sleeps, retry_after_cap_s=30.0)
    assert await client.request_json("GET", "/x") == {"ok": 1}
    assert sleeps.delays == [30.0, 30.0]
    await client.aclose()


async def test_the_total_deadline_bounds_an_attempt_whatever_the_wire() -> None:
    async def slow(request: WireRequest) -> WireResponse:
        await asyncio.sleep(30)
        return WireResponse.of_json(200, {})

    client = make_client(slow, Sleeps(), max_retries=0, deadline_s=0.2)
    with pytest.raises(BackendDeadlineExceeded, match=r"0\.2s deadline"):
        await asyncio.wait_for(client.request_json("GET", "/x"), 10)
    await client.aclose()


async def test_a_body_over_the_limit_is_final() -> None:
    script = Script(WireResponse(200, body=b"x" * 5000))
    client = make_client(script, Sleeps(), max_body_bytes=4096)
    with pytest.raises(ReplyTooLargeError, match="5000 bytes, over the limit of 4096"):
        await client.request_json("GET", "/x")
    assert len(script.requests) == 1
    await client.aclose()


@pytest.mark.parametrize(
    "exc",
    [WireError("ConnectError: simulated"), WireTimeout("ReadTimeout"), WireTimeout("ConnectTimeout")],
    ids=["connect-error", "read-timeout", "connect-timeout"],
)
async def test_retries_transport_errors_then_succeeds(exc: WireError, upper_jitter: None) -> None:
    script = Script(exc, exc, WireResponse.of_json(200, {"tokens": [1, 2]}))
    sleeps = Sleeps()
    client = make_client(script, sleeps)
    assert await client.request_json("POST", "/tokenize", {"prompt": "a"}) == {"tokens": [1, 2]}
    assert len(script.requests) == 3
    assert sleeps.delays == [0.5, 1.0]
    await client.aclose()


async def test_connect_error_exhausted_names_url_and_attempts() -> None:
    script = Script(WireError("ConnectError: simulated"))
    sleeps = Sleeps()
    client = make_client(script, sleeps, max_retries=2)
    with pytest.raises(BackendUnavailable) as info:
        await client.request_json("GET", "/health")
    message = str(info.value)
    assert f"{BASE}/health" in message
    assert "cannot connect" in message
    assert "after 3 attempts" in message
    assert info.value.url == f"{BASE}/health"
    assert info.value.retryable
    assert len(script.requests) == 3
    assert len(sleeps.delays) == 2
    await client.aclose()


async def test_read_timeout_exhausted_says_timed_out() -> None:
    script = Script(WireTimeout("ReadTimeout"))
    client = make_client(script, Sleeps(), max_retries=1)
    with pytest.raises(BackendUnavailable, match=r"timed out \(ReadTimeout\).*after 2 attempts"):
        await client.request_json("POST", "/v1/completions", {})
    await client.aclose()


async def test_server_error_exhausted_names_url_status_text_and_attempts() -> None:
    script = Script(WireResponse.of_json(503, {"error": {"message": "engine is loading"}}))
    client = make_client(script, Sleeps(), max_retries=2)
    with pytest.raises(BackendServerError) as info:
        await client.request_json("POST", "/v1/chat/completions", {})
    message = str(info.value)
    assert f"{BASE}/v1/chat/completions" in message
    assert "HTTP 503" in message
    assert "engine is loading" in message
    assert "after 3 attempts" in message
    assert len(script.requests) == 3
    await client.aclose()


async def test_per_call_retries_override_the_options() -> None:
    script = Script(WireResponse.of_json(500, {"error": "x"}))
    sleeps = Sleeps()
    client = make_client(script, sleeps, max_retries=5)
    with pytest.raises(BackendServerError) as info:
        await client.request_json("GET", "/health", retries=0)
    assert len(script.requests) == 1
    assert sleeps.delays == []
    assert "attempts" not in str(info.value)  # a single attempt is not announced as retried
    await client.aclose()


async def test_no_retry_on_400() -> None:
    script = Script(WireResponse.of_json(400, {"error": {"message": "temperature must be non-negative"}}))
    sleeps = Sleeps()
    client = make_client(script, sleeps)
    with pytest.raises(BackendRequestError) as info:
        await client.request_json("POST", "/v1/chat/completions", {"temperature": -1})
    assert not isinstance(info.value, ContextOverflowError)
    assert not info.value.retryable
    assert "HTTP 400" in str(info.value)
    assert "temperature must be non-negative" in str(info.value)
    assert len(script.requests) == 1
    assert sleeps.delays == []
    await client.aclose()


@pytest.mark.parametrize("status", [401, 404, 422])
async def test_no_retry_on_other_4xx(status: int) -> None:
    script = Script(WireResponse.of_json(status, {"detail": "Not Found"}))
    sleeps = Sleeps()
    client = make_client(script, sleeps)
    with pytest.raises(BackendRequestError, match="Not Found"):
        await client.request_json("GET", "/props")
    assert len(script.requests) == 1
    assert sleeps.delays == []
    await client.aclose()


@pytest.mark.parametrize(("status", "error"), [(400, BackendRequestError), (500, BackendServerError)])
async def test_an_error_body_nested_too_deep_to_decode_is_classified_as_text(
    status: int, error: type[Exception]
) -> None:
    """A hostile error reply is data: classified by its status, never a ``RecursionError``."""
    script = Script(WireResponse(status, body=b"[" * 200_000 + b"]" * 200_000))
    client = make_client(script, Sleeps(), max_retries=0)
    with pytest.raises(error, match=rf"HTTP {status}.*\[\[\["):
        await client.request_json("GET", "/x")
    await client.aclose()


async def test_body_that_is_not_json_is_retried_as_a_server_error() -> None:
    script = Script(WireResponse(200, body=b"<html>proxy page</html>"), WireResponse.of_json(200, [1]))
    client = make_client(script, Sleeps())
    assert await client.request_json("GET", "/x") == [1]
    assert len(script.requests) == 2
    await client.aclose()


async def test_empty_success_body_is_none_not_an_error() -> None:
    # vLLM's /health and Triton's /v2/health/ready answer 200 with an empty body.
    script = Script(WireResponse(200))
    client = make_client(script, Sleeps())
    assert await client.request_json("GET", "/health") is None
    assert len(script.requests) == 1
    await client.aclose()


# -- context overflow --------------------------------------------------------------------------------

VLLM_OLD = {
    "object": "error",
    "message": "This model's maximum context length is 8192 tokens. However, you requested 9100 tokens "
    "(1100 in the messages, 8000 in the completion). Please reduce the length of the messages or completion.",
    "type": "BadRequestError",
    "param": None,
    "code": 400,
}
VLLM_NEW = {
    "error": {
        "message": "'max_tokens' or 'max_completion_tokens' is too large: 8000. This model's maximum context "
        "length is 8192 tokens and your request has 1100 input tokens (8000 > 8192 - 1100).",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }
}
LLAMACPP_OLD = {
    "error": {
        "code": 400,
        "message": "the request exceeds the available context size, try increasing it",
        "type": "exceed_context_size_error",
    }
}
LLAMACPP_NEW = {
    "error": {
        "code": 400,
        "message": "request (9100 tokens) exceeds the available context size (8192 tokens), try increasing it",
        "type": "exceed_context_size_error",
        "n_prompt_tokens": 9100,
        "n_ctx": 8192,
    }
}
LLAMA_CPP_PYTHON = {  # llama_cpp.server rewrites "Requested tokens (…) exceed context window of …"
    "error": {
        "message": "This model's maximum context length is 8192 tokens. However, you requested 9100 tokens "
        "(1100 in the messages, 8000 in the completion). Please reduce the length of the messages or completion.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
}
LLAMA_CPP_PYTHON_RAW = {
    "error": {"message": "Requested tokens (9100) exceed context window of 8192", "type": "x"}
}
TRITON_VLLM = {  # the vLLM engine's own check, reported by Triton's Python backend as INTERNAL → 500
    "error": "Error generating stream: The decoder prompt (length 9100) is longer than the maximum model "
    "length of 8192. Make sure that `max_model_len` is no smaller than the number of text tokens."
}


@pytest.mark.parametrize(
    ("status", "body", "words"),
    [
        (400, VLLM_OLD, "maximum context length is 8192"),
        (400, VLLM_NEW, "maximum context length is 8192"),
        (400, LLAMACPP_OLD, "exceeds the available context size"),
        (400, LLAMACPP_NEW, "9100 tokens"),
        (400, LLAMA_CPP_PYTHON, "maximum context length is 8192"),
        (400, LLAMA_CPP_PYTHON_RAW, "Requested tokens (9100) exceed context window of 8192"),
        (500, LLAMA_CPP_PYTHON_RAW, "Requested tokens (9100) exceed context window of 8192"),
        (500, TRITON_VLLM, "longer than the maximum model length of 8192"),
    ],
    ids=[
        "vllm",
        "vllm-new",
        "llamacpp",
        "llamacpp-new",
        "llama-cpp-python",
        "lcp-raw-400",
        "lcp-raw-500",
        "triton",
    ],
)
async def test_context_overflow_is_final_and_explained(status: int, body: dict[str, Any], words: str) -> None:
    script = Script(WireResponse.of_json(status, body))
    sleeps = Sleeps()
    client = make_client(script, sleeps)
    with pytest.raises(ContextOverflowError) as info:
        await client.request_json("POST", "/v1/chat/completions", {"max_tokens": 8000})
    message = str(info.value)
    assert "do not fit the model's context window" in message
    assert "Lower budget/chunk" in message  # tells the user what to change
    assert words in message  # the server's own figures are kept
    assert f"{BASE}/v1/chat/completions" in message
    assert not info.value.retryable
    assert info.value.kind == "context_overflow"
    assert len(script.requests) == 1
    assert sleeps.delays == []
    await client.aclose()


# -- limits ------------------------------------------------------------------------------------------


async def test_concurrency_limit_is_respected() -> None:
    in_flight = 0
    peak = 0
    served = 0

    async def handler(request: WireRequest) -> WireResponse:
        nonlocal in_flight, peak, served
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        served += 1
        return WireResponse.of_json(200, {"n": served})

    client = make_client(handler, Sleeps(), concurrency=3)
    results = await asyncio.gather(*(client.request_json("GET", f"/r/{i}") for i in range(12)))
    assert len(results) == 12
    assert served == 12
    assert peak == 3  # never more than the limit, and the limit is actually used
    await client.aclose()


async def test_set_concurrency_resizes_the_limit() -> None:
    in_flight = 0
    peak = 0

    async def handler(request: WireRequest) -> WireResponse:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return WireResponse.of_json(200, {})

    client = make_client(handler, Sleeps(), concurrency=8)
    client.set_concurrency(1)
    assert client.options.concurrency == 1
    await asyncio.gather(*(client.request_json("GET", "/x") for _ in range(5)))
    assert peak == 1
    await client.aclose()


async def test_retry_releases_its_slot_while_backing_off() -> None:
    """A request sleeping between attempts must not hold a concurrency slot."""
    calls: dict[str, int] = {}
    in_flight = 0
    peak = 0
    gate = asyncio.Event()

    async def handler(request: WireRequest) -> WireResponse:
        nonlocal in_flight, peak
        path = request.path
        calls[path] = calls.get(path, 0) + 1
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            if path == "/flaky" and calls[path] == 1:
                return WireResponse.of_json(503, {"error": "x"})
            return WireResponse.of_json(200, {"path": path})
        finally:
            in_flight -= 1

    async def sleep(delay: float) -> None:
        await gate.wait()  # the flaky request backs off until the other one has been served

    opts = HttpOptions(max_retries=2, concurrency=1)
    client = HttpClient(BASE, opts, wire=MockWire(handler), sleep=sleep)
    flaky = asyncio.create_task(client.request_json("GET", "/flaky"))
    await asyncio.sleep(0.01)
    # would dead-lock (and time out here) if the backing-off request still held the only slot
    assert await asyncio.wait_for(client.request_json("GET", "/other"), 5) == {"path": "/other"}
    gate.set()
    assert await flaky == {"path": "/flaky"}
    assert calls == {"/flaky": 2, "/other": 1}
    assert peak == 1
    await client.aclose()


async def test_api_key_is_sent_as_bearer_token() -> None:
    script = Script(WireResponse.of_json(200, {}))
    client = make_client(script, Sleeps(), api_key="sk-test")
    await client.request_json("GET", "/v1/models")
    assert script.requests[0].headers["authorization"] == "Bearer sk-test"
    await client.aclose()


def test_server_default_concurrency_unless_set_explicitly() -> None:
    from mrsa.backends.http import with_default_concurrency

    assert with_default_concurrency(None, 1).concurrency == 1
    assert with_default_concurrency(HttpOptions(timeout_s=5), 1).concurrency == 1
    assert with_default_concurrency(HttpOptions(concurrency=8), 1).concurrency == 8
