"""Record real replies of the bundled Triton into ``tests/recorded/triton/*.json``.

    python -m tests.recorded.record_triton            # starts the bundled Triton itself

Each file is ``{"method", "path", "body", "status", "reply"}``: what was sent and what the real
server (tritonserver 2.51 from nvidia-pytriton 0.7.0) answered. ``tests/backends/test_backend_wire.py``
replays them, so the client is checked against the server's own shapes, not documentation.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from mrsa.servers.bundled_triton import BUNDLED_MODEL, TritonServer

OUT = Path(__file__).with_name("triton")
PROMPT = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
GENERATE = f"/v2/models/{BUNDLED_MODEL}/generate"


def sampling(**values: Any) -> str:
    return json.dumps(values)


def generate_body(**sampling_values: Any) -> dict[str, Any]:
    return {
        "text_input": PROMPT,
        "sampling_parameters": sampling(**sampling_values),
        "exclude_input_in_output": True,
        "return_finish_reason": True,
        "return_num_input_tokens": True,
        "return_num_output_tokens": True,
    }


CASES: dict[str, tuple[str, str, Any]] = {
    "server_metadata": ("GET", "/v2", None),
    "model_metadata": ("GET", f"/v2/models/{BUNDLED_MODEL}", None),
    "model_config": ("GET", f"/v2/models/{BUNDLED_MODEL}/config", None),
    "repository_index": ("POST", "/v2/repository/index", {"ready": True}),
    "generate_stop": ("POST", GENERATE, generate_body(max_tokens=64, temperature=0.0, seed=1)),
    "generate_length": ("POST", GENERATE, generate_body(max_tokens=5, temperature=0.0, seed=1)),
    "error_bad_sampling": ("POST", GENERATE, generate_body(max_tokens=5, temperature=-1.0)),
    "error_context_overflow": (
        "POST",
        GENERATE,
        {**generate_body(max_tokens=5), "text_input": "word " * 9000},
    ),
    "error_unknown_model": ("POST", "/v2/models/no-such-model/generate", generate_body(max_tokens=5)),
    "error_wrong_type": ("POST", GENERATE, {**generate_body(max_tokens=5), "exclude_input_in_output": "yes"}),
}


def record(url: str, name: str, method: str, path: str, body: Any, raw: str | None = None) -> None:
    with httpx.Client(base_url=url, timeout=120) as client:
        if raw is not None:
            reply = client.request(method, path, content=raw, headers={"content-type": "application/json"})
        else:
            reply = client.request(method, path, json=body)
    try:
        data: Any = reply.json()
    except ValueError:
        data = reply.text
    sent = raw if raw is not None else body
    entry = {"method": method, "path": path, "body": sent, "status": reply.status_code, "reply": data}
    (OUT / f"{name}.json").write_text(
        json.dumps(entry, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )


def record_busy(url: str) -> None:
    """A model answering "busy" (its queue bound reached): started with ``max_queued=1``."""
    body = {**generate_body(max_tokens=48, temperature=1.0), "text_input": "Count to one hundred:"}
    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda _: httpx.post(f"{url}{GENERATE}", json=body, timeout=120), range(6)))
    busy = next(r for r in replies if r.status_code != 200)
    entry = {
        "method": "POST",
        "path": GENERATE,
        "body": body,
        "status": busy.status_code,
        "reply": busy.json(),
    }
    (OUT / "error_busy.json").write_text(json.dumps(entry, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    OUT.mkdir(exist_ok=True)
    server = TritonServer()
    asyncio.run(server.start(print))
    try:
        for name, (method, path, body) in CASES.items():
            record(server.url, name, method, path, body)
        record(server.url, "error_malformed_json", "POST", GENERATE, None, raw='{"text_input": "hi", ')
    finally:
        server.stop()
    small = TritonServer(max_queued=1)
    asyncio.run(small.start())
    try:
        record_busy(small.url)
    finally:
        small.stop()


if __name__ == "__main__":
    main()
