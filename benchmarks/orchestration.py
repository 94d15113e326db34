"""How close mrsa keeps an inference server to its limit: one fixed workload against the simulator
(``testkit/simulator``), run by mrsa in-process, by mrsa through Redis with 1, 2 and 4 worker
processes, and by two baselines, all with the same concurrency limit, side by side in one run.

Workload: 30 AIME 2025 problems, N=16, K=4, T=2, with a scaled-down budget and tail.

- ``round-batch``: the RSA reference script's pattern. Round t of every problem is one batch (one
  ``gather``); round t+1 starts when the whole batch is done.
- ``per-job``: every job runs at once, each with one ``gather`` per round (Zyphra's proxy runs a
  request that way).
- ``mrsa-inprocess``: ``InProcessRunner`` (what ``mrsa solve``/``mrsa bench`` use), memory store.
- ``mrsa-redis-wN``: N ``mrsa worker`` processes on a real ``redis-server``, the concurrency limit
  split between them.

Reported per configuration:

- makespan: first submission to last result. The lower bound comes from the simulator's own model:
  the larger of the total work at a full batch (decode tokens at the full-batch step rate plus the
  prefill the run did) and the longest chain of dependent generations (a path through a job's
  candidates, each after its K parents, each at batch-1 speed).
- utilisation: mean running sequences / max_num_seqs over the window from the first request to the
  last generation. Round barriers, stragglers and dispatch gaps all show up here.
- orchestrator CPU per backend request: the process CPU time of whoever runs the tasks (this
  process, or the sum of the worker processes) divided by the HTTP requests the server received
  (a generation, plus the detokenize call that cuts its tail); per candidate too.
- Redis round trips per candidate: packets redis-py sent from the workers, per candidate.
- prefix-cache hit rate: cached prompt tokens / prompt tokens, as the simulator counted them.

    .venv/bin/python -m benchmarks.orchestration            # table
    .venv/bin/python -m benchmarks.orchestration --json     # one JSON object per configuration

``--server-url URL`` runs the same configurations against a real vLLM instead of the simulator.
There is no model of the server to bound the makespan with; utilisation and queueing come from the
server's own metrics (``vllm:num_requests_running`` / ``vllm:num_requests_waiting``, sampled every
``--sample-period`` s; pass the server's ``--max-num-seqs``), decode tokens and the prefix-cache hit
rate from its counters, each configuration's share being the counters' difference across its run.

Needs ``redis-server`` on PATH (``make test`` installs it). Only loopback traffic.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.counted_worker import warm_up
from benchmarks.dispatch_overhead import redis_server
from evals.datasets import load_dataset
from mrsa.backends.base import GenerationRequest, Message
from mrsa.backends.http import HttpOptions
from mrsa.backends.openai import OpenAICompatibleBackend
from mrsa.domain import JobResult, JobSpec, JobStatus
from mrsa.engine import prompts
from mrsa.engine.planning import plan_subsets, request_seed
from mrsa.engine.tails import make_tail, tail_source_text
from mrsa.params import RSAParams
from mrsa.store.opening import open_store
from mrsa.store.settings import StoreSettings
from testkit.server_metrics import LoadSamples, read_vllm_counters, sampling_load
from testkit.simulator.process import ROOT, running_simulator
from workers.inprocess import InProcessRunner

BASELINES = ("round-batch", "per-job")


@dataclass
class Workload:
    problems: list[str]
    params: RSAParams
    concurrency: int

    @property
    def candidates(self) -> int:
        return len(self.problems) * self.params.population * (self.params.rounds + 1)

    def specs(self) -> list[JobSpec]:
        return [JobSpec(problem=p, params=self.params) for p in self.problems]


@dataclass
class Run:
    """What one configuration measured on the orchestrator side."""

    config: str
    makespan_s: float
    cpu_s: float
    round_trips: int | None = None
    # per job, per round, per candidate: (decode tokens, parent indices), for the chain bound
    dags: list[list[list[tuple[int, list[int]]]]] = field(default_factory=list)
    failed: int = 0


# -- the simulator -----------------------------------------------------------------------------------


def simulator_flags(args: argparse.Namespace) -> list[str]:
    flags = [
        f"--max-num-seqs={args.max_num_seqs}",
        f"--step-base-ms={args.step_base_ms}",
        f"--step-per-seq-ms={args.step_per_seq_ms}",
        f"--prefill-ms-per-token={args.prefill_ms_per_token}",
        f"--median-tokens={args.median_tokens}",
        f"--runaway-share={args.runaway_share}",
    ]
    return [*flags, "--enable-priority"] if args.enable_priority else flags


def backend_for(url: str, workload: Workload, concurrency: int | None = None) -> OpenAICompatibleBackend:
    options = HttpOptions(concurrency=concurrency or workload.concurrency, timeout_s=3600)
    return OpenAICompatibleBackend(url, dialect="vllm", options=options)


# -- mrsa configurations -----------------------------------------------------------------------------


def dags_of(results: Sequence[JobResult]) -> list[list[list[tuple[int, list[int]]]]]:
    return [[[(c.decode_tokens, c.parents) for c in rnd.candidates] for rnd in r.rounds] for r in results]


def longest_chain(dag: list[list[tuple[int, list[int]]]], step_s: float) -> float:
    """The longest path of dependent generations through one job, each at batch-1 speed."""
    previous: list[float] = []
    for rnd in dag:
        previous = [
            tokens * step_s + max((previous[p] for p in parents), default=0.0) for tokens, parents in rnd
        ]
    return max(previous, default=0.0)


async def run_inprocess(url: str, workload: Workload) -> Run:
    backend = backend_for(url, workload)
    cpu0, t0 = time.process_time(), time.perf_counter()
    async with InProcessRunner(backend, capacity=workload.concurrency) as runner:
        jobs = [await runner.submit(spec) for spec in workload.specs()]
        results = await asyncio.gather(*(runner.wait(j.id) for j in jobs))
    makespan, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    await backend.aclose()
    return Run(
        config="mrsa-inprocess",
        makespan_s=makespan,
        cpu_s=cpu,
        dags=dags_of(results),
        failed=sum(1 for r in results if r.status != JobStatus.succeeded),
    )


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    counts: Path
    log: Path


@contextlib.contextmanager
def worker_processes(
    backend_url: str, redis_url: str, workers: int, concurrency: int, folder: Path
) -> Iterator[list[WorkerProcess]]:
    """``workers`` counted worker processes (:mod:`benchmarks.counted_worker`, configured by the
    environment) sharing ``concurrency``, ready on return; stopped with SIGTERM (a graceful stop:
    they write their counts) on exit."""
    share = max(1, concurrency // workers)
    started: list[WorkerProcess] = []
    try:
        for i in range(workers):
            counts, log = folder / f"worker{i}.json", folder / f"worker{i}.log"
            counts.unlink(missing_ok=True)
            env = {
                **os.environ,
                "MRSA_BENCH_COUNTS": str(counts),
                "MRSA_REDIS_URL": redis_url,
                "MRSA_BACKEND_URL": backend_url,
                "MRSA_BACKEND_KIND": "vllm",
                "MRSA_BACKEND_CONCURRENCY": str(share),
                "MRSA_WORKER_CONSUMER": f"bench-{i}",
            }
            cmd = [sys.executable, "-m", "benchmarks.counted_worker"]
            with log.open("wb") as out:
                proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
            started.append(WorkerProcess(proc, counts, log))
        deadline = time.monotonic() + 60
        while not all("ready" in w.log.read_text() for w in started):
            if any(w.proc.poll() is not None for w in started) or time.monotonic() > deadline:
                logs = "\n".join(w.log.read_text() for w in started)
                raise SystemExit(f"a worker did not start:\n{logs}")
            time.sleep(0.1)
        yield started
    finally:
        for w in started:
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        for w in started:
            w.proc.wait(timeout=60)


async def run_redis(url: str, workload: Workload, workers: int, folder: Path, verbose: bool) -> Run:
    from mrsa.engine.job_service import JobService

    with redis_server() as redis_url:
        async with open_store(StoreSettings(redis_url=redis_url)) as store:
            with worker_processes(url, redis_url, workers, workload.concurrency, folder) as procs:
                service = JobService(store)
                t0 = time.perf_counter()
                jobs = [await service.submit(spec) for spec in workload.specs()]
                pending = {j.id for j in jobs}
                while pending:
                    for job_id in list(pending):
                        job = await store.get_job(job_id)
                        if job is not None and job.status.terminal:
                            pending.discard(job_id)
                    if pending:
                        await asyncio.sleep(0.05)
                makespan = time.perf_counter() - t0
                results = [r for j in jobs if (r := await store.get_result(j.id)) is not None]
    totals = {"cpu_s": 0.0, "round_trips": 0.0}
    for w in procs:
        if not w.counts.exists():
            raise SystemExit(f"a worker wrote no counts:\n{w.log.read_text()}")
        for key, value in json.loads(w.counts.read_text()).items():
            totals[key] += value
        if verbose:
            print(w.log.read_text(), file=sys.stderr)
    return Run(
        config=f"mrsa-redis-w{workers}",
        makespan_s=makespan,
        cpu_s=totals["cpu_s"],
        round_trips=int(totals["round_trips"]),
        dags=dags_of(results),
        failed=sum(1 for r in results if r.status != JobStatus.succeeded) + len(jobs) - len(results),
    )


# -- baselines ---------------------------------------------------------------------------------------


async def _generate(
    backend: OpenAICompatibleBackend, params: RSAParams, problem: str, rnd: int, index: int, tails: list[str]
) -> tuple[str, int]:
    """One candidate as mrsa builds it (same prompt, seed and tail), without a store or a queue."""
    text = (
        prompts.aggregation_prompt(params.prompts, problem, tails)
        if tails
        else prompts.round0_prompt(params.prompts, problem)
    )
    request = GenerationRequest(
        messages=[Message(role="user", content=text)],
        max_tokens=params.budget,
        temperature=params.sampling.temperature,
        top_p=params.sampling.top_p,
        top_k=params.sampling.top_k,
        seed=request_seed(params.seed, rnd, index),
    )
    result = (await backend.generate(request))[0]
    source = tail_source_text(result.trace, result.finish_reason == "stop", params.tail_source)
    tail = await make_tail(backend, source, params.tail, result.token_ids)
    return tail.text, result.completion_tokens


def _subsets(params: RSAParams, rnd: int) -> list[list[int]]:
    if rnd == 0:
        return [[] for _ in range(params.population)]
    return plan_subsets(params.seed, rnd, params.population, params.subset, params.population)


def _parents(params: RSAParams, rnd: int, previous: list[str]) -> list[list[str]]:
    return [[previous[i] for i in s] for s in _subsets(params, rnd)]


async def run_baseline(url: str, workload: Workload, kind: str) -> Run:
    backend = backend_for(url, workload)
    params = workload.params
    tails: list[list[str]] = [[] for _ in workload.problems]
    dags: list[list[list[tuple[int, list[int]]]]] = [[] for _ in workload.problems]
    cpu0, t0 = time.process_time(), time.perf_counter()

    async def one_round(j: int, rnd: int) -> list[tuple[str, int]]:
        parents = _parents(params, rnd, tails[j])
        return await asyncio.gather(
            *(
                _generate(backend, params, workload.problems[j], rnd, i, parents[i])
                for i in range(params.population)
            )
        )

    def keep(j: int, rnd: int, out: list[tuple[str, int]]) -> None:
        tails[j] = [t for t, _ in out]
        subsets = _subsets(params, rnd)
        dags[j].append([(n, subsets[i]) for i, (_, n) in enumerate(out)])

    if kind == "round-batch":
        for rnd in range(params.rounds + 1):
            outs = await asyncio.gather(*(one_round(j, rnd) for j in range(len(workload.problems))))
            for j, out in enumerate(outs):
                keep(j, rnd, out)
    else:

        async def job(j: int) -> None:
            for rnd in range(params.rounds + 1):
                keep(j, rnd, await one_round(j, rnd))

        await asyncio.gather(*(job(j) for j in range(len(workload.problems))))
    makespan, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    await backend.aclose()
    return Run(
        config=kind,
        makespan_s=makespan,
        cpu_s=cpu,
        dags=dags,
    )


# -- reporting ---------------------------------------------------------------------------------------


def sim_json(url: str, path: str, method: str = "GET") -> Any:
    response = httpx.request(method, f"{url}{path}", timeout=30)
    response.raise_for_status()
    return response.json() if response.content else None


def summarise(run: Run, stats: dict[str, Any], workload: Workload) -> dict[str, Any]:
    chain = max((longest_chain(dag, stats["step_s_batch_1"]) for dag in run.dags), default=0.0)
    lower = max(stats["work_at_full_batch_s"], chain)
    calls: dict[str, int] = stats["http_requests"]
    requests = sum(calls.values())
    generations = calls.get("/v1/chat/completions", 0)
    return {
        "config": run.config,
        "makespan_s": round(run.makespan_s, 3),
        "lower_bound_s": round(lower, 3),
        "makespan_over_lower_bound": round(run.makespan_s / lower, 3) if lower else None,
        "utilisation": round(stats["utilisation"], 4) if stats["utilisation"] is not None else None,
        "cpu_ms_per_request": round(1000 * run.cpu_s / requests, 3) if requests else None,
        "cpu_ms_per_candidate": round(1000 * run.cpu_s / workload.candidates, 3),
        "redis_round_trips_per_candidate": (
            round(run.round_trips / workload.candidates, 3) if run.round_trips is not None else None
        ),
        "prefix_cache_hit_rate": (
            round(stats["prefix_cache_hit_rate"], 4) if stats["prefix_cache_hit_rate"] is not None else None
        ),
        "speedup_vs_round_batch": None,
        "speedup_vs_per_job": None,
        "requests": requests,
        "generation_requests": generations,
        "decode_tokens": stats["decode_tokens"],
        "chain_bound_s": round(chain, 3),
        "work_bound_s": round(stats["work_at_full_batch_s"], 3),
        "max_waiting": stats["max_waiting"],
        "failed_jobs": run.failed,
    }


def write_trace(folder: Path, name: str, trace: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"{name}.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(trace["columns"])
        writer.writerows(trace["points"])


def print_table(rows: list[dict[str, Any]]) -> None:
    def fmt(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    print(
        f"{'config':<16} {'makespan s':>10} {'bound s':>8} {'/bound':>7} {'util':>6} {'cpu ms/req':>10} "
        f"{'RT/cand':>8} {'cache hit':>9} {'vs round-batch':>14} {'vs per-job':>10}"
    )
    for r in rows:
        print(
            f"{r['config']:<16} {r['makespan_s']:>10.2f} {fmt(r['lower_bound_s'], '.2f'):>8} "
            f"{fmt(r['makespan_over_lower_bound'], '.3f'):>7} {fmt(r['utilisation'], '.3f'):>6} "
            f"{fmt(r['cpu_ms_per_request'], '.2f'):>10} {fmt(r['redis_round_trips_per_candidate'], '.2f'):>8} "
            f"{fmt(r['prefix_cache_hit_rate'], '.3f'):>9} {fmt(r['speedup_vs_round_batch'], '.2f'):>13}x "
            f"{fmt(r['speedup_vs_per_job'], '.2f'):>9}x"
        )


async def run_config(url: str, workload: Workload, config: str, folder: Path, verbose: bool) -> Run:
    if config in BASELINES:
        return await run_baseline(url, workload, config)
    if config == "mrsa-inprocess":
        return await run_inprocess(url, workload)
    if config.startswith("mrsa-redis-w"):
        return await run_redis(url, workload, int(config.removeprefix("mrsa-redis-w")), folder, verbose)
    raise SystemExit(f"--configs: unknown configuration {config!r}")


def summarise_real(
    run: Run,
    samples: LoadSamples,
    counters: tuple[dict[str, float], dict[str, float]],
    workload: Workload,
    max_num_seqs: int,
) -> dict[str, Any]:
    """A configuration's row against a real server: what its metrics say, no lower bound."""
    before, after = counters

    def delta(name: str) -> float | None:
        return after[name] - before.get(name, 0.0) if name in after else None

    decode = delta("vllm:generation_tokens")
    queries, hits = delta("vllm:prefix_cache_queries"), delta("vllm:prefix_cache_hits")
    utilisation = samples.utilisation(max_num_seqs)
    return {
        "config": run.config,
        "makespan_s": round(run.makespan_s, 3),
        "lower_bound_s": None,
        "makespan_over_lower_bound": None,
        "utilisation": round(utilisation, 4) if utilisation is not None else None,
        "mean_waiting": round(sum(x.waiting for x in samples.busy()) / max(1, len(samples.busy())), 2),
        "max_waiting": samples.max_waiting(),
        "load_samples": len(samples.points),
        "cpu_ms_per_request": None,  # a real server does not count the requests it received
        "cpu_ms_per_candidate": round(1000 * run.cpu_s / workload.candidates, 3),
        "redis_round_trips_per_candidate": (
            round(run.round_trips / workload.candidates, 3) if run.round_trips is not None else None
        ),
        "prefix_cache_hit_rate": round(hits / queries, 4) if queries and hits is not None else None,
        "speedup_vs_round_batch": None,
        "speedup_vs_per_job": None,
        "decode_tokens": int(decode) if decode is not None else None,
        "decode_tokens_per_s": round(decode / run.makespan_s, 1) if decode is not None else None,
        "failed_jobs": run.failed,
    }


