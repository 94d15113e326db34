"""Soak: many jobs through the whole service while a worker is killed and Redis restarts.

    .venv/bin/python -m benchmarks.soak                      # 1,000 jobs, 2 workers (a few minutes)
    .venv/bin/python -m benchmarks.soak --jobs 40 --json     # a quick run, one JSON object

Everything runs as separate processes on loopback: a real ``redis-server`` (AOF), ``mrsa serve``,
two ``mrsa worker`` and the inference-server simulator (``testkit/simulator``). The jobs
are submitted through the REST API at once; while they drain, one worker is SIGKILLed (a
replacement starts) once ``--kill-after`` of them are finished, and Redis is stopped and started
again on its AOF once ``--redis-restart-after`` are. Every API request's latency is recorded,
``/healthz`` is polled throughout.

Reported: accepted / rejected submissions, succeeded / failed / lost jobs (lost = accepted but
unknown or unfinished at the deadline), jobs whose result does not hold exactly N candidates in
each of the T+1 rounds, the failure reasons, and API latency p50 / p99 / max. It checks; it never
retries a job itself. Bounded: every loop has a deadline (``--deadline``), and it stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from mrsa.servers.server_process import free_port
from testkit.processes import child_processes, http_ok
from testkit.redis_process import RedisProcess
from testkit.simulator.process import running_simulator

KEY = "soak-key"
TERMINAL = {"succeeded", "failed", "cancelled"}


@dataclass
class Latencies:
    """Wall time of every API request, by kind."""

    by_kind: dict[str, list[float]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)

    def add(self, kind: str, seconds: float) -> None:
        self.by_kind.setdefault(kind, []).append(seconds)

    def summary(self) -> dict[str, Any]:
        every = sorted(s for values in self.by_kind.values() for s in values)
        if not every:
            return {"requests": 0}

        def q(p: float) -> float:
            return round(every[min(len(every) - 1, int(p * len(every)))] * 1000, 1)

        return {
            "requests": len(every),
            "p50_ms": q(0.50),
            "p99_ms": q(0.99),
            "max_ms": round(every[-1] * 1000, 1),
            "healthz_max_ms": round(max(self.by_kind.get("healthz", [0.0])) * 1000, 1),
            "transport_errors": dict(self.errors),
        }


async def timed(
    client: httpx.AsyncClient, lat: Latencies, kind: str, method: str, url: str, **kw: Any
) -> httpx.Response | None:
    start = time.perf_counter()
    try:
        response = await client.request(method, url, **kw)
    except httpx.HTTPError as exc:
        lat.errors[type(exc).__name__] += 1
        return None
    lat.add(kind, time.perf_counter() - start)
    return response


async def drive(args: argparse.Namespace, api: str, on_progress: Any) -> dict[str, Any]:
    lat = Latencies()
    headers = {"Authorization": f"Bearer {KEY}"}
    limits = httpx.Limits(max_connections=args.client_concurrency)
    body = {
        "preset": "smoke",
        "params": {
            "population": args.population,
            "subset": args.subset,
            "rounds": args.rounds,
            "budget": args.budget,
            "tail": args.tail,
        },
    }
    async with httpx.AsyncClient(base_url=api, headers=headers, timeout=30, limits=limits) as client:
        stop = asyncio.Event()

        async def health() -> None:
            while not stop.is_set():
                await timed(client, lat, "healthz", "GET", "/healthz")
                await asyncio.sleep(0.25)

        health_task = asyncio.create_task(health())
        gate = asyncio.Semaphore(args.client_concurrency)
        rejected: Counter[int] = Counter()

        async def submit(i: int) -> str | None:
            async with gate:
                r = await timed(
                    client,
                    lat,
                    "submit",
                    "POST",
                    "/v1/jobs",
                    json={**body, "problem": f"What is {i}+{i}? (soak {i})"},
                )
            if r is None or r.status_code != 202:
                rejected[r.status_code if r is not None else 0] += 1
                return None
            job_id: str = r.json()["id"]
            return job_id

        ids = [j for j in await asyncio.gather(*(submit(i) for i in range(args.jobs))) if j]
        status: dict[str, str] = dict.fromkeys(ids, "queued")
        deadline = time.monotonic() + args.deadline

        async def poll(job_id: str) -> None:
            async with gate:
                r = await timed(client, lat, "status", "GET", f"/v1/jobs/{job_id}")
            if r is not None and r.status_code == 200:
                status[job_id] = r.json()["status"]
            elif r is not None and r.status_code == 404:
                status[job_id] = "unknown"

        while time.monotonic() < deadline:
            pending = [j for j, s in status.items() if s not in TERMINAL and s != "unknown"]
            if not pending:
                break
            await asyncio.gather(*(poll(j) for j in pending))
            await on_progress(sum(1 for s in status.values() if s in TERMINAL) / max(1, len(ids)))
            await asyncio.sleep(1.0)

        incomplete = 0
        reasons: Counter[str] = Counter()

        async def check(job_id: str) -> None:
            nonlocal incomplete
            async with gate:
                if status[job_id] == "failed":
                    r = await timed(client, lat, "status", "GET", f"/v1/jobs/{job_id}")
                    if r is not None and r.status_code == 200:
                        reasons[str(r.json().get("error"))[:160]] += 1
                    return
                r = await timed(client, lat, "result", "GET", f"/v1/jobs/{job_id}/result")
            if r is None or r.status_code != 200:
                incomplete += 1
                return
            rounds = r.json()["rounds"]
            shape_ok = [rd["index"] for rd in rounds] == list(range(args.rounds + 1)) and all(
                sorted(c["index"] for c in rd["candidates"]) == list(range(args.population)) for rd in rounds
            )
            incomplete += 0 if shape_ok else 1

        done = [j for j, s in status.items() if s in ("succeeded", "failed")]
        await asyncio.gather(*(check(j) for j in done))
        stop.set()
        await health_task

    counts = Counter(status.values())
    return {
        "jobs": args.jobs,
        "accepted": len(ids),
        "rejected": dict(rejected),
        "succeeded": counts["succeeded"],
        "failed": counts["failed"],
        "cancelled": counts["cancelled"],
        "lost": len(ids) - counts["succeeded"] - counts["failed"] - counts["cancelled"],
        "incomplete_results": incomplete,
        "failure_reasons": dict(reasons),
        "latency": lat.summary(),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    sim_flags = [
        "--max-num-seqs",
        str(args.max_num_seqs),
        "--median-tokens",
        str(args.median_tokens),
        "--model",
        "mrsa-sim",
    ]
    with tempfile.TemporaryDirectory(prefix="mrsa-soak-") as tmp, running_simulator(sim_flags) as sim:
        folder = Path(tmp)
        redis = RedisProcess(folder, fsync=args.fsync)
        redis.start()
        try:
            with child_processes(folder) as start:
                port = free_port()
                api_proc = start(
                    "api",
                    [
                        "-m", "mrsa", "serve", "--port", str(port), "--redis", redis.url, "--api-keys", KEY,
                        "--max-active-jobs", str(args.jobs), "--backend", sim, "--backend-kind", "vllm",
                    ],
                )  # fmt: skip
                api = f"http://127.0.0.1:{port}"
                api_proc.wait_until("mrsa serve ready", lambda: http_ok(f"{api}/readyz"), 60)
                worker_args = [
                    "-m", "mrsa", "worker", "--redis", redis.url, "--backend", sim, "--backend-kind", "vllm",
                    "--model", "mrsa-sim", "--concurrency", str(args.tasks_per_worker),
                    "--reclaim-idle", str(args.reclaim_idle), "--heartbeat", str(args.reclaim_idle / 5),
                ]  # fmt: skip
                workers = [start(f"worker-{i}", worker_args) for i in range(args.workers)]
                for w in workers:
                    w.wait_for_log(" ready: ", 60)
                events: list[dict[str, Any]] = []
                t0 = time.monotonic()

                async def on_progress(share: float) -> None:
                    names = {e["event"] for e in events}
                    if "worker_killed" not in names and share >= args.kill_after and workers:
                        workers[0].proc.send_signal(signal.SIGKILL)
                        events.append(
                            {
                                "event": "worker_killed",
                                "at_s": round(time.monotonic() - t0, 1),
                                "done": round(share, 3),
                            }
                        )
                        start(f"worker-{args.workers}", worker_args)  # a replacement, as a Deployment would
                    if "redis_restarted" not in names and share >= args.redis_restart_after:
                        await asyncio.to_thread(redis.restart)
                        events.append(
                            {
                                "event": "redis_restarted",
                                "at_s": round(time.monotonic() - t0, 1),
                                "done": round(share, 3),
                            }
                        )
                    if not args.json:
                        print(f"\r{share:6.1%} of jobs finished", end="", file=sys.stderr, flush=True)

                report = asyncio.run(drive(args, api, on_progress))
                if not args.json:
                    print(file=sys.stderr)
                report["events"] = events
                report["elapsed_s"] = round(time.monotonic() - t0, 1)
                report["candidates_per_job"] = args.population * (args.rounds + 1)
                return report
        finally:
            redis.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--tasks-per-worker", type=int, default=32)
    p.add_argument("--population", type=int, default=8)
    p.add_argument("--subset", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--budget", type=int, default=64)
    p.add_argument("--tail", type=int, default=32)
    p.add_argument("--median-tokens", type=int, default=32, help="simulated output length")
    p.add_argument("--max-num-seqs", type=int, default=64, help="simulated batch limit")
    p.add_argument("--reclaim-idle", type=float, default=5.0, help="workers' reclaim idle, seconds")
    p.add_argument("--kill-after", type=float, default=0.25, help="SIGKILL a worker once this share is done")
    p.add_argument(
        "--redis-restart-after", type=float, default=0.5, help="restart Redis once this share is done"
    )
    p.add_argument("--fsync", choices=["always", "everysec"], default="always", help="Redis appendfsync")
    p.add_argument("--client-concurrency", type=int, default=32, help="API requests in flight")
    p.add_argument("--deadline", type=float, default=1800.0, help="give up waiting after this many seconds")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = run(args)
    if args.json:
        print(json.dumps(report))
        return
    lat = report["latency"]
    print(
        f"jobs {report['jobs']}: accepted {report['accepted']}, succeeded {report['succeeded']}, "
        f"failed {report['failed']}, lost {report['lost']}, incomplete results {report['incomplete_results']}"
    )
    print(
        f"API latency over {lat.get('requests', 0)} requests: p50 {lat.get('p50_ms')} ms, "
        f"p99 {lat.get('p99_ms')} ms, max {lat.get('max_ms')} ms (healthz max {lat.get('healthz_max_ms')} ms)"
    )
    for event in report["events"]:
        print(f"{event['event']} at {event['at_s']} s ({event['done']:.0%} done)")
    for reason, count in report["failure_reasons"].items():
        print(f"failed ×{count}: {reason}")
    print(f"elapsed {report['elapsed_s']} s; {report['candidates_per_job']} candidates per job")


if __name__ == "__main__":
    main()
