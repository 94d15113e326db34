"""``benchmarks/orchestration.py`` on a tiny workload: every configuration runs to the end against
the simulator and reports the fields docs/performance.md quotes. Timing is not asserted here
(speed is measured by the benchmark, not by tests); the work done is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.redis  # make test installs redis-server; without it these fail, never skip

FIELDS = {
    "config",
    "makespan_s",
    "lower_bound_s",
    "utilisation",
    "cpu_ms_per_request",
    "redis_round_trips_per_candidate",
    "prefix_cache_hit_rate",
    "speedup_vs_round_batch",
    "speedup_vs_per_job",
}


def run_benchmark(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """``python -m benchmarks.orchestration --json`` on a tiny workload (N=4, K=2, T=1, B=8)."""
    cmd = [
        sys.executable, "-m", "benchmarks.orchestration", "--json", "--population=4", "--subset=2",
        "--rounds=1", "--budget=96", "--tail=24", "--concurrency=8", "--max-num-seqs=8",
        f"--trace-dir={tmp_path}", *flags,
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_every_configuration_does_the_same_work_and_reports_its_fields(tmp_path: Path) -> None:
    done = run_benchmark(
        tmp_path,
        "--problems=3",
        "--median-tokens=40",
        "--step-base-ms=0.5",
        "--configs=round-batch,per-job,mrsa-inprocess,mrsa-redis-w2",
    )
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["config"] for r in rows] == ["round-batch", "per-job", "mrsa-inprocess", "mrsa-redis-w2"]
    for row in rows:
        assert row.keys() >= FIELDS
        assert row["failed_jobs"] == 0
        assert row["generation_requests"] == 3 * 4 * 2  # one per candidate, whoever schedules them
        assert row["requests"] >= row["generation_requests"]
        assert row["lower_bound_s"] > 0 and 0 < row["utilisation"] <= 1
        assert 0 < row["prefix_cache_hit_rate"] < 1
        assert (tmp_path / f"{row['config']}.csv").read_text().startswith("t_s,running,waiting")
    # Outputs are a function of (prompt, seed): the same prompts mean the same decoded tokens.
    assert len({r["decode_tokens"] for r in rows}) == 1
    assert rows[0]["speedup_vs_round_batch"] == 1.0 and rows[1]["speedup_vs_per_job"] == 1.0
    assert rows[2]["redis_round_trips_per_candidate"] is None
    assert rows[3]["redis_round_trips_per_candidate"] > 0


def test_server_url_mode_reads_the_load_from_the_servers_own_metrics(tmp_path: Path) -> None:
    """``--server-url`` treats the server as a black box: the simulator exports vLLM's gauges and
    counters, so it stands in for a real vLLM here (docs/performance.md has the real run)."""
    from testkit.simulator.process import running_simulator

    with running_simulator(["--max-num-seqs=8", "--median-tokens=40", "--step-base-ms=2"]) as url:
        done = run_benchmark(
            tmp_path,
            f"--server-url={url}",
            "--problems=2",
            "--sample-period=0.02",
            "--configs=round-batch,mrsa-inprocess,mrsa-redis-w2",
        )
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["config"] for r in rows] == ["round-batch", "mrsa-inprocess", "mrsa-redis-w2"]
    for row in rows:
        assert row["failed_jobs"] == 0
        assert row["workload"]["server"] == url
        assert row["load_samples"] > 0 and 0 < row["utilisation"] <= 1
        assert row["decode_tokens"] > 0  # this configuration's share of the server's counter
        assert 0 <= row["prefix_cache_hit_rate"] < 1
        assert row["lower_bound_s"] is None  # no model of a real server
        assert (tmp_path / f"{row['config']}.csv").read_text().startswith("t_s,running,waiting")
    assert len({r["decode_tokens"] for r in rows}) == 1  # same prompts and seeds, same work
    assert rows[0]["speedup_vs_round_batch"] == 1.0
