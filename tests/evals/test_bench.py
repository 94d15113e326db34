"""``mrsa bench``: sweeps through the engine, records as candidates finish, resuming without
redoing finished candidates, and clean refusals of bad input.

The fast tests drive :func:`evals.sweep.run_sweep` with the fake backend. The embedded tests run the
issue's smoke sweep on the real SmolLM2 server: an uninterrupted reference, and the same sweep
interrupted twice (SIGINT, then SIGKILL) and resumed; the embedded server is deterministic for a
given prompt and seed, so the resumed sweep must end with exactly the reference's records and
report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import evals.session
from evals.bench import plan_bench, run_bench
from evals.configs import ConfigError, build_configs, parse_grid
from evals.datasets import Problem
from evals.grading import Grader
from evals.records import CandidateRecord, RecordLog
from evals.rundir import BackendEntry, Session
from evals.session import SessionOptions
from evals.sweep import SweepStats, plan_units, run_sweep
from mrsa.backends.base import BackendError, GenerationRequest, GenerationResult
from mrsa.cli.settings import Settings
from mrsa.store.base import Store
from mrsa.store.opening import open_store
from tests.fakes import FakeBackend
from tests.signals import default_sigint

MRSA = [sys.executable, "-m", "mrsa"]
UNREACHABLE = "http://127.0.0.1:9"  # nothing listens: a command that got past validation would exit 1


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MRSA_")}


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MRSA, *args], capture_output=True, text=True, timeout=timeout, env=env())


# -- configurations ------------------------------------------------------------------------------


def test_grid_is_a_cartesian_product_in_written_order() -> None:
    assert parse_grid("rounds=0,1;subset=1,2") == [
        {"rounds": 0, "subset": 1},
        {"rounds": 0, "subset": 2},
        {"rounds": 1, "subset": 1},
        {"rounds": 1, "subset": 2},
    ]
    assert parse_grid(None) == [{}]
    assert parse_grid("temperature=0.6; chunk=none") == [{"temperature": 0.6, "chunk": None}]


def test_configs_are_validated_and_named() -> None:
    configs = build_configs(["smoke"], "rounds=0,1;budget=64")
    assert [c.id for c in configs] == ["smoke:rounds=0,budget=64", "smoke:rounds=1,budget=64"]
    assert all(c.params.selection == "population" and c.params.budget == 64 for c in configs)
    assert build_configs(["smoke", "smoke"])[0].id == "smoke"
    assert build_configs(["smoke"], "temperature=0.3")[0].params.sampling.temperature == 0.3
    with pytest.raises(ConfigError, match=r"config smoke:subset=9: subset: K=9 must be ≤ population"):
        build_configs(["smoke"], "subset=9")
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        build_configs(["nope"])
    with pytest.raises(ConfigError, match=r"unknown key 'seed' \(use --seeds"):
        build_configs(["smoke"], "seed=1,2")
    with pytest.raises(ConfigError, match="KEY=V1,V2"):
        build_configs(["smoke"], "rounds")


# -- the sweep on the fake backend ---------------------------------------------------------------

PROBLEMS = {
    "toy": [
        Problem(id="toy-1", problem="What is 6*7?", answer="42"),
        Problem(id="toy-2", problem="What is 3+4?", answer="7"),
    ]
}
GOLDS = {("toy", p.id): p.answer for p in PROBLEMS["toy"]}


def script(request: GenerationRequest) -> str:
    tag = request.tag
    return f"Attempt r{tag['round']} i{tag['index']} of {request.messages[0].content[:12]!r}: \\boxed{{42}}"


async def sweep(
    backend: FakeBackend,
    log: RecordLog,
    grader: Grader,
    capacity: int = 6,
    store: Store | None = None,
    **session: Any,
) -> SweepStats:
    """The sweep on ``store`` (a fresh memory store when none is given)."""
    configs = build_configs(["smoke"], "population=3;subset=2;rounds=1;budget=64;tail=16")
    units = plan_units(configs, PROBLEMS, [0, 1])
    stats = SweepStats()
    async with contextlib.AsyncExitStack() as stack:
        if store is None:
            store = await stack.enter_async_context(open_store(Settings(redis_url=None)))
        await run_sweep(
            backend, units, log, grader, GOLDS, stats, store=store, capacity=capacity, model="fake", **session
        )
    return stats


@pytest.fixture(scope="module")
def grader() -> Iterator[Grader]:
    with Grader(workers=1, timeout_s=30.0) as g:
        yield g


def keyed(log: RecordLog) -> dict[tuple[Any, ...], dict[str, Any]]:
    lines = log.path.read_text().splitlines()
    out = {}
    for line in lines:
        rec = json.loads(line)
        key = (rec["problem"], rec["seed"], rec["round"], rec["index"])
        assert key not in out, f"duplicate record {key}"
        out[key] = rec
    return out


CLOCK = ("job_started_at", "started_at", "finished_at")


def untimed(records: dict[tuple[Any, ...], dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Records without their wall-clock times (which differ from run to run)."""
    return {k: {f: v for f, v in rec.items() if f not in CLOCK} for k, rec in records.items()}


