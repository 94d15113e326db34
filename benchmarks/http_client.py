"""Client CPU per request of mrsa's HTTP client at vLLM-sized concurrency: a wire on httpx (its
own connection pool) against aiohttp's, which ``HttpClient`` ships with (``AiohttpWire``).

httpcore's pool does work proportional to (connections × queued requests) on every request event,
so at 256 requests in flight it costs several milliseconds of CPU per request. This runs the same
short generations from the simulator (so the client's cost dominates) through the vLLM backend
client on each wire, alternating, and prints CPU ms per request side by side.

    .venv/bin/python -m benchmarks.http_client [--requests 1500] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable

import httpx

from mrsa.backends.base import GenerationRequest, Message
from mrsa.backends.http import HttpOptions
from mrsa.backends.openai import OpenAICompatibleBackend
from mrsa.backends.wire import BodyTooLarge, Wire, WireError, WireRequest, WireResponse, WireTimeout
from testkit.simulator.process import running_simulator


class HttpxWire:
    """The wire on httpx's own connection pool (what ``HttpClient`` used before aiohttp)."""

    def __init__(self, connections: int) -> None:
        limits = httpx.Limits(max_connections=connections + 4, max_keepalive_connections=connections)
        self._client = httpx.AsyncClient(limits=limits)

    async def send(self, request: WireRequest) -> WireResponse:
        timeout = httpx.Timeout(request.read_timeout_s, connect=request.connect_timeout_s)
        try:
            reply = await self._client.request(
                request.method, request.url, content=request.body, headers=request.headers, timeout=timeout
            )
        except httpx.TimeoutException as exc:
            raise WireTimeout(type(exc).__name__) from exc
        except httpx.TransportError as exc:
            raise WireError(f"{type(exc).__name__}: {exc}") from exc
        if len(reply.content) > request.max_body_bytes:
            raise BodyTooLarge(len(reply.content))
        return WireResponse(reply.status_code, reply.headers, reply.content)

    async def aclose(self) -> None:
        await self._client.aclose()


Wires = Callable[[int], Wire | None]
WIRES: dict[str, Wires] = {
    "httpx pool": HttpxWire,
    "mrsa (aiohttp)": lambda n: None,  # HttpClient default
}
PROMPT = "Find the sum of all integer bases b > 9 for which 17_b divides 97_b. " * 8


async def one_run(url: str, wire: Wires, requests: int, concurrency: int) -> dict[str, float]:
    backend = OpenAICompatibleBackend(
        url,
        dialect="vllm",
        model="mrsa-sim",
        options=HttpOptions(concurrency=concurrency),
        wire=wire(concurrency),
    )

    async def one(i: int) -> None:
        await backend.generate(
            GenerationRequest(messages=[Message(role="user", content=PROMPT)], max_tokens=48, seed=i)
        )

    await asyncio.gather(*(one(i) for i in range(concurrency)))  # connections open: not measured
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(requests)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    await backend.aclose()
    return {"cpu_ms_per_request": 1000 * cpu / requests, "wall_s": wall}


async def main_async(args: argparse.Namespace) -> None:
    flags = [f"--max-num-seqs={args.concurrency}", "--step-base-ms=0.5", "--step-per-seq-ms=0"]
    flags += ["--prefill-ms-per-token=0", "--median-tokens=40", "--runaway-share=0"]
    best: dict[str, dict[str, float]] = {}
    with running_simulator(flags) as url:
        for _ in range(args.repeats):  # alternate, so machine drift hits both
            for name, wire in WIRES.items():
                row = await one_run(url, wire, args.requests, args.concurrency)
                if name not in best or row["cpu_ms_per_request"] < best[name]["cpu_ms_per_request"]:
                    best[name] = row
    base = best["httpx pool"]["cpu_ms_per_request"]
    for name, row in best.items():
        ratio = row["cpu_ms_per_request"] / base
        if args.json:
            print(
                json.dumps(
                    {
                        "transport": name,
                        **{k: round(v, 3) for k, v in row.items()},
                        "cpu_vs_httpx": round(ratio, 3),
                    }
                )
            )
        else:
            print(
                f"{name:<15} {row['cpu_ms_per_request']:6.2f} ms CPU/request ({ratio:.2f}x httpx's pool), "
                f"wall {row['wall_s']:.1f}s for {args.requests} requests at {args.concurrency} in flight"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.http_client", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="runs per wire (best kept)")
    parser.add_argument("--json", action="store_true")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
