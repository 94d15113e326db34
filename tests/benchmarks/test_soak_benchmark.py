"""The soak benchmark on a small workload: a worker SIGKILLed and Redis restarted mid-run, and
every accepted job still ends with complete rounds (the full 1,000-job run is in docs)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from testkit.simulator.process import ROOT

pytestmark = pytest.mark.redis


def test_soak_loses_nothing_through_a_worker_kill_and_a_redis_restart() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak", "--jobs", "16", "--reclaim-idle", "2", "--json"],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["accepted"] == 16 and report["rejected"] == {}
    assert report["succeeded"] == 16, report
    assert report["lost"] == 0 and report["failed"] == 0
    assert report["incomplete_results"] == 0
    assert [e["event"] for e in report["events"]] == ["worker_killed", "redis_restarted"]
    assert report["latency"]["requests"] > 16
