"""What a real inference-server fixture hands the tests: one shape for every server, so the
backend contract (tests/backends/test_backend_contract.py) runs unchanged against each of them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class ServerHandle:
    """A running server started by the test session (stopped at its end)."""

    kind: str  # mrsa's --backend-kind for it
    url: str  # base URL, no trailing /v1
    model: str  # the served model's id
    context_length: int  # tokens, as the server was started
    log_path: Path  # the server's own log, for failure messages
    tokenizer: Path | None = None  # local tokenizer folder (Triton), else None
    metrics_url: str | None = None  # the server's Prometheus endpoint, None when it has none


def fail_with_log(what: str, log_path: Path, lines: int = 40) -> None:
    """Fail (never skip) the tests that need a server that could not start, with its last lines."""
    try:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        tail = "(no log)"
    pytest.fail(f"{what}; last lines of {log_path}:\n{tail}", pytrace=False)
