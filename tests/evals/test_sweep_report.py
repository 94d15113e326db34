"""The report's flags, time, throughput, cost, Pareto points and avg@k, checked number by number on
a sweep whose answers are known: ``mrsa bench --datasets hmmt_feb2026`` against the simulator
(a real server process on loopback) told each problem's gold answer and how to behave.

Problems 1–6 are scripted: right, wrong, answered without a box, a box with no mathematics, never
stopping (cut at β), and a server error on every request (its runs fail). Problem 7 draws right or
wrong per candidate, so its seeds differ and avg@k has a spread. Every number the report gives is
recomputed here from the raw records and the manifest, or known in advance.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest

from evals.datasets import load_dataset
from testkit.simulator.process import running_simulator

SCRIPT = ["right", "wrong", "unboxed", "unparsed", "runaway", "error", "draw"]
PROBLEMS = [p.id for p in load_dataset("hmmt_feb2026").problems[: len(SCRIPT)]]
N, SEEDS, GPUS = 4, 2, 2
PRICES = """
currency = "EUR"

[models."*"]
prompt = 1.0
cached_prompt = 0.5
decode = 4.0
"""
SIM = [
    "--median-tokens=48",
    "--length-sigma=0",
    "--runaway-share=0",
    "--correct-share=0.5",
    "--step-base-ms=1",
    "--max-num-seqs=32",
]


def mrsa(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MRSA_")}
    return subprocess.run(
        [sys.executable, "-m", "mrsa", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("scripted")
    script = base / "answers.jsonl"
    problems = load_dataset("hmmt_feb2026").problems[: len(SCRIPT)]
    script.write_text(
        "".join(
            json.dumps({"problem": p.problem, "answer": p.answer, "sim": b}) + "\n"
            for p, b in zip(problems, SCRIPT, strict=True)
        )
    )
    (base / "prices.toml").write_text(PRICES)
    out = base / "run"
    with running_simulator([*SIM, f"--answers={script}"]) as url:
        bench = mrsa(
            "bench",
            "--datasets",
            "hmmt_feb2026",
            "--limit",
            str(len(SCRIPT)),
            "--seeds",
            str(SEEDS),
            "--preset",
            "smoke",
            "--grid",
            f"population={N};subset=2;budget=200;tail=64;rounds=0,1",
            "--backend",
            url,
            "--retries",
            "0",
            "--gpus",
            str(GPUS),
            "--gpu-name",
            "H100",
            "--quiet",
            "--out",
            str(out),
        )
    report = mrsa("report", str(out), "--prices", str(base / "prices.toml"))
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    yield {
        "bench": bench,
        "report": report,
        "out": out,
        "records": records,
        "metrics": json.loads((out / "metrics.json").read_text()),
        "manifest": json.loads((out / "manifest.json").read_text()),
        "md": (out / "report.md").read_text(),
    }


def configs(s: dict[str, Any]) -> list[str]:
    return [c["id"] for c in s["manifest"]["configs"]]


def test_the_sweep_runs_and_the_failing_problem_fails_its_runs(sweep: dict[str, Any]) -> None:
    bench, report = sweep["bench"], sweep["report"]
    assert bench.returncode == 1, bench.stderr  # the runs of the erroring problem failed
    assert "HTTP 500" in bench.stderr and "Traceback" not in bench.stderr
    assert report.returncode == 0, report.stderr
    for name in ("report.md", "metrics.json", "accuracy_vs_tokens.png", "problem_grid.png", "pareto.png"):
        assert (sweep["out"] / name).read_bytes()[:4] in (b"\x89PNG", b"# mr", b"{\n  ")
    assert {r["problem"] for r in sweep["records"]} == set(PROBLEMS) - {PROBLEMS[5]}
    [session] = sweep["manifest"]["sessions"]
    assert (session["gpus"], session["gpu_name"]) == (GPUS, "H100")


def test_flags_per_configuration_round_and_problem(sweep: dict[str, Any]) -> None:
    flags = {(g["config"], g["dataset"]): g for g in sweep["metrics"]["flags"]}
    assert len(flags) == 2
    per_problem = N * SEEDS  # candidates of one problem in one round
    for cid in configs(sweep):
        group = flags[(cid, "hmmt_feb2026")]
        rounds = 2 if "rounds=1" in cid else 1
        assert [r["round"] for r in group["rounds"]] == list(range(rounds))
        for r in group["rounds"]:
            assert r["candidates"] == 6 * per_problem  # 7 problems, one never answered
            assert r["unboxed_answer"] == per_problem  # problem 3
            assert r["unparsed_box"] == per_problem  # problem 4
            assert r["truncated"] == per_problem  # problem 5
            assert r["backend_failed"] == 0  # no candidate came back aborted
            assert r["failed_runs"] == (SEEDS if r["round"] == 0 else 0)  # problem 6, in round 0
        runs = group["problems"]
        assert [run["seed"] for run in runs[PROBLEMS[4]]] == [0, 1]
        for run in runs[PROBLEMS[4]]:
            assert [f["truncated"] for f in run["rounds"]] == [N] * rounds and run["failed"] is None
            assert run["candidates"] == [
                {"round": r, "index": i, "flags": ["truncated"]} for r in range(rounds) for i in range(N)
            ]
        for run in runs[PROBLEMS[2]]:
            assert {tuple(c["flags"]) for c in run["candidates"]} == {("unboxed_answer",)}
        for run in runs[PROBLEMS[5]]:
            assert run["failed_round"] == 0 and "HTTP 500" in run["failed"]
            assert [f["candidates"] for f in run["rounds"]] == [0] * rounds
        clean = {"candidates": N, "unparsed_box": 0, "unboxed_answer": 0, "truncated": 0, "backend_failed": 0}
        for run in runs[PROBLEMS[0]]:
            assert run["rounds"] == [clean] * rounds and run["candidates"] == []
    md = sweep["md"]
    assert "## Flags" in md and "| box not parsed | answer without box | truncated | backend failed |" in md
    last = next(c for c in configs(sweep) if "rounds=1" in c)
    assert f"| `{last}` | hmmt_feb2026 | 0 | 48 | 8 | 8 | 8 | 0 | 2 |" in md


def scores(records: list[dict[str, Any]], cid: str, rnd: int) -> dict[int, dict[str, float]]:
    """Per seed, per complete problem: the share of the round's candidates that are correct."""
    out: dict[int, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r["config"] == cid and r["round"] == rnd:
            out[r["seed"]][r["problem"]].append(r["correct"])
    return {s: {p: sum(v) / len(v) for p, v in by.items()} for s, by in out.items()}


def test_avg_at_k_over_seeds(sweep: dict[str, Any]) -> None:
    groups = {g["config"]: g for g in sweep["metrics"]["groups"]}
    for cid in configs(sweep):
        for rm in groups[cid]["rounds"]:
            per_seed = scores(sweep["records"], cid, rm["round"])
            # problem 1 always right; 2–5 always wrong; 7 drawn per candidate; 6 never complete
            for by_problem in per_seed.values():
                assert set(by_problem) == set(PROBLEMS) - {PROBLEMS[5]}
                assert by_problem[PROBLEMS[0]] == 1.0
                assert all(by_problem[p] == 0.0 for p in PROBLEMS[1:5])
            accs = {s: statistics.fmean(by.values()) for s, by in per_seed.items()}
            spread = rm["pass1_seeds"]
            assert spread["seeds"] == SEEDS
            assert spread["per_seed"] == pytest.approx({str(s): a for s, a in accs.items()})
            mean = statistics.fmean(accs.values())
            std = statistics.stdev(accs.values())
            half = 12.706 * std / math.sqrt(SEEDS)  # Student t, 1 degree of freedom
            assert spread["mean"] == pytest.approx(mean) == pytest.approx(rm["pass1"]["value"])
            assert spread["std"] == pytest.approx(std)
            assert (spread["low"], spread["high"]) == pytest.approx((mean - half, mean + half))
    assert "## avg@k over seeds" in sweep["md"]


def test_time_throughput_and_cost(sweep: dict[str, Any]) -> None:
    records, manifest, timing = sweep["records"], sweep["manifest"], sweep["metrics"]["timing"]
    [session] = manifest["sessions"]
    wall = session["finished_at"] - session["started_at"]
    busy = {id(r): r["finished_at"] - r["started_at"] for r in records}
    assert all(b >= 0 for b in busy.values())
    decode = sum(r["decode_tokens"] for r in records)
    assert timing["wall_s"] == pytest.approx(wall)
    assert timing["decode_tokens"] == decode and timing["timed_records"] == len(records)
    assert timing["decode_tokens_per_s"] == pytest.approx(decode / wall)
    assert timing["hardware"] == {"gpus": GPUS, "gpu_name": "H100"} and timing["currency"] == "EUR"
    factor = wall / sum(busy.values())
    by_run: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_run[(r["config"], r["problem"], r["seed"])].append(r)
    shared = 0.0
    for group in timing["groups"]:
        cid = group["config"]
        runs = [recs for (c, _, _), recs in by_run.items() if c == cid]
        assert len(runs) == 6 * SEEDS  # complete runs: all but problem 6's
        previous = 0.0
        for rt in group["rounds"]:
            upto = [[r for r in run if r["round"] <= rt["round"]] for run in runs]
            machine = statistics.fmean(factor * sum(busy[id(r)] for r in run) for run in upto)
            assert rt["runs"] == rt["timed_runs"] == len(runs)
            assert rt["machine_s"] == pytest.approx(machine)
            assert rt["questions_per_hour"] == pytest.approx(3600 / machine)
            assert rt["gpu_hours_per_question"] == pytest.approx(GPUS * machine / 3600)
            latencies = [max(r["finished_at"] for r in run) - run[0]["job_started_at"] for run in upto]
            assert rt["latency_s"] == pytest.approx(statistics.fmean(latencies))
            assert 0 < rt["latency_s"] <= wall and rt["latency_s"] > previous
            assert rt["round_s"] == pytest.approx(rt["latency_s"] - previous)
            previous = rt["latency_s"]
            cost = [
                (
                    1.0 * sum(r["prompt_tokens"] - r["cached_prompt_tokens"] for r in run)
                    + 0.5 * sum(r["cached_prompt_tokens"] for r in run)
                    + 4.0 * sum(r["decode_tokens"] for r in run)
                )
                / 1e6
                for run in upto
            ]
            assert rt["cost_per_question"] == pytest.approx(statistics.fmean(cost))
        shared += group["rounds"][-1]["machine_s"] * len(runs)
    # every record belongs to a complete run, so the shares add up to the sweep's wall time
    assert shared == pytest.approx(wall)
    md = sweep["md"]
    assert "## Time, throughput and cost" in md and "**Hardware:** 2 × H100" in md
    assert "**Which numbers depend on the machine.**" in md


def test_pareto_points(sweep: dict[str, Any]) -> None:
    metrics = sweep["metrics"]
    rounds = {(g["config"], r["round"]): r for g in metrics["groups"] for r in g["rounds"]}
    times = {(g["config"], r["round"]): r for g in metrics["timing"]["groups"] for r in g["rounds"]}
    points = metrics["pareto"]
    assert {(p["config"], p["round"]) for p in points} == set(rounds) and len(points) == 3
    for p in points:
        key = (p["config"], p["round"])
        assert p["accuracy"] == rounds[key]["pass1"]["value"]
        assert p["tokens"] == rounds[key]["decode_tokens"]
        assert p["seconds"] == times[key]["machine_s"] and p["cost"] == times[key]["cost_per_question"]
    assert (
        "![Accuracy against tokens, time and cost per question, with the Pareto front](pareto.png)"
        in (sweep["md"])
    )


def test_gpu_name_needs_a_count(sweep: dict[str, Any]) -> None:
    proc = mrsa("report", str(sweep["out"]), "--gpu-name", "H100")
    assert proc.returncode == 2 and "--gpus" in proc.stderr and "Traceback" not in proc.stderr
