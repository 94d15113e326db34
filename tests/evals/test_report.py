"""``mrsa report`` on a synthetic run folder (no model needed): metrics by round, baselines found
in the sweep, the published-results table, plots, and incomplete units."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from evals.configs import build_configs
from evals.datasets import Dataset, Problem
from evals.records import CandidateRecord
from evals.report import compute, render_markdown, write_report
from evals.rundir import BackendEntry, Manifest, RunDir, Session, dataset_entry
from evals.timing import Hardware

ANSWERS = {"aime2025": ["70", "588", "16", "117", "279"], "hmmt_feb2025": ["103", "3375", r"\frac{1}{576}"]}


def synthetic_run(path: Path, *, drop_one: bool = True) -> RunDir:
    """Three configurations (RSA with T=2, a long rollout at β×3, self-consistency over 3N) on two
    datasets and two seeds; accuracy rises with the round."""
    rsa = build_configs(["smoke"], "rounds=2")[0]
    long = build_configs(["smoke"], "rounds=0;budget=288")[0]
    sc = build_configs(["smoke"], "rounds=0;population=12")[0]
    datasets = [
        Dataset(
            name=name,
            path=f"/data/{name}.jsonl",
            sha256="0" * 64,
            problems=[
                Problem(id=f"{name}-{i + 1:02d}", problem=f"P{i}", answer=a) for i, a in enumerate(golds)
            ],
        )
        for name, golds in ANSWERS.items()
    ]
    manifest = Manifest(
        model="synthetic-model",
        seeds=[0, 1],
        configs=[rsa, long, sc],
        datasets=[dataset_entry(d, None) for d in datasets],
        grading={"timeout_s": 10.0},
        sessions=[
            Session(
                started_at=0.0,
                status="completed",
                backend=BackendEntry(
                    url="http://gpu:8000", kind="vllm", model="synthetic-model", version="0.11.0"
                ),
                mrsa_version="0.1.0",
                git_revision="abc",
            )
        ],
    )
    run = RunDir(path)
    run.save_manifest(manifest)
    rng = random.Random(7)
    records = []
    for unit in manifest.units():
        params = manifest.config(unit.config).params
        gold = dict(
            zip(
                (p.id for d in datasets for p in d.problems),
                (p.answer for d in datasets for p in d.problems),
                strict=True,
            )
        )[unit.problem]
        skill = (int(unit.problem[-2:]) % 3) / 3
        for r in range(params.stages):
            for i in range(params.population):
                correct = rng.random() < min(1.0, skill + 0.2 * r)
                boxed = gold if correct else (None if rng.random() < 0.3 else str(rng.randint(1, 999)))
                records.append(
                    CandidateRecord(
                        config=unit.config,
                        dataset=unit.dataset,
                        problem=unit.problem,
                        seed=unit.seed,
                        round=r,
                        index=i,
                        parents=[] if r == 0 else [0, 1],
                        answer=boxed,
                        boxed=boxed,
                        correct=correct,
                        reason="correct" if correct else ("no_boxed" if boxed is None else "wrong"),
                        finish_reason="length" if boxed is None else "stop",
                        decode_tokens=rng.randint(40, params.budget),
                        prompt_tokens=100 + 60 * r,
                    )
                )
    if drop_one:
        records.pop()
    run.records.append(records)
    return run


@pytest.fixture
def run(tmp_path: Path) -> RunDir:
    return synthetic_run(tmp_path / "run")


def test_compute_counts_units_and_baselines(run: RunDir) -> None:
    data = compute(run, None)
    assert data.total == 2 * 8 * 3 and data.complete == data.total - 1 and len(data.incomplete) == 1
    assert {(g.config, g.dataset) for g in data.groups} == {
        (c, d)
        for c in ("smoke:rounds=2", "smoke:rounds=0,budget=288", "smoke:rounds=0,population=12")
        for d in ANSWERS
    }
    rsa = next(g for g in data.groups if g.config == "smoke:rounds=2" and g.dataset == "aime2025")
    assert [r.round for r in rsa.rounds] == [0, 1, 2]
    assert rsa.rounds[0].decode_tokens < rsa.rounds[1].decode_tokens < rsa.rounds[2].decode_tokens
    assert set(rsa.grid) == {f"aime2025-{i:02d}" for i in range(1, 6)}
    methods = {
        b.method: b for b in data.baselines if b.config == "smoke:rounds=2" and b.dataset == "aime2025"
    }
    assert methods["one long rollout, budget 288 (β×3)"].source == "smoke:rounds=0,budget=288"
    assert (
        methods["self-consistency over 12 samples (matched total)"].source == "smoke:rounds=0,population=12"
    )
    assert methods["self-consistency over 12 samples (matched total)"].metric == "maj@12"
    single = methods["single rollout (round 0)"]
    assert single.decode_tokens == pytest.approx(rsa.rounds[0].decode_tokens / 4)
    # T=0 configurations are baselines themselves, not rows of their own
    assert {b.config for b in data.baselines} == {"smoke:rounds=2"}


def test_report_markdown_and_plots(run: RunDir) -> None:
    data, paths = write_report(run, None)
    text = (run.path / "report.md").read_text()
    assert paths[0] == run.path / "report.md"
    for needle in (
        "**Model:** `synthetic-model`",
        "vllm at http://gpu:8000 (server 0.11.0)",
        "**Incomplete units:** 1",
        "| `smoke:rounds=2` | 4 | 2 | 2 | 96 | 48 | off | trace | 0.8 | 0.95 | 40 | v1 |",
        "### aime2025",
        "### hmmt_feb2025",
        "| `smoke:rounds=2` | 2 |",
        "`smoke:rounds=0,budget=288` |",
        "| ZAYA1-8B technical report (Zyphra) | ZAYA1-8B | AIME'25 |",
        "| 82.7 | 89.6 |",
        "`smoke:rounds=2`, `synthetic-model`:",
        "percentile bootstrap over problems",
    ):
        assert needle in text, needle
    assert "not in sweep" not in text.split("## Published")[0]
    assert render_markdown(data) == text  # deterministic
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert len(metrics["groups"]) == 6 and metrics["complete"] == 47
    for png in paths[2:]:
        data_bytes = png.read_bytes()
        assert data_bytes.startswith(b"\x89PNG") and len(data_bytes) > 10_000


def test_records_without_times_leave_the_time_numbers_empty(run: RunDir) -> None:
    """Records written before candidates were timed (this synthetic run's): no machine seconds,
    latency or throughput, no GPU-hours although the hardware is stated, and the report says "—";
    the Pareto plot still has the tokens panel and the flags are counted all the same."""
    data, _ = write_report(run, None, hardware=Hardware(gpus=8, gpu_name="H100"))
    t = data.timing
    # the session never closed and no record has a finish time: a span of 0, no throughput
    assert t.timed_records == 0 and t.wall_s == 0 and t.decode_tokens_per_s is None
    assert t.decode_tokens == 0 and t.busy_s == 0 and t.hardware.gpus == 8
    rows = [r for g in t.groups for r in g.rounds]
    assert rows and all(
        r.machine_s is None and r.latency_s is None and r.gpu_hours_per_question is None and r.timed_runs == 0
        for r in rows
    )
    assert all(p.seconds is None and p.cost is None and p.tokens > 0 for p in data.pareto)
    text = (run.path / "report.md").read_text()
    assert "**Hardware:** 8 × H100" in text and "| — | — | — | — | — | — |" in text
    assert (run.path / "pareto.png").read_bytes().startswith(b"\x89PNG")
    truncated = sum(r.truncated for f in data.flags for r in f.rounds)
    records = run.records.load().values()
    assert truncated == sum(r.finish_reason == "length" for r in records) > 0


def test_report_does_not_depend_on_record_order(tmp_path: Path) -> None:
    a = synthetic_run(tmp_path / "a", drop_one=False)
    b = synthetic_run(tmp_path / "b", drop_one=False)
    lines = b.records.path.read_text().splitlines()
    random.Random(1).shuffle(lines)
    b.records.path.write_text("\n".join(lines) + "\n")
    write_report(a, None)
    write_report(b, None)
    assert (a.path / "report.md").read_text() == (b.path / "report.md").read_text()
    assert (a.path / "metrics.json").read_text() == (b.path / "metrics.json").read_text()


def test_cli_report(run: RunDir, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mrsa", "report", str(run.path), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["complete"] == 47
    assert (run.path / "accuracy_vs_tokens.png").exists() and (run.path / "problem_grid.png").exists()
    missing = subprocess.run(
        [sys.executable, "-m", "mrsa", "report", str(tmp_path / "nothing")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        missing.returncode == 2 and "not a run folder" in missing.stderr and "Traceback" not in missing.stderr
    )