async def test_sweep_records_every_candidate_graded(tmp_path: Path, grader: Grader) -> None:
    gate = asyncio.Event()
    peak: list[int] = []

    class Filling(FakeBackend):
        """Holds every request until the server's 6 slots are busy at once."""

        async def generate(self, request: GenerationRequest) -> list[GenerationResult]:
            if not gate.is_set() and self.in_flight + 1 >= 6:
                peak.append(self.in_flight + 1)
                gate.set()
            return await super().generate(request)

    backend = Filling(script, capacity=6, gate=gate)
    asyncio.get_running_loop().call_later(10, gate.set)  # never hang: a failed fill shows in `peak`
    log = RecordLog(tmp_path / "records.jsonl")
    stats = await sweep(backend, log, grader)
    records = keyed(log)
    assert len(records) == 2 * 2 * 3 * 2 == stats.candidates_new  # problems × seeds × N × (T+1)
    assert stats.units_done == 4 and stats.units_failed == 0
    assert len(backend.calls) == 24
    # jobs run side by side: the backend's 6 slots fill with requests of two jobs of N=3
    assert peak == [6]
    for (problem, _, rnd, _), rec in records.items():
        assert (
            rec["boxed"] == "42" and rec["config"] == "smoke:population=3,subset=2,rounds=1,budget=64,tail=16"
        )
        assert rec["correct"] is (problem == "toy-1")
        assert rec["reason"] == ("correct" if problem == "toy-1" else "wrong")
        assert len(rec["parents"]) == (2 if rnd == 1 else 0)
        assert rec["tail_tokens"] <= 16 and rec["tail"]


async def test_resume_generates_only_the_missing_candidates(tmp_path: Path, grader: Grader) -> None:
    log = RecordLog(tmp_path / "records.jsonl")
    await sweep(FakeBackend(script, capacity=6), log, grader)
    full = keyed(log)
    # Keep a partial history: toy-1 seed 0 complete; toy-2 seed 0 round 0 only; toy-1 seed 1 two
    # round-0 candidates; toy-2 seed 1 nothing. Plus a torn last line from a killed writer.
    keep = [
        k
        for k in full
        if (k[0], k[1]) == ("toy-1", 0)
        or ((k[0], k[1]) == ("toy-2", 0) and k[2] == 0)
        or ((k[0], k[1]) == ("toy-1", 1) and k[2] == 0 and k[3] < 2)
    ]
    log.path.write_text(
        "".join(json.dumps(full[k]) + "\n" for k in keep) + '{"config": "smoke", "datas', encoding="utf-8"
    )
    backend = FakeBackend(script, capacity=6)
    stats = await sweep(backend, log, grader)
    resumed = keyed(log)
    assert len(resumed) == len(full) == 24
    assert len(backend.calls) == 24 - len(keep) == stats.candidates_new
    generated = {(c.request.tag["round"], c.request.tag["index"]) for c in backend.calls}
    assert (0, 0) in generated and (0, 2) in generated
    # same records as the uninterrupted sweep (the fake backend is deterministic), but the clock
    assert untimed(resumed) == untimed(full)
    for rec in resumed.values():  # every candidate timed against the job of its own session
        assert rec["job_started_at"] <= rec["started_at"] <= rec["finished_at"]
    # a resumed round-1 prompt quotes the tails recorded before the interruption
    prompt = backend.requests_for(round=1)[0].messages[0].content
    assert any(full[k]["tail"] in prompt for k in keep if k[2] == 0)
    # and a third run finds nothing to do
    idle = FakeBackend(script)
    await sweep(idle, log, grader)
    assert idle.calls == [] and keyed(log) == resumed


