"""Cost accounting: cached prompt tokens from the server's usage, a user's price table, and the cost
that ``mrsa solve`` and the API show (against the real simulator, which reports its prefix cache)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mrsa.api.app import create_app
from mrsa.api.deps import ApiConfig, ApiDeps, BackendHandle
from mrsa.backends.openai import OpenAICompatibleBackend, parse_chat_reply
from mrsa.cli.settings import Settings
from mrsa.cli.solve import render_result
from mrsa.domain import JobResult, Usage
from mrsa.prices import Price, PriceFileError, PriceTable, load_prices
from mrsa.store.memory import MemoryStore
from testkit.simulator.process import running_simulator
from workers.inprocess import InProcessRunner

TOML = """
currency = "EUR"

[models."Zyphra/ZAYA1-8B"]
prompt = 1.0
cached_prompt = 0.1
decode = 2.0

[models."*"]
prompt = 0.5
decode = 0.5
"""


def test_cost_by_kind_of_token(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(TOML)
    table = load_prices(path)
    usage = Usage(prompt_tokens=1_000_000, cached_prompt_tokens=400_000, decode_tokens=2_000_000)
    cost = table.cost(usage, "Zyphra/ZAYA1-8B")
    assert cost is not None and cost.currency == "EUR" and cost.priced_as == "Zyphra/ZAYA1-8B"
    assert (cost.prompt, cost.cached_prompt, cost.decode) == pytest.approx((0.6, 0.04, 4.0))
    assert cost.total == pytest.approx(4.64)
    other = table.cost(usage, None)  # the embedded model has no id: the "*" entry
    assert other is not None and other.priced_as == "*"
    assert other.cached_prompt == pytest.approx(0.2)  # no cached price: the prompt price
    json_path = tmp_path / "prices.json"
    json_path.write_text(json.dumps({"models": {"m": {"prompt": 1, "decode": 1}}}))
    assert load_prices(json_path).cost(usage, "elsewhere") is None  # no entry, no "*": no cost


@given(
    st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 10**9), st.floats(0, 100), st.floats(0, 100)
)
def test_cost_is_additive_and_never_negative(
    prompt: int, cached: int, decode: int, prompt_price: float, decode_price: float
) -> None:
    table = PriceTable(
        models={"*": Price(prompt=prompt_price, cached_prompt=prompt_price / 4, decode=decode_price)}
    )
    usage = Usage(prompt_tokens=prompt, cached_prompt_tokens=min(cached, prompt), decode_tokens=decode)
    half = Usage(
        prompt_tokens=prompt // 2, cached_prompt_tokens=min(cached, prompt) // 2, decode_tokens=decode // 2
    )
    rest = Usage(
        prompt_tokens=prompt - half.prompt_tokens,
        cached_prompt_tokens=usage.cached_prompt_tokens - half.cached_prompt_tokens,
        decode_tokens=decode - half.decode_tokens,
    )
    whole, a, b = (table.cost(u, "m") for u in (usage, half, rest))
    assert whole is not None and a is not None and b is not None
    assert whole.total >= 0
    assert (a + b).total == pytest.approx(whole.total, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize(
    ("text", "name", "needle"),
    [
        ("[models.m]\nprompt = 1\ndecode = -2\n", "p.toml", "models.m.decode"),
        ("[models.m]\nprompt = 1\n", "p.toml", "models.m.decode"),
        ("[models.m]\nprompt = 1\ndecode = 1\nwat = 3\n", "p.toml", "models.m.wat"),
        ("models = {}\n", "p.toml", "models"),
        ("[models.m\n", "p.toml", "not valid TOML"),
        # Not finite: TOML's inf and nan, a literal too large for a float, JSON's Infinity and NaN.
        (
            "[models.m]\nprompt = inf\ndecode = 1\n",
            "p.toml",
            "models.m.prompt: Input should be a finite number",
        ),
        ("[models.m]\nprompt = 1\ndecode = nan\n", "p.toml", "models.m.decode: Input should be a finite"),
        ("[models.m]\nprompt = 1\ncached_prompt = 1e400\ndecode = 1\n", "p.toml", "models.m.cached_prompt"),
        ("[models.m]\nprompt = -inf\ndecode = 1\n", "p.toml", "models.m.prompt"),
        (
            '{"models": {"m": {"prompt": Infinity, "decode": 1}}}',
            "p.json",
            "models.m.prompt: Input should be",
        ),
        ('{"models": {"*": {"prompt": 1, "decode": NaN}}}', "p.json", "models.*.decode: Input should be"),
        ("{", "p.json", "not valid JSON"),
    ],
)
def test_bad_price_tables_name_the_file_and_field(tmp_path: Path, text: str, name: str, needle: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(PriceFileError) as caught:
        load_prices(path)
    assert str(caught.value).startswith(f"prices: {path}") and needle in str(caught.value)
    with pytest.raises(PriceFileError, match="cannot read"):
        load_prices(tmp_path / "missing.toml")


def test_cached_tokens_are_read_from_openai_usage() -> None:
    reply = {
        "choices": [{"index": 0, "message": {"content": "4"}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": 30,
            "completion_tokens": 2,
            "prompt_tokens_details": {"cached_tokens": 16},
        },
    }
    (result,) = parse_chat_reply(reply, "http://x", 1)
    assert (result.prompt_tokens, result.cached_prompt_tokens) == (30, 16)
    del reply["usage"]["prompt_tokens_details"]  # type: ignore[attr-defined]
    assert parse_chat_reply(reply, "http://x", 1)[0].cached_prompt_tokens == 0


@pytest.mark.timeout(120)
def test_solve_shows_cached_tokens_and_cost(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text(TOML)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MRSA_")}
    flags = ["--step-base-ms=1", "--step-per-seq-ms=0", "--prefill-ms-per-token=0", "--block-size=4"]
    with running_simulator(flags) as url:
        base = [
            sys.executable,
            "-m",
            "mrsa",
            "solve",
            "--backend",
            url,
            "--preset",
            "smoke",
            "--prices",
            str(prices),
        ]
        proc = subprocess.run(
            [*base, "--json", "What is 7*6?"], capture_output=True, text=True, timeout=90, env=env
        )
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        bad = prices.with_name("bad.toml")
        bad.write_text("[models.m]\nprompt = -1\ndecode = 1\n")
        refused = subprocess.run(
            [*base[:-1], str(bad), "x"], capture_output=True, text=True, timeout=60, env=env
        )
    usage = result["usage"]
    # Round 0's N prompts are one text: the simulator's prefix cache serves all but the first.
    assert 0 < usage["cached_prompt_tokens"] < usage["prompt_tokens"]
    assert sum(r["usage"]["cached_prompt_tokens"] for r in result["rounds"]) == usage["cached_prompt_tokens"]
    cost = result["cost"]
    assert cost["currency"] == "EUR" and cost["priced_as"] == "*"  # the simulator's model id has no entry
    expected = (
        (usage["prompt_tokens"] - usage["cached_prompt_tokens"]) * 0.5
        + usage["cached_prompt_tokens"] * 0.5
        + usage["decode_tokens"] * 0.5
    ) / 1e6
    assert cost["total"] == pytest.approx(expected)
    render_result(JobResult.model_validate(result))  # the human output of the same result
    shown = capsys.readouterr().out
    assert f"(cached {usage['cached_prompt_tokens']})" in shown and f"cost {cost['total']:.4f} EUR" in shown
    assert (
        refused.returncode == 2 and "models.m.prompt" in refused.stderr and "Traceback" not in refused.stderr
    )


def test_report_costs_per_job_and_per_sweep(tmp_path: Path) -> None:
    from evals.report import compute, render_markdown
    from tests.evals.test_report import synthetic_run

    run = synthetic_run(tmp_path / "run")
    records = list(run.records.load().values())
    table = PriceTable(currency="EUR", models={"synthetic-model": Price(prompt=1.0, decode=2.0)})
    data = compute(run, None, table)
    costs = data.costs
    assert costs.priced and len(costs.jobs) == len({r.unit for r in records})  # every job, finished or not
    decode = sum(r.decode_tokens for r in records)
    prompt = sum(r.prompt_tokens for r in records)
    assert costs.sweep.usage.decode_tokens == decode and costs.sweep.usage.prompt_tokens == prompt
    assert costs.sweep.cost is not None
    assert costs.sweep.cost.total == pytest.approx((prompt * 1.0 + decode * 2.0) / 1e6)
    assert sum(j.cost.total for j in costs.jobs if j.cost) == pytest.approx(costs.sweep.cost.total)
    assert sum(g.jobs for g in costs.groups) == len(costs.jobs)
    markdown = render_markdown(data)
    assert "## Tokens and cost" in markdown and f"{costs.sweep.cost.total:.4f} EUR" in markdown
    assert "No price table" in render_markdown(compute(run, None))

    metrics = json.loads(data.model_dump_json(exclude={"manifest"}))  # metrics.json
    assert (
        len(metrics["costs"]["jobs"]) == len(costs.jobs) and metrics["costs"]["jobs"][0]["cost"]["total"] > 0
    )
    bad = tmp_path / "prices.json"
    bad.write_text(json.dumps({"models": {"*": {"prompt": 1}}}))
    proc = subprocess.run(
        [sys.executable, "-m", "mrsa", "report", str(run.path), "--prices", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "models.*.decode" in proc.stderr and "Traceback" not in proc.stderr


async def test_a_cost_too_large_for_a_float_is_left_out_never_a_500() -> None:
    """A finite price whose cost overflows a float (1e308 per million tokens): the finished chat
    completion and the job's result answer 200 with no cost, as JSON can carry no infinity."""
    table = PriceTable(models={"*": Price(prompt=1e308, decode=1e308)})
    assert table.cost(Usage(prompt_tokens=10, decode_tokens=20), "m") is None
    assert table.cost(Usage(prompt_tokens=0, decode_tokens=0), "m") is not None  # 0 × 1e308 is finite
    flags = ["--step-base-ms=1", "--step-per-seq-ms=0", "--prefill-ms-per-token=0", "--block-size=4"]
    with running_simulator(flags) as url:
        backend = OpenAICompatibleBackend(url, dialect="vllm")
        store = MemoryStore()
        deps = ApiDeps(
            store=store, backend=BackendHandle(None, backend=backend), config=ApiConfig(prices=table)
        )
        transport = httpx.ASGITransport(app=create_app(Settings(), deps), raise_app_exceptions=False)
        try:
            async with (
                httpx.AsyncClient(transport=transport, base_url="http://api.test", timeout=90) as api,
                InProcessRunner(backend, store, capacity=2),
            ):
                body = {
                    "model": "m",
                    "messages": [{"role": "user", "content": "What is 6*7?"}],
                    "preset": "smoke",
                    "population": 2,
                    "budget": 24,
                    "tail": 12,
                }
                chat = await api.post("/v1/chat/completions", json=body)
                assert chat.status_code == 200, chat.text
                info = chat.json()["mrsa"]
                assert info.get("cost") is None and chat.json()["usage"]["completion_tokens"] > 0
                result = await api.get(f"/v1/jobs/{info['job_id']}/result")
                assert result.status_code == 200, result.text
                assert result.json()["cost"] is None and result.json()["usage"]["decode_tokens"] > 0
        finally:
            await backend.aclose()


def test_serve_refuses_to_start_with_a_price_that_is_not_finite(tmp_path: Path) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text("[models.m]\nprompt = 1\ndecode = inf\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MRSA_")}
    proc = subprocess.run(
        [sys.executable, "-m", "mrsa", "serve", "--redis", "redis://127.0.0.1:1", "--prices", str(prices)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr
    assert (
        "models.m.decode: Input should be a finite number" in proc.stderr and "Traceback" not in proc.stderr
    )
