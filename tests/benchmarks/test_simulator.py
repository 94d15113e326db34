"""The inference-server simulator (testkit/simulator): its model, and that mrsa's vLLM client
speaks to it. It is a load-testing tool; functional tests of mrsa use real backends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mrsa.backends.base import BackendRequestError, GenerationRequest, Message
from mrsa.backends.factory import detect_kind
from mrsa.backends.http import HttpOptions
from mrsa.backends.openai import OpenAICompatibleBackend
from mrsa.engine.answers import extract_answer
from testkit.simulator.model import (
    PrefixCache,
    Scheduler,
    Sequence,
    SimConfig,
    block_hashes,
    decode,
    encode,
    problem_answers,
    render_chat,
    sample_output,
)
from testkit.simulator.process import running_simulator
from testkit.simulator.script import Scripted, load_script, scripted_for

ROOT = Path(__file__).resolve().parents[2]


def test_outputs_are_a_pure_function_of_prompt_and_seed() -> None:
    config = SimConfig(median_tokens=100, runaway_share=0.2)
    a = sample_output(config, "prompt", 7, 400, "p")
    assert a == sample_output(config, "prompt", 7, 400, "p")
    lengths = {sample_output(config, "prompt", s, 400, "p").tokens for s in range(50)}
    assert len(lengths) > 10  # a distribution, not a constant


def test_outputs_respect_max_tokens_and_carry_an_answer_when_finished() -> None:
    config = SimConfig(median_tokens=120, runaway_share=0.25)
    outs = [sample_output(config, f"prompt {s}", s, 300, "problem") for s in range(400)]
    assert all(o.tokens <= 300 for o in outs)
    truncated = [o for o in outs if o.finish_reason == "length"]
    assert 0.15 < len(truncated) / len(outs) < 0.4  # the runaway share plus the long tail
    assert all(o.tokens == 300 for o in truncated)
    answers = problem_answers("problem")
    for o in outs:
        if o.finish_reason == "stop":
            assert extract_answer(o.text, o.text, True) in answers
    correct = sum(1 for o in outs if o.finish_reason == "stop" and answers[0] in o.text)
    assert correct > len([o for o in outs if o.finish_reason == "stop"]) / 3


def test_tokenizer_round_trips_and_chat_template_opens_the_assistant_turn() -> None:
    text = "α + β = \\boxed{3}"
    assert decode(encode(text)) == text and len(encode(text)) == len(text)
    rendered = render_chat(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, continue_final=False
    )
    assert rendered.endswith("<|assistant|>\n")
    cont = render_chat(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "so far"}],
        add_generation_prompt=False,
        continue_final=True,
    )
    assert cont.endswith("<|assistant|>\nso far")


def test_prefix_cache_counts_shared_full_blocks_and_evicts_lru() -> None:
    cache = PrefixCache(capacity_blocks=16, block_size=4)
    a = encode("problem text shared " + "alpha one")
    b = encode("problem text shared " + "omega two")
    assert cache.admit(block_hashes(a, 4)) == 0
    shared = len("problem text shared ")  # 20 characters: 5 full blocks
    assert cache.admit(block_hashes(b, 4)) == (shared // 4) * 4
    assert cache.admit(block_hashes(a, 4)) == (len(a) // 4) * 4
    cache.admit(block_hashes(encode("x" * 40), 4))  # 10 new blocks push the rest out
    assert cache.admit(block_hashes(a, 4)) == 0


async def _run_sequences(config: SimConfig, specs: list[tuple[int, int]]) -> tuple[Scheduler, float]:
    sched = Scheduler(config)
    sched.start()
    try:
        t0 = time.perf_counter()
        seqs = [Sequence(prompt_tokens=32, hashes=[], output_tokens=n, priority=p) for n, p in specs]
        await asyncio.gather(*(sched.submit(s) for s in seqs))
        return sched, time.perf_counter() - t0
    finally:
        await sched.stop()


async def test_scheduler_batches_up_to_its_limit_and_takes_model_time() -> None:
    config = SimConfig(max_num_seqs=2, step_base_ms=1.0, step_per_seq_ms=1.0, prefill_ms_per_token=0.0)
    sched, elapsed = await _run_sequences(config, [(100, 0)] * 4)
    assert max(r for _, r, _ in sched.trace) == 2
    assert max(w for _, _, w in sched.trace) >= 2
    assert sched.stats.decode_tokens == 400 and sched.stats.finished == 4
    # Two waves of 100 steps at 3 ms (batch 2): 0.6 s of model time; wall time follows it.
    model_s = 2 * 100 * config.step_s(2)
    assert sched.stats.busy_seq_s == pytest.approx(2 * model_s, rel=0.02)
    assert model_s * 0.95 <= elapsed < model_s + 0.5
    stats = sched.stats.as_dict(config)
    assert stats["utilisation"] is not None and stats["utilisation"] > 0.9


async def test_priority_scheduling_admits_lower_values_first() -> None:
    config = SimConfig(max_num_seqs=1, step_base_ms=0.5, step_per_seq_ms=0.0, enable_priority=True)
    sched = Scheduler(config)
    sched.start()
    order: list[int] = []
    try:
        blocker = Sequence(prompt_tokens=8, hashes=[], output_tokens=40)
        first = asyncio.create_task(sched.submit(blocker))
        await asyncio.sleep(0.005)

        async def one(priority: int) -> None:
            await sched.submit(Sequence(prompt_tokens=8, hashes=[], output_tokens=5, priority=priority))
            order.append(priority)

        await asyncio.gather(one(3), one(-2), one(0))
        await first
    finally:
        await sched.stop()
    assert order == [-2, 0, 3]


@pytest.fixture(scope="module")
def simulator_url() -> Iterator[str]:
    flags = ["--max-num-seqs=4", "--step-base-ms=0.2", "--median-tokens=60", "--max-model-len=4096"]
    with running_simulator(flags) as url:
        yield url


async def test_mrsa_vllm_client_speaks_to_the_simulator(simulator_url: str) -> None:
    assert await detect_kind(simulator_url) == "vllm"
    backend = OpenAICompatibleBackend(simulator_url, dialect="vllm", options=HttpOptions(concurrency=4))
    try:
        info = await backend.info()
        assert info.model == "mrsa-sim" and info.context_length == 4096 and await backend.health()
        request = GenerationRequest(
            messages=[Message(role="user", content="What is 6*7?")], max_tokens=200, seed=3
        )
        results = await asyncio.gather(*(backend.generate(request) for _ in range(6)))
        first = results[0][0]
        assert all(r[0].content == first.content for r in results)  # same prompt and seed
        assert first.token_ids is not None and first.finish_reason == "stop"
        # As from vLLM: the ids end with the EOS, which is decoded (counted) but not content (dropped).
        assert len(first.token_ids) == first.completion_tokens - 1
        assert await backend.detokenize(first.token_ids) == first.content
        ids = await backend.tokenize("Hello, world")
        assert await backend.detokenize(ids) == "Hello, world"
        # A continuation (Delethink prefill) continues the assistant turn.
        cont = await backend.generate(request.model_copy(update={"prefill": "<think>\nso far"}))
        assert cont[0].prompt_tokens > first.prompt_tokens
        with pytest.raises(BackendRequestError, match="maximum context length"):
            await backend.generate(request.model_copy(update={"max_tokens": 5000}))
        backend.enable_priority = True
        with pytest.raises(BackendRequestError, match="Priority scheduling is not enabled"):
            await backend.generate(request.model_copy(update={"priority": -1}))
    finally:
        await backend.aclose()
    async with httpx.AsyncClient(base_url=simulator_url) as client:
        metrics = (await client.get("/metrics")).text
        assert 'vllm:num_requests_running{model_name="mrsa-sim"}' in metrics
        assert "vllm:num_requests_waiting" in metrics and "vllm:prefix_cache_hits_total" in metrics
        stats = (await client.get("/sim/stats")).json()
        assert stats["finished"] >= 7 and stats["prefix_cache_hit_rate"] > 0.5  # repeated prompts
        assert (await client.get("/sim/trace")).json()["points"]
        assert (await client.post("/sim/reset")).status_code == 204
        assert (await client.get("/sim/stats")).json()["requests"] == 0


@given(st.integers(0, 10**6), st.sampled_from(["draw", "right", "wrong", "unboxed", "unparsed", "runaway"]))
def test_a_scripted_problem_behaves_as_its_script_says(seed: int, behaviour: str) -> None:
    config = SimConfig(median_tokens=60, length_sigma=0.0, runaway_share=0.0, correct_share=0.5)
    gold = r"\frac{7}{3}\sqrt{3}"
    scripted = Scripted(problem="Compute x.", answer=gold, behaviour=behaviour)  # type: ignore[arg-type]
    out = sample_output(config, "Solve: Compute x.", seed, 400, "key", scripted)
    content = out.text.split("</think>")[-1]
    finished = out.finish_reason == "stop"
    answer = extract_answer(content, out.text, finished)
    if behaviour == "runaway":
        assert out.finish_reason == "length" and answer is None
        return
    assert finished
    if behaviour == "right":
        assert answer == gold and "\\boxed{" in content
    elif behaviour == "wrong":
        assert answer is not None and answer != gold and "\\boxed{" in content
    elif behaviour == "unboxed":
        # no box; the engine's fallback still finds an answer in "The answer is …" (here the last
        # number of the LaTeX), so the candidate counts as "answer without box"
        assert "\\boxed" not in out.text and content.endswith(f"The answer is {gold}.") and answer
    elif behaviour == "unparsed":
        assert answer == "\\quad"
    else:  # drawn: the gold answer or a wrong number, boxed
        assert answer is not None and "\\boxed{" in content


def test_the_script_matches_a_prompt_to_the_problem_it_quotes(tmp_path: Path) -> None:
    path = tmp_path / "answers.jsonl"
    path.write_text(
        '{"problem": "Find x.", "answer": "1"}\n\n'
        '{"id": "a", "problem": "Find x. Then find y.", "answer": "2", "sim": "error"}\n'
    )
    script = load_script(str(path))
    assert [s.behaviour for s in script] == ["draw", "error"]
    assert scripted_for(script, "Problem: Find x. Then find y. Think.") == script[1]  # the longer one
    assert scripted_for(script, "Problem: Find x.") == script[0]
    assert scripted_for(script, "Something else") is None
    path.write_text('{"problem": "p", "answer": "1", "sim": "sometimes"}\n')
    with pytest.raises(ValueError, match=r"answers.jsonl:1: sim must be one of"):
        load_script(str(path))
