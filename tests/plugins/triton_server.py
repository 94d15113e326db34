"""Session fixture: the bundled Triton (PyTriton's real ``tritonserver``, a Python-backend model with
the vLLM backend's wire, the embedded SmolLM2 GGUF) for all tests, and the tokenizer built from the
GGUF.

The first session on a machine builds the Triton environment (≈30 s when pip's cache holds the
llama-cpp-python wheel ``make setup`` built, minutes if it must compile llama.cpp). pytest-timeout's
600 s per test include that test's fixture setup (``timeout_func_only`` is off), so ``make test``
builds the environment before pytest starts (the Makefile's ``bundled-envs``) and the fixture only
finds it; run alone, the fixture builds it itself. A server that cannot be built or
started fails the tests that need it, with its log; it never skips.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from mrsa.servers.bundled_triton import BUNDLED_MODEL, TritonServer, TritonUnavailable, ensure_tokenizer
from tests.plugins.servers import ServerHandle, fail_with_log


def start_triton(**kwargs: int) -> TritonServer:
    """A started bundled Triton (the caller stops it); fails the test with the server's log."""
    server = TritonServer(**kwargs)
    try:
        asyncio.run(server.start())
    except TritonUnavailable as exc:
        server.stop()
        fail_with_log(f"the bundled Triton did not start: {str(exc).splitlines()[0]}", server.log_path)
    return server


@pytest.fixture(scope="session")
def triton_server() -> Iterator[ServerHandle]:
    """The bundled Triton with one model instance, started once per session (stopped at the end)."""
    try:
        tokenizer = ensure_tokenizer()
    except TritonUnavailable as exc:
        pytest.fail(f"the bundled Triton's tokenizer could not be built: {exc}", pytrace=False)
    server = start_triton()
    try:
        yield ServerHandle(
            kind="triton",
            url=server.url,
            model=BUNDLED_MODEL,
            context_length=server.n_ctx,
            log_path=server.log_path,
            tokenizer=tokenizer,
            metrics_url=server.metrics_url,
        )
    finally:
        server.stop()
