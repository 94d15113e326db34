"""``mrsa solve`` end to end on the embedded model, as a user runs it (separate processes)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.signals import default_sigint

pytestmark = pytest.mark.embedded

MRSA = [sys.executable, "-m", "mrsa"]
ATTEMPT = re.compile(r"<attempt (\d+)>\n(.*?)\n</attempt \1>", re.DOTALL)


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MRSA_")}
    return subprocess.run([*MRSA, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    trace = tmp_path_factory.mktemp("trace")
    proc = run("solve", "--preset", "smoke", "--json", "--trace", str(trace), "What is 7*6?")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # the whole stdout is one JSON object
    records = [json.loads(line) for line in (trace / "requests.jsonl").read_text().splitlines()]
    return result, records


def test_json_result_shape(smoke_run: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    result, _ = smoke_run
    p = result["params"]
    assert (p["population"], p["subset"], p["rounds"]) == (4, 2, 1)
    assert result["status"] == "succeeded"
    assert set(result["usage"]) >= {"decode_tokens", "prompt_tokens", "requests"}
    assert result["usage"]["requests"] == p["population"] * (p["rounds"] + 1)
    assert isinstance(result["votes"], list)
    assert all(set(v) >= {"answer", "count"} for v in result["votes"])
    assert "answer" in result
    assert [r["index"] for r in result["rounds"]] == list(range(p["rounds"] + 1))
    for rnd in result["rounds"]:
        assert [c["index"] for c in rnd["candidates"]] == list(range(p["population"]))
        for c in rnd["candidates"]:
            assert set(c) >= {
                "index",
                "answer",
                "finish_reason",
                "decode_tokens",
                "prompt_tokens",
                "tail_tokens",
                "parents",
            }
    decode = sum(c["decode_tokens"] for r in result["rounds"] for c in r["candidates"])
    assert decode == result["usage"]["decode_tokens"]


def test_parents_and_tails(smoke_run: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    result, _ = smoke_run
    n, k, tau = result["params"]["population"], result["params"]["subset"], result["params"]["tail"]
    for rnd in result["rounds"]:
        for c in rnd["candidates"]:
            if rnd["index"] == 0:
                assert c["parents"] == []
            else:
                assert len(c["parents"]) == k and len(set(c["parents"])) == k
                assert all(0 <= p < n for p in c["parents"])
            assert c["tail_tokens"] <= tau
            assert c["tail_tokens"] == min(tau, c["source_tokens"])
            # the tail is cut from the trace the model wrote: its length is the decode length
            # (the embedded server returns no ids, so the trace is re-tokenized to cut it)
            if c["decode_tokens"] <= tau:
                assert c["tail_tokens"] == c["source_tokens"]


def test_trace_shows_each_prompt_holding_its_parents_tails(
    smoke_run: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    result, records = smoke_run
    by_pos = {(r["round"], r["index"]): r for r in records}
    assert len(records) == result["usage"]["requests"]
    problem_prefix = "What is 7*6?\n\n"
    for rnd in result["rounds"][1:]:
        for c in rnd["candidates"]:
            prompt = by_pos[(rnd["index"], c["index"])]["request"]["messages"][0]["content"]
            assert prompt.startswith(problem_prefix)
            blocks = ATTEMPT.findall(prompt)
            assert [int(num) for num, _ in blocks] == list(range(1, len(c["parents"]) + 1))
            for (_, tail_text), parent in zip(blocks, c["parents"], strict=True):
                parent_text = by_pos[(rnd["index"] - 1, parent)]["responses"][0]["content"]
                assert parent_text.rstrip("\n").endswith(tail_text.strip("\n")) or tail_text.strip() == ""
    for rec in records:
        req = rec["request"]
        assert {"max_tokens", "temperature", "top_p", "top_k", "seed"} <= set(req)
        assert rec["responses"][0]["finish_reason"] in ("stop", "length")


NOTE = "This ran the embedded SmolLM2-135M-Instruct on the CPU: a pipeline check, not a math model."


def test_human_output_has_answer_and_round_table() -> None:
    proc = run(
        "solve", "--preset", "smoke", "--rounds", "0", "--population", "2", "--subset", "1", "What is 2+2?"
    )
    assert proc.returncode == 0, proc.stderr
    assert "answer:" in proc.stdout
    assert "Rounds" in proc.stdout and "decode tokens" in proc.stdout
    # after the answer, one line says what ran and how to run the same problem on a real server
    lines = proc.stdout.rstrip("\n").splitlines()
    answer_at = next(i for i, line in enumerate(lines) if line.startswith("answer:"))
    assert lines[answer_at + 1 :] == [
        f"{NOTE} For real answers, point mrsa at a server: "
        "mrsa solve --backend http://HOST:8000 --preset zaya1 'What is 2+2?'"
    ]


def test_json_output_has_no_note() -> None:
    """--json stays one JSON object on stdout: the note is in neither stream."""
    proc = run(
        "solve", "--preset", "smoke", "--rounds", "0", "--population", "1", "--subset", "1", "--json", "1+1"
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == "succeeded"
    assert "pipeline check" not in proc.stdout + proc.stderr


def test_no_note_when_a_backend_is_given(embedded_url: str) -> None:
    """The same model, reached by URL: mrsa cannot tell what serves it, so it says nothing."""
    proc = run(
        "solve", "--backend", embedded_url, "--preset", "smoke", "--rounds", "0", "--population", "1",
        "--subset", "1", "What is 2+2?",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "answer:" in proc.stdout and "pipeline check" not in proc.stdout + proc.stderr


def test_invalid_parameters_exit_2_naming_the_field() -> None:
    proc = run("solve", "--population", "3", "--subset", "5", "x", timeout=60)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "subset" in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--preset", "nope"], "preset"),
        (["--tail", "500", "--budget", "100"], "tail"),
        (["--chunk", "64", "--carryover", "64"], "carryover"),
        (["--tail-source", "words"], "tail_source"),
        (["--prompts", "missing"], "prompts"),
    ],
)
def test_more_bad_input(args: list[str], field: str) -> None:
    proc = run("solve", *args, "x", timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert field in proc.stderr and "Traceback" not in proc.stderr


def test_budget_over_context_is_refused_before_generating() -> None:
    proc = run("solve", "--preset", "smoke", "--budget", "9000", "--tail", "64", "x", timeout=120)
    assert proc.returncode == 2
    assert "budget" in proc.stderr and "8192" in proc.stderr and "Traceback" not in proc.stderr


def test_unreachable_backend_fails_fast_naming_the_url() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    proc = run("solve", "--backend", url, "--timeout", "5", "x", timeout=60)
    assert time.monotonic() - started < 30
    assert proc.returncode == 1
    assert url in proc.stderr and "Traceback" not in proc.stderr


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def test_ctrl_c_cancels_and_stops_the_embedded_server(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MRSA_")}
    trace = tmp_path / "trace"
    proc = subprocess.Popen(
        [
            *MRSA,
            "solve",
            "--preset",
            "smoke",
            "--budget",
            "400",
            "--rounds",
            "8",
            "--quiet",
            "--trace",
            str(trace),
            "Count to a thousand.",
        ],
        preexec_fn=default_sigint,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        children: list[int] = []
        # wait until the embedded server runs and at least one generation has come back
        while time.monotonic() < deadline and not ((trace / "requests.jsonl").exists() and children):
            time.sleep(0.2)
            children = children or _children(proc.pid)
        assert children, "the embedded server was not started"
        assert proc.poll() is None, "the job finished before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert "cancelled" in err and "Traceback" not in err
    time.sleep(0.5)
    for child in children:
        assert not Path(f"/proc/{child}").exists() or "zombie" in Path(f"/proc/{child}/status").read_text()


def test_embedded_server_dies_with_a_killed_parent(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MRSA_")}
    proc = subprocess.Popen(
        [
            *MRSA,
            "solve",
            "--preset",
            "smoke",
            "--budget",
            "400",
            "--rounds",
            "8",
            "--quiet",
            "Count to a thousand.",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    children: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not children:
            time.sleep(0.2)
            children = _children(proc.pid)
        assert children, "the embedded server was not started"
    finally:
        proc.kill()  # SIGKILL: no cleanup code of ours runs
        proc.wait(timeout=30)
    deadline = time.monotonic() + 20
    alive = children
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [
            c
            for c in children
            if Path(f"/proc/{c}").exists() and "zombie" not in Path(f"/proc/{c}/status").read_text()
        ]
    assert not alive, f"embedded server {alive} outlived its killed parent"
