"""Every setting (``MRSA_*``) by the names the tests, benchmarks' users and older code know.

Each group is defined and owned by the layer it configures — the backend's
(:mod:`mrsa.backends.settings`), the store's (:mod:`mrsa.store.settings`), answer clustering's
(:mod:`mrsa.engine.settings`), the price table's (:mod:`mrsa.prices`), the API's
(:mod:`mrsa.api.settings`), the worker's (:mod:`workers.settings`) and the client commands'
(:mod:`mrsa.cli.settings`, which also holds :class:`Settings`, the flat union the CLI's commands
read). This module only names them; nothing in ``mrsa``, ``workers`` or ``evals`` imports it.
"""

from __future__ import annotations

from mrsa.cli.settings import Settings, get_settings
from mrsa.engine.settings import EQUIVALENCE_MAX_CHARS, EQUIVALENCE_TIMEOUT_S, EQUIVALENCE_WORKERS
from mrsa.env import describe_settings_error, env_name
from workers.settings import WorkerSettings

__all__ = [
    "EQUIVALENCE_MAX_CHARS",
    "EQUIVALENCE_TIMEOUT_S",
    "EQUIVALENCE_WORKERS",
    "Settings",
    "WorkerSettings",
    "describe_settings_error",
    "env_name",
    "get_settings",
]