@pytest.mark.redis
async def test_sweep_through_redis_resumes_in_a_new_session(
    tmp_path: Path, grader: Grader, redis_server: Any
) -> None:
    async with open_store(Settings(redis_url=redis_server.url, redis_prefix="benchtest")) as store:
        log = RecordLog(tmp_path / "records.jsonl")
        first = FakeBackend(script, capacity=6)
        await sweep(first, log, grader, store=store, namespace="run-0")
        full = keyed(log)
        assert len(full) == 24 and len(first.calls) == 24
        jobs = await store.list_jobs(owner="bench")
        assert len(jobs) == 4 and {j.status.value for j in jobs} == {"succeeded"}
        assert all(j.id.startswith("bench-run-0-") for j in jobs)
        keep = [k for k in full if k[1] == 0 or k[2] == 0]  # seed 1 lost its round 1
        log.path.write_text("".join(json.dumps(full[k]) + "\n" for k in keep))
        second = FakeBackend(script, capacity=6)
        await sweep(second, log, grader, store=store, namespace="run-1", stale_namespaces=["run-0"])
        assert len(second.calls) == 24 - len(keep) == 6
        assert {c.request.tag["round"] for c in second.calls} == {1}
        assert untimed(keyed(log)) == untimed(full)


def test_torn_last_line_is_dropped_and_repaired(tmp_path: Path) -> None:
    log = RecordLog(tmp_path / "records.jsonl")
    rec = CandidateRecord(
        config="c",
        dataset="d",
        problem="p",
        seed=0,
        round=0,
        index=0,
        parents=[],
        correct=False,
        reason="no_boxed",
        finish_reason="length",
        decode_tokens=5,
        prompt_tokens=7,
    )
    log.append([rec])
    with log.path.open("a") as fh:
        fh.write('{"config": "c", "dat')
    assert list(log.load()) == [rec.key]
    log.repair()
    log.append([rec.model_copy(update={"index": 1})])
    assert len(log.path.read_text().splitlines()) == 2 and len(log.load()) == 2


def test_a_session_the_backend_ends_is_closed_as_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """:func:`evals.bench.run_bench` closes the manifest's session however the run ends: here the
    backend fails after the session was recorded, and the error still reaches the caller."""
    data = tmp_path / "tiny.jsonl"
    data.write_text('{"id": "a", "problem": "What is 7*6?", "answer": "42"}\n')
    plan = plan_bench(tmp_path / "run", [str(data)], ["smoke"], None, [0], None, 10.0, 1000)
    backend = BackendEntry(url=UNREACHABLE, kind="vllm")

    async def backend_goes_away(*args: Any) -> None:
        run, manifest, _, _, stats = args[:5]
        stats.session_started_at = 1.0
        session = Session(started_at=1.0, backend=backend, mrsa_version="test", git_revision=None)
        run.save_manifest(manifest.model_copy(update={"sessions": [session]}))
        raise BackendError("the backend went away")

    monkeypatch.setattr(evals.session, "run_session", backend_goes_away)
    with pytest.raises(BackendError, match="went away"):
        run_bench(plan, SessionOptions(), Settings(), SweepStats())
    [session] = plan.run.load_manifest().sessions
    assert session.status == "failed" and session.finished_at is not None
    assert not plan.all_recorded()


# -- the command line: bad input exits 2 before anything runs --------------------------------------


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    return lines[0]


def test_malformed_dataset_line_exits_2_naming_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "problem": "p", "answer": "1"}\n{"id": "b", "problem": "q"}\n')
    out = tmp_path / "run"
    line = one_error_line(run("bench", "--dataset", str(bad), "--out", str(out), "--backend", UNREACHABLE))
    assert f"{bad}:2" in line and "missing key 'answer'" in line
    assert not out.exists()


def test_unknown_preset_exits_2(tmp_path: Path) -> None:
    out = tmp_path / "run"
    line = one_error_line(
        run("bench", "--dataset", "aime2025", "--preset", "nope", "--out", str(out), "--backend", UNREACHABLE)
    )
    assert "preset" in line and "nope" in line and not out.exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--grid", "subset=9"], "subset"),
        (["--grid", "warp=1"], "unknown key 'warp'"),
        (["--seeds", "two"], "seeds"),
        (["--dataset", "aime1999"], "aime1999"),
        (["--limit", "0"], "limit"),
    ],
)
def test_more_bad_input_exits_2(tmp_path: Path, args: list[str], needle: str) -> None:
    base = ["bench", "--out", str(tmp_path / "run"), "--backend", UNREACHABLE, "--preset", "smoke"]
    if "--dataset" not in args:
        base += ["--dataset", "aime2025"]
    assert needle in one_error_line(run(*base, *args))


