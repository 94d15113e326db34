"""The simulator's HTTP face: the subset of vLLM's OpenAI-compatible server that mrsa uses, plus
``/sim/*`` endpoints for the benchmark (counters, the occupancy trace, reset between runs)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .model import (
    Output,
    Scheduler,
    Sequence,
    SimConfig,
    block_hashes,
    decode,
    encode,
    render_chat,
    sample_output,
)
from .script import load_script, scripted_for


def _error(status: int, message: str, kind: str = "BadRequestError") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


class _SchedulerMetrics(Collector):
    """vLLM's scheduler gauges and token counters, read from the scheduler at scrape time."""

    def __init__(self, app: FastAPI, model: str) -> None:
        self.app = app
        self.model = model

    def collect(self) -> Iterator[Metric]:
        sched: Scheduler | None = getattr(self.app.state, "scheduler", None)
        if sched is None:
            return
        labels = ["model_name"]
        values: list[tuple[type[GaugeMetricFamily] | type[CounterMetricFamily], str, str, float]] = [
            (GaugeMetricFamily, "vllm:num_requests_running", "Sequences in the batch.", len(sched.running)),
            (GaugeMetricFamily, "vllm:num_requests_waiting", "Requests waiting for a slot.", sched.waiting),
            (CounterMetricFamily, "vllm:prompt_tokens", "Prompt tokens.", sched.stats.prompt_tokens),
            (CounterMetricFamily, "vllm:generation_tokens", "Generated tokens.", sched.stats.decode_tokens),
            (
                CounterMetricFamily,
                "vllm:prefix_cache_queries",
                "Prompt tokens looked up.",
                sched.stats.prompt_tokens,
            ),
            (
                CounterMetricFamily,
                "vllm:prefix_cache_hits",
                "Prompt tokens found cached.",
                sched.stats.cached_tokens,
            ),
        ]
        for family, name, doc, value in values:
            metric = family(name, doc, labels=labels)
            metric.add_metric([self.model], value)
            yield metric