async def measure_real_server(
    args: argparse.Namespace, workload: Workload, configs: list[str]
) -> list[dict[str, Any]]:
    url = str(args.server_url).rstrip("/")
    rows: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        with tempfile.TemporaryDirectory() as tmp:
            for config in configs:
                if not args.json:
                    print(f"running {config} against {url} ...", file=sys.stderr, flush=True)
                before = await read_vllm_counters(client)
                async with sampling_load(url, args.sample_period) as samples:
                    run = await run_config(url, workload, config, Path(tmp), args.verbose)
                after = await read_vllm_counters(client)
                if args.trace_dir is not None:
                    points = [[round(t, 3), load.running, load.waiting] for t, load in samples.points]
                    write_trace(
                        args.trace_dir, config, {"columns": ["t_s", "running", "waiting"], "points": points}
                    )
                rows.append(summarise_real(run, samples, (before, after), workload, args.max_num_seqs))
    return rows


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    warm_up()
    dataset = load_dataset(args.dataset)
    problems = [p.problem for p in dataset.problems][: args.problems]
    params = RSAParams(
        population=args.population, subset=args.subset, rounds=args.rounds, budget=args.budget, tail=args.tail
    )
    workload = Workload(problems=problems, params=params, concurrency=args.concurrency)
    configs = args.configs.split(",")
    rows: list[dict[str, Any]] = []
    if args.server_url is not None:
        rows = await measure_real_server(args, workload, configs)
    else:
        with running_simulator(simulator_flags(args)) as url, tempfile.TemporaryDirectory() as tmp:
            for config in configs:
                if not args.json:
                    print(f"running {config} ...", file=sys.stderr, flush=True)
                run = await run_config(url, workload, config, Path(tmp), args.verbose)
                stats = sim_json(url, "/sim/stats")
                if args.trace_dir is not None:
                    write_trace(args.trace_dir, config, sim_json(url, "/sim/trace"))
                sim_json(url, "/sim/reset", "POST")
                rows.append(summarise(run, stats, workload))
    by_name = {r["config"]: r for r in rows}
    for r in rows:
        for base, key in (("round-batch", "speedup_vs_round_batch"), ("per-job", "speedup_vs_per_job")):
            if base in by_name:
                r[key] = round(by_name[base]["makespan_s"] / r["makespan_s"], 3)
        r["workload"] = {
            "problems": len(problems),
            "population": params.population,
            "subset": params.subset,
            "rounds": params.rounds,
            "budget": params.budget,
            "tail": params.tail,
            "concurrency": args.concurrency,
            "max_num_seqs": args.max_num_seqs,
            "server": args.server_url or "simulator",
        }
    tokens = {r["decode_tokens"] for r in rows}
    if len(tokens) > 1:
        print(f"warning: configurations decoded different token totals {sorted(tokens)}", file=sys.stderr)
    return rows


