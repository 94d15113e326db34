"""``python -m workers``: one worker, configured by the environment alone (``MRSA_*``; the
variables are the fields of :class:`workers.settings.WorkerSettings`). ``mrsa worker`` is the same worker
with flags on top of the environment; this entry point needs no part of the CLI."""

from __future__ import annotations

import sys

from pydantic import ValidationError

from mrsa.backends.base import BackendError
from mrsa.env import describe_settings_error
from mrsa.servers.embedded import EmbeddedUnavailable
from workers.settings import WorkerSettings
from workers.worker_process import run

USAGE = """usage: python -m workers

Runs one mrsa worker configured by MRSA_* environment variables (MRSA_REDIS_URL is required).
`mrsa worker --help` lists its settings with their variables; `mrsa worker` also takes them as flags.
"""


def main(argv: list[str]) -> int:
    """The exit code: 0 after a clean stop, 2 for a bad setting or argument, 1 for a failure."""
    if argv:
        help_asked = argv in (["--help"], ["-h"])
        print(USAGE if help_asked else f"python -m workers takes no arguments\n\n{USAGE}", file=sys.stderr)
        return 0 if help_asked else 2
    try:
        settings = WorkerSettings()
    except ValidationError as exc:
        print(f"python -m workers: error: {describe_settings_error(exc)}", file=sys.stderr)
        return 2
    try:
        run(settings)
    except (BackendError, EmbeddedUnavailable) as exc:
        print(f"python -m workers: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. the metrics port is taken
        print(f"python -m workers: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