def test_a_run_folder_with_other_parameters_is_refused(tmp_path: Path) -> None:
    from evals.rundir import Manifest, RunDir

    out = tmp_path / "run"
    other = build_configs(["smoke"], "population=3")[0].model_copy(update={"id": "smoke"})
    RunDir(out).save_manifest(Manifest(seeds=[0], configs=[other], datasets=[], grading={}))
    line = one_error_line(
        run(
            "bench", "--dataset", "aime2025", "--preset", "smoke", "--out", str(out), "--backend", UNREACHABLE
        )
    )
    assert "configuration 'smoke'" in line and "other parameters" in line
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x").write_text("x")
    line = one_error_line(
        run("bench", "--dataset", "aime2025", "--out", str(tmp_path / "junk"), "--backend", UNREACHABLE)
    )
    assert "not a run folder" in line


# -- the smoke sweep on the embedded model ---------------------------------------------------------

SMOKE = ["--dataset", "aime2025", "--preset", "smoke", "--limit", "3", "--seeds", "2"]
TOTAL = 3 * 2 * 4 * 2  # problems × seeds × N × (T+1)


def bench_args(url: str, out: Path, *extra: str) -> list[str]:
    return [*MRSA, "bench", *SMOKE, "--out", str(out), "--backend", url, "--progress-every", "2", *extra]