DEFAULT_CONFIGS = "round-batch,per-job,mrsa-inprocess,mrsa-redis-w1,mrsa-redis-w2,mrsa-redis-w4"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.orchestration", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per configuration")
    parser.add_argument(
        "--configs", default=DEFAULT_CONFIGS, help=f"comma-separated (default {DEFAULT_CONFIGS})"
    )
    parser.add_argument("--dataset", default="aime2025")
    parser.add_argument("--problems", type=int, default=30)
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--subset", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--budget", type=int, default=1024, help="β, scaled down")
    parser.add_argument("--tail", type=int, default=128, help="τ, scaled down")
    parser.add_argument(
        "--concurrency", type=int, default=256, help="requests in flight, every configuration"
    )
    parser.add_argument(
        "--max-num-seqs",
        type=int,
        default=256,
        help="the simulated server's batch limit (with --server-url: the real server's, for utilisation)",
    )
    parser.add_argument(
        "--server-url",
        help="run against this real vLLM instead of the simulator (its /metrics give the load)",
    )
    parser.add_argument(
        "--sample-period", type=float, default=0.1, help="with --server-url: seconds between metric samples"
    )
    parser.add_argument("--step-base-ms", type=float, default=2.0)
    parser.add_argument("--step-per-seq-ms", type=float, default=0.05)
    parser.add_argument("--prefill-ms-per-token", type=float, default=0.005)
    parser.add_argument("--median-tokens", type=int, default=200)
    parser.add_argument("--runaway-share", type=float, default=0.15)
    parser.add_argument("--enable-priority", action="store_true", help="the simulator schedules by priority")
    parser.add_argument(
        "--trace-dir", type=Path, help="write each configuration's occupancy trace here (CSV)"
    )
    parser.add_argument("--verbose", action="store_true", help="print the workers' logs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rows = asyncio.run(main_async(args))
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print_table(rows)


if __name__ == "__main__":
    main()
