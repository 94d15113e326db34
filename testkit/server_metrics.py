"""A real vLLM server's own load, read from its Prometheus ``/metrics``: sequences in the batch
(``vllm:num_requests_running``) and queued (``vllm:num_requests_waiting``), sampled in the
background during a benchmark run. The simulator exports the same two gauges, so one sampler
serves both."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Load:
    running: float
    waiting: float


async def read_vllm_load(client: httpx.AsyncClient) -> Load | None:
    """The two gauges summed over engines, or ``None`` when the server exports neither."""
    response = await client.get("/metrics")
    response.raise_for_status()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        if family.name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
            totals[family.name] = sum(sample.value for sample in family.samples)
    if not totals:
        return None
    return Load(totals.get("vllm:num_requests_running", 0.0), totals.get("vllm:num_requests_waiting", 0.0))


async def read_vllm_counters(client: httpx.AsyncClient) -> dict[str, float]:
    """vLLM's counters by family name (``vllm:generation_tokens``, ``vllm:prompt_tokens``,
    ``vllm:prefix_cache_queries``, ``vllm:prefix_cache_hits``...), summed over engines."""
    response = await client.get("/metrics")
    response.raise_for_status()
    return {
        family.name: sum(s.value for s in family.samples if s.name.endswith("_total"))
        for family in text_string_to_metric_families(response.text)
        if family.type == "counter" and family.name.startswith("vllm:")
    }


@dataclass
class LoadSamples:
    """(seconds since start, load) pairs, and summaries over the busy window."""

    points: list[tuple[float, Load]] = field(default_factory=list)

    def busy(self) -> list[Load]:
        """Samples from the first to the last one with work on the server."""
        active = [i for i, (_, load) in enumerate(self.points) if load.running + load.waiting > 0]
        return [load for _, load in self.points[active[0] : active[-1] + 1]] if active else []

    def utilisation(self, max_num_seqs: int) -> float | None:
        window = self.busy()
        return sum(load.running for load in window) / (len(window) * max_num_seqs) if window else None

    def max_waiting(self) -> float:
        return max((load.waiting for _, load in self.points), default=0.0)


@contextlib.asynccontextmanager
async def sampling_load(url: str, period_s: float = 0.1) -> AsyncIterator[LoadSamples]:
    """Sample the server's load every ``period_s`` for the duration of the block."""
    samples = LoadSamples()
    started = time.perf_counter()

    async def loop(client: httpx.AsyncClient) -> None:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                load = await read_vllm_load(client)
                if load is not None:
                    samples.points.append((time.perf_counter() - started, load))
            await asyncio.sleep(period_s)

    async with httpx.AsyncClient(base_url=url.rstrip("/"), timeout=10) as client:
        task = asyncio.create_task(loop(client))
        try:
            yield samples
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
