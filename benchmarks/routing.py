"""Inference behind a router: the same Delethink-chunked jobs against two simulator replicas
behind a round-robin front and behind an affinity front (consistent hashing on mrsa's lineage
header), side by side in one run.

Every chunk of a candidate after the first repeats the candidate's whole prompt (problem + K
tails) before its carry-over: on the replica that served the previous chunk that prompt is in the
prefix cache, on another it is prefilled again. Round-robin sends the next chunk to a replica at
random as far as the candidate is concerned; affinity keeps a candidate on one replica and still
spreads a job's N candidates over both.

Reported per policy: makespan (first submission to last result), prefix-cache hit rate (cached
prompt tokens / prompt tokens, summed over both replicas, as the simulators count them), prefill
seconds the replicas spent, generations per replica, and how many candidates' chunks were split
over both replicas; then the ratios affinity / round-robin of the medians over ``--repeats`` runs
of each (the policies alternate; job ids are fresh each run, so affinity's split of the keys over
the replicas is drawn anew).

    .venv/bin/python -m benchmarks.routing            # table
    .venv/bin/python -m benchmarks.routing --json     # one JSON object per policy

The replicas are ``python -m testkit.simulator`` processes; the fronts (``testkit/router.py``)
and mrsa (``InProcessRunner``, memory store) run in this process. Only loopback traffic.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import httpx

from evals.datasets import load_dataset
from mrsa.backends.http import HttpOptions
from mrsa.backends.openai import OpenAICompatibleBackend
from mrsa.domain import JobSpec, JobStatus
from mrsa.params import RSAParams
from testkit.router import Policy, running_router
from testkit.simulator.process import SimulatorProcess
from workers.inprocess import InProcessRunner

HEADER = "x-mrsa-lineage"
POLICIES: tuple[Policy, ...] = ("round-robin", "affinity")


@dataclass
class Workload:
    problems: list[str]
    params: RSAParams
    concurrency: int

    def specs(self) -> list[JobSpec]:
        return [JobSpec(problem=p, params=self.params) for p in self.problems]


def simulator_flags(args: argparse.Namespace) -> list[str]:
    return [
        f"--max-num-seqs={args.max_num_seqs}",
        f"--step-base-ms={args.step_base_ms}",
        f"--step-per-seq-ms={args.step_per_seq_ms}",
        f"--prefill-ms-per-token={args.prefill_ms_per_token}",
        f"--median-tokens={args.median_tokens}",
        f"--runaway-share={args.runaway_share}",
        f"--cache-blocks={args.cache_blocks}",
        f"--record-header={HEADER}",
    ]


@contextlib.contextmanager
def replicas(count: int, flags: Sequence[str]) -> Iterator[list[str]]:
    """``count`` simulator processes; yields their URLs."""
    sims = [SimulatorProcess(flags) for _ in range(count)]
    try:
        for sim in sims:
            sim.start()
        yield [sim.url for sim in sims]
    finally:
        for sim in sims:
            sim.stop()


async def sim_json(url: str, path: str, method: str = "GET") -> Any:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.request(method, f"{url}{path}")
    response.raise_for_status()
    return response.json() if response.content else None


async def run_policy(policy: Policy, urls: list[str], workload: Workload) -> dict[str, Any]:
    """One policy: fresh replicas (counters and caches reset), the jobs, the replicas' counters."""
    for url in urls:
        await sim_json(url, "/sim/reset", "POST")
    async with running_router(urls, policy, HEADER) as (front, router):
        options = HttpOptions(concurrency=workload.concurrency, timeout_s=3600, routing_header=HEADER)
        backend = OpenAICompatibleBackend(front, dialect="vllm", options=options)
        t0 = time.perf_counter()
        try:
            async with InProcessRunner(backend, capacity=workload.concurrency) as runner:
                jobs = [await runner.submit(spec) for spec in workload.specs()]
                results = await asyncio.gather(*(runner.wait(j.id) for j in jobs))
        finally:
            await backend.aclose()
        makespan = time.perf_counter() - t0
        keyed = router.keyed
    stats = [await sim_json(url, "/sim/stats") for url in urls]
    prompt = sum(s["prompt_tokens"] for s in stats)
    cached = sum(s["cached_tokens"] for s in stats)
    owners: dict[str, int] = {}
    for s in stats:
        for key in s["header_values"]:
            if key:
                owners[key] = owners.get(key, 0) + 1
    return {
        "policy": policy,
        "makespan_s": round(makespan, 3),
        "prefix_cache_hit_rate": round(cached / prompt, 4) if prompt else None,
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "prefill_s": round(sum(s["prefill_s"] for s in stats), 3),
        "decode_tokens": sum(s["decode_tokens"] for s in stats),
        "generations_per_replica": [s["http_requests"].get("/v1/chat/completions", 0) for s in stats],
        "keyed_requests": keyed,
        "candidates": len(owners),
        "candidates_split": sum(1 for n in owners.values() if n > 1),
        "failed": sum(1 for r in results if r.status != JobStatus.succeeded),
    }