def lines_of(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def interrupt_when(proc: subprocess.Popen[str], records: Path, at_least: int, sig: int) -> None:
    deadline = time.monotonic() + 600
    while lines_of(records) < at_least:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the sweep made no progress"
        time.sleep(0.3)
    proc.send_signal(sig)


def requests_in(trace: Path) -> int:
    return lines_of(trace / "requests.jsonl")


@pytest.fixture(scope="module")
def reference(embedded_url: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke sweep run straight through."""
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = subprocess.run(
        [*bench_args(embedded_url, out), "--quiet", "--json"],
        capture_output=True,
        text=True,
        timeout=1200,
        env=env(),
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["records"] == summary["new_records"] == TOTAL
    assert summary["units_complete"] == summary["units_total"] == 6
    return out


@pytest.fixture(scope="module")
def resumed(embedded_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same sweep: Ctrl-C after some records, SIGKILL later, then run to the end."""
    base = tmp_path_factory.mktemp("resumed")
    out, records = base / "run", base / "run" / "records.jsonl"
    info: dict[str, Any] = {"out": out}

    first = subprocess.Popen(
        bench_args(embedded_url, out, "--trace", str(base / "t1")),
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env(),
        preexec_fn=default_sigint,
    )
    interrupt_when(first, records, 8, signal.SIGINT)
    _, err1 = first.communicate(timeout=300)
    info["sigint"] = (first.returncode, err1)
    info["after_sigint"] = lines_of(records)

    second = subprocess.Popen(
        bench_args(embedded_url, out, "--trace", str(base / "t2")),
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env(),
    )
    interrupt_when(second, records, info["after_sigint"] + 10, signal.SIGKILL)
    _, err2 = second.communicate(timeout=300)
    info["sigkill"] = (second.returncode, err2)
    info["before_last"] = records.read_bytes()
    info["after_sigkill"] = lines_of(records)

    third = subprocess.run(
        [*bench_args(embedded_url, out, "--trace", str(base / "t3"))],
        capture_output=True,
        text=True,
        timeout=1200,
        env=env(),
    )
    info["last"] = third
    info["last_requests"] = requests_in(base / "t3")

    again = subprocess.run(
        [*bench_args(embedded_url, out, "--trace", str(base / "t4")), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env(),
    )
    info["again"] = again
    info["again_requests"] = requests_in(base / "t4")
    return info


def report(out: Path) -> subprocess.CompletedProcess[str]:
    return run("report", str(out), timeout=300)


@pytest.mark.embedded
def test_interrupted_sweep_resumes_without_redoing_work(resumed: dict[str, Any]) -> None:
    code, err = resumed["sigint"]
    assert code == 130 and "interrupted" in err and "resume" in err and "Traceback" not in err
    assert re.search(r"tok/s · ETA \d+m\d\ds", err), err  # live progress on stderr
    assert 8 <= resumed["after_sigint"] < TOTAL
    code, _ = resumed["sigkill"]
    assert code == -signal.SIGKILL
    assert resumed["after_sigint"] + 10 <= resumed["after_sigkill"] < TOTAL

    last = resumed["last"]
    assert last.returncode == 0, last.stderr
    records = resumed["out"] / "records.jsonl"
    # every record exactly once, the old ones untouched, and only the missing candidates generated
    assert lines_of(records) == TOTAL
    assert records.read_bytes().startswith(resumed["before_last"])
    keys = [
        tuple(json.loads(x)[k] for k in ("problem", "seed", "round", "index"))
        for x in records.read_text().splitlines()
    ]
    assert len(set(keys)) == TOTAL
    assert resumed["last_requests"] == TOTAL - resumed["after_sigkill"]
    assert f"{TOTAL} records ({TOTAL - resumed['after_sigkill']} new)" in last.stdout

    again = resumed["again"]
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["new_records"] == 0 and resumed["again_requests"] == 0
    assert lines_of(records) == TOTAL
    manifest = json.loads((resumed["out"] / "manifest.json").read_text())
    # SIGINT closes its session; SIGKILL leaves it "running"; the last run needed no backend at all
    assert [s["status"] for s in manifest["sessions"]] == ["interrupted", "running", "completed"]
    assert manifest["model"] == "smollm2-135m-instruct" and manifest["seeds"] == [0, 1]
    assert manifest["sessions"][0]["mrsa_version"] and "git_revision" in manifest["sessions"][0]
    assert manifest["datasets"][0]["problems"] == ["aime2025-I-01", "aime2025-I-02", "aime2025-I-03"]
    assert manifest["configs"][0]["params"]["population"] == 4


def body(report_md: str) -> str:
    """The report from its first section on: the header names sessions' URLs and git revisions."""
    return report_md[report_md.index("## Configurations") :]


@pytest.mark.embedded
def test_resumed_sweep_ends_with_the_reference_records_and_report(
    reference: Path, resumed: dict[str, Any]
) -> None:
    def records(out: Path) -> dict[tuple[Any, ...], dict[str, Any]]:
        return {
            (r["problem"], r["seed"], r["round"], r["index"]): r
            for r in map(json.loads, (out / "records.jsonl").read_text().splitlines())
        }

    # Same work units and candidates as an uninterrupted run. The texts themselves are not compared:
    # llama-cpp-python reuses the previous request's KV prefix, so how a prompt is split into
    # batches (and the sampled tokens, at the last bit of the logits) depends on the order of
    # requests, which an interruption changes. (Fake-backend tests check exact equality.)
    resumed_records, reference_records = records(resumed["out"]), records(reference)
    assert resumed_records.keys() == reference_records.keys()
    for key, rec in resumed_records.items():
        assert rec["parents"] == reference_records[key]["parents"]  # planning is seed-determined
    for out in (reference, resumed["out"]):
        proc = report(out)
        assert proc.returncode == 0, proc.stderr
        for name in ("report.md", "metrics.json", "accuracy_vs_tokens.png", "problem_grid.png"):
            assert (out / name).stat().st_size > 0
    headings = [ln for ln in body((reference / "report.md").read_text()).splitlines() if ln.startswith("#")]
    assert headings == [
        ln for ln in body((resumed["out"] / "report.md").read_text()).splitlines() if ln.startswith("#")
    ]


@pytest.mark.embedded
def test_report_of_the_smoke_sweep(reference: Path) -> None:
    proc = report(reference)
    assert proc.returncode == 0, proc.stderr
    text = (reference / "report.md").read_text()
    for needle in (
        "## Results by round",
        "### aime2025",
        "| `smoke` | 0 |",
        "| `smoke` | 1 |",
        "## Baselines at matched decode budgets",
        "not in sweep",
        "## Published results beside this run",
        "| 88.3 | 91.9 |",
        "| 82.7 | 89.6 |",
        "| ≈47 | ≈73 |",
        "smollm2-135m-instruct",
        "![Accuracy against cumulative decode tokens, by round](accuracy_vs_tokens.png)",
        "![Fraction of candidates correct, per problem and round](problem_grid.png)",
        "Units complete:** 6 of 6",
    ):
        assert needle in text, needle
    for png in ("accuracy_vs_tokens.png", "problem_grid.png"):
        assert (reference / png).read_bytes().startswith(b"\x89PNG")
    metrics = json.loads((reference / "metrics.json").read_text())
    [group] = metrics["groups"]
    assert [r["round"] for r in group["rounds"]] == [0, 1]
    assert group["runs"] == 6 and group["problems"] == 3
    assert sum(group["reasons"].values()) == TOTAL
    r0, r1 = group["rounds"]
    assert r0["candidates"] == r1["candidates"] == 24
    assert r1["decode_tokens"] > r0["decode_tokens"] > 0  # cumulative
    assert r1["prompt_tokens"] > r0["prompt_tokens"] > 0
