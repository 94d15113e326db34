"""What is particular to the embedded model's server (llama-cpp-python's ``llama_cpp.server``).

Generation, tokens, tails, seeds and errors are the backend contract's, run against this server
and the others in tests/backends/test_backend_contract.py."""

from __future__ import annotations

import pytest

from mrsa.backends.openai import OpenAICompatibleBackend

pytestmark = pytest.mark.embedded


async def test_info_reports_capacity_and_context(embedded_backend: OpenAICompatibleBackend) -> None:
    info = await embedded_backend.info()
    assert info.kind == "llama-cpp-python"
    assert info.capacity == 1  # one request at a time: the client never sends more
    assert info.context_length == 8192
    assert info.model == "smollm2-135m-instruct"
    assert await embedded_backend.health()


async def test_tokenize_strips_the_bos_the_server_adds(embedded_backend: OpenAICompatibleBackend) -> None:
    # /extras/tokenize has no switch for special tokens: the client strips what it adds to ''.
    assert await embedded_backend.tokenize("") == []
    ids = await embedded_backend.tokenize("hello")
    assert await embedded_backend.detokenize(ids) == "hello"