def with_ratios(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """affinity / round-robin over the medians of each policy's runs: hit rate and prefill
    seconds, and the speed-up (round-robin makespan / affinity makespan; above 1 means affinity
    finished sooner)."""

    def median_of(policy: str, key: str) -> float | None:
        values = [r[key] for r in rows if r["policy"] == policy and r[key] is not None]
        return statistics.median(values) if values else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    def both(key: str) -> tuple[float | None, float | None]:
        return median_of("affinity", key), median_of("round-robin", key)

    hit_aff, hit_rr = both("prefix_cache_hit_rate")
    prefill_aff, prefill_rr = both("prefill_s")
    make_aff, make_rr = both("makespan_s")
    return {
        "runs_per_policy": len(rows) // max(1, len({r["policy"] for r in rows})),
        "hit_rate_affinity_over_round_robin": ratio(hit_aff, hit_rr),
        "prefill_affinity_over_round_robin": ratio(prefill_aff, prefill_rr),
        "speedup_affinity_vs_round_robin": ratio(make_rr, make_aff),
    }


async def main_async(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, float | None]]:
    dataset = load_dataset(args.dataset)
    params = RSAParams(
        population=args.population,
        subset=args.subset,
        rounds=args.rounds,
        budget=args.budget,
        tail=args.tail,
        chunk=args.chunk,
        carryover=args.carryover,
    )
    workload = Workload([p.problem for p in dataset.problems][: args.problems], params, args.concurrency)
    rows: list[dict[str, Any]] = []
    with replicas(2, simulator_flags(args)) as urls:
        for _ in range(args.repeats):
            for policy in cast(list[Policy], args.policies.split(",")):
                if not args.json:
                    print(f"running {policy} ...", file=sys.stderr, flush=True)
                rows.append(await run_policy(policy, urls, workload))
    tokens = {r["decode_tokens"] for r in rows}
    if len(tokens) > 1:
        print(f"warning: the policies decoded different token totals {sorted(tokens)}", file=sys.stderr)
    return rows, with_ratios(rows)


def print_table(rows: list[dict[str, Any]], ratios: dict[str, float | None]) -> None:
    print(
        "| policy | makespan s | cache hit | prefill s | generations per replica | candidates split | decode tokens |"
    )
    print("|---|---:|---:|---:|---|---:|---:|")
    for r in rows:
        print(
            f"| `{r['policy']}` | {r['makespan_s']:.2f} | {r['prefix_cache_hit_rate']:.3f} | "
            f"{r['prefill_s']:.2f} | {' / '.join(map(str, r['generations_per_replica']))} | "
            f"{r['candidates_split']} of {r['candidates']} | {r['decode_tokens']} |"
        )
    for name, value in ratios.items():
        print(f"{name}: {value}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.routing", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per policy, then the ratios")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument(
        "--repeats", type=int, default=1, help="run the policies this many times, alternating"
    )
    parser.add_argument("--dataset", default="aime2025")
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--subset", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--budget", type=int, default=1024, help="β, scaled down")
    parser.add_argument("--tail", type=int, default=512, help="τ, scaled down")
    parser.add_argument("--chunk", type=int, default=256, help="Delethink chunk (several per candidate)")
    parser.add_argument("--carryover", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=128, help="requests in flight (both replicas)")
    parser.add_argument("--max-num-seqs", type=int, default=64, help="each replica's batch limit")
    parser.add_argument("--step-base-ms", type=float, default=2.0)
    parser.add_argument("--step-per-seq-ms", type=float, default=0.05)
    parser.add_argument("--prefill-ms-per-token", type=float, default=0.01)
    parser.add_argument("--median-tokens", type=int, default=800, help="most candidates run to β")
    parser.add_argument("--runaway-share", type=float, default=0.15)
    parser.add_argument("--cache-blocks", type=int, default=50_000, help="each replica's prefix cache")
    args = parser.parse_args(argv)
    unknown = [p for p in args.policies.split(",") if p not in POLICIES]
    if unknown:
        parser.error(f"--policies: unknown {', '.join(unknown)}; choose from {', '.join(POLICIES)}")
    if args.repeats < 1:
        parser.error("--repeats: at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rows, ratios = asyncio.run(main_async(args))
    if args.json:
        for row in rows:
            print(json.dumps(row))
        print(json.dumps(ratios))
    else:
        print_table(rows, ratios)


if __name__ == "__main__":
    main()