def create_app(config: SimConfig) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sched = Scheduler(config)
        sched.start()
        app.state.scheduler = sched
        try:
            yield
        finally:
            await sched.stop()

    script = load_script(config.answers)
    app = FastAPI(title="mrsa inference-server simulator", lifespan=lifespan)
    registry = CollectorRegistry()
    registry.register(_SchedulerMetrics(app, config.model))

    def scheduler() -> Scheduler:
        sched: Scheduler = app.state.scheduler
        return sched

    def count(endpoint: str) -> None:
        """Every vLLM endpoint call (the benchmark divides client CPU by these)."""
        calls = scheduler().stats.http_requests
        calls[endpoint] = calls.get(endpoint, 0) + 1

    def record_header(request: Request) -> None:
        """The recorded header's value on a generation request ("" when absent)."""
        if config.record_header:
            seen = scheduler().stats.header_values
            value = request.headers.get(config.record_header, "")
            seen[value] = seen.get(value, 0) + 1

    async def run(
        prompt: str, body: dict[str, Any], problem_key: str, streams: bool = False
    ) -> tuple[int, list[Output], int] | JSONResponse:
        ids = encode(prompt)
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or 16
        if not isinstance(max_tokens, int) or max_tokens < 1:
            return _error(400, "max_tokens must be a positive integer")
        if len(ids) + max_tokens > config.max_model_len:
            return _error(
                400,
                f"This model's maximum context length is {config.max_model_len} tokens. However, you "
                f"requested {len(ids) + max_tokens} tokens ({len(ids)} in the messages, {max_tokens} "
                "in the completion). Please reduce the length of the messages or completion.",
            )
        priority = body.get("priority", 0) or 0
        if priority and not config.enable_priority:
            return _error(400, f"Got priority {priority} but Priority scheduling is not enabled.")
        seen = scheduler().stats.priorities  # what clients sent ("none": no field), for their tests
        key = str(body["priority"]) if "priority" in body else "none"
        seen[key] = seen.get(key, 0) + 1
        if body.get("stream") and not streams:
            return _error(400, "the simulator streams chat completions only")
        scripted = scripted_for(script, prompt)
        if scripted is not None and scripted.behaviour == "error":
            return _error(500, "simulated engine failure (--answers script: error)", "InternalServerError")
        n = int(body.get("n") or 1)
        seed = body.get("seed")
        outputs = [
            sample_output(
                config, prompt, None if seed is None else f"{seed}:{i}", max_tokens, problem_key, scripted
            )
            for i in range(n)
        ]
        hashes = block_hashes(ids, config.block_size)
        seqs = [
            Sequence(prompt_tokens=len(ids), hashes=hashes, output_tokens=o.tokens, priority=int(priority))
            for o in outputs
        ]
        await asyncio.gather(*(scheduler().submit(s) for s in seqs))
        # Prompt tokens the prefix cache held for the first sequence (as vLLM reports them).
        cached = seqs[0].prompt_tokens - seqs[0].uncached if seqs else 0
        return len(ids), outputs, cached

    def usage(prompt_tokens: int, outputs: list[Output], cached: int) -> dict[str, Any]:
        completion = sum(o.tokens for o in outputs)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        }

    def sse_chunks(outputs: list[Output], usage_of: dict[str, Any] | None) -> Iterator[bytes]:
        """A chat stream as vLLM sends it: a role chunk, the text in a few pieces, the finish, usage."""
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            chunk = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": config.model,
            }
            return f"data: {json.dumps({**chunk, 'choices': choices, **extra})}\n\n".encode()

        for i, o in enumerate(outputs):
            yield event([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            words = o.text.split(" ")
            for start in range(0, len(words), 8):
                piece = " ".join(words[start : start + 8]) + (" " if start + 8 < len(words) else "")
                yield event([{"index": i, "delta": {"content": piece}, "finish_reason": None}])
            yield event([{"index": i, "delta": {}, "finish_reason": o.finish_reason}])
        if usage_of is not None:
            yield event([], usage=usage_of)
        yield b"data: [DONE]\n\n"

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/version")
    async def version() -> dict[str, str]:
        count("/version")
        return {"version": "0.0.0+mrsa.simulator"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        count("/v1/models")
        return {
            "object": "list",
            "data": [{"id": config.model, "object": "model", "max_model_len": config.max_model_len}],
        }

    @app.post("/tokenize")
    async def tokenize(request: Request) -> Response:
        count("/tokenize")
        body = await request.json()
        if "messages" in body:
            text = render_chat(body["messages"], bool(body.get("add_generation_prompt", True)), False)
        elif isinstance(body.get("prompt"), str):
            text = body["prompt"]
        else:
            return _error(400, "tokenize needs 'prompt' (a string) or 'messages'")
        ids = encode(text)
        return JSONResponse({"count": len(ids), "max_model_len": config.max_model_len, "tokens": ids})

    @app.post("/detokenize")
    async def detokenize(request: Request) -> Response:
        count("/detokenize")
        body = await request.json()
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) and 0 <= t < 0x110000 for t in tokens):
            return _error(400, "detokenize needs 'tokens', a list of token ids")
        return JSONResponse({"prompt": decode(tokens)})

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        count("/v1/chat/completions")
        record_header(request)
        body = await request.json()
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _error(400, "messages: a non-empty list is required")
        continue_final = bool(body.get("continue_final_message", False))
        prompt = render_chat(messages, bool(body.get("add_generation_prompt", True)), continue_final)
        done = await run(prompt, body, str(messages[0].get("content", ""))[:200], streams=True)
        if isinstance(done, JSONResponse):
            return done
        prompt_tokens, outputs, cached = done
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            usage_of = usage(prompt_tokens, outputs, cached) if include_usage else None
            return StreamingResponse(sse_chunks(outputs, usage_of), media_type="text/event-stream")
        choices = []
        for i, o in enumerate(outputs):
            choice: dict[str, Any] = {
                "index": i,
                "message": {"role": "assistant", "content": o.text},
                "finish_reason": o.finish_reason,
                "stop_reason": None,  # vLLM: None for EOS (the simulator stops only there)
            }
            if body.get("return_token_ids"):
                choice["token_ids"] = o.token_ids
            choices.append(choice)
        return JSONResponse(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": config.model,
                "choices": choices,
                "usage": usage(prompt_tokens, outputs, cached),
            }
        )

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        count("/v1/completions")
        record_header(request)
        body = await request.json()
        prompt = body.get("prompt")
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            prompt = decode(prompt)
        if not isinstance(prompt, str):
            return _error(400, "prompt: a string (or a list of token ids) is required")
        done = await run(prompt, body, prompt[:200])
        if isinstance(done, JSONResponse):
            return done
        prompt_tokens, outputs, cached = done
        return JSONResponse(
            {
                "id": f"cmpl-{uuid.uuid4().hex}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": config.model,
                "choices": [
                    {"index": i, "text": o.text, "finish_reason": o.finish_reason}
                    for i, o in enumerate(outputs)
                ],
                "usage": usage(prompt_tokens, outputs, cached),
            }
        )

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(registry).decode(), media_type="text/plain; version=0.0.4")

    @app.get("/sim/stats")
    async def stats() -> dict[str, Any]:
        sched = scheduler()
        return {"running": len(sched.running), "waiting": sched.waiting, **sched.stats.as_dict(config)}

    @app.get("/sim/trace")
    async def trace() -> dict[str, Any]:
        return {"columns": ["t_s", "running", "waiting"], "points": scheduler().trace}

    @app.post("/sim/reset")
    async def reset() -> Response:
        sched = scheduler()
        if sched.running or sched.waiting:
            return _error(409, "requests are in flight: reset between runs", "ConflictError")
        sched.reset()
        return Response(status_code=204)

    return app
