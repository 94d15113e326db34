"""Child-process set-up for tests that interrupt a command with SIGINT."""

from __future__ import annotations

import signal


def default_sigint() -> None:
    """``preexec_fn``: give the child the default SIGINT disposition.

    A non-interactive shell starts background jobs with SIGINT ignored, children inherit that, and
    Python then never raises KeyboardInterrupt, so a test run that way (as CI may) would wait
    forever for a Ctrl-C to take effect.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
