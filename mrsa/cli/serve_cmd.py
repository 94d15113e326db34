"""``mrsa serve``: run the REST API with uvicorn (it enqueues; ``mrsa worker`` processes run the jobs)."""

from __future__ import annotations

import ipaddress
import logging
import sys
from typing import Annotated

import typer

from mrsa.cli.common import EXIT_USAGE, fail, settings_from_flags
from mrsa.cli.options import BACKEND_FLAGS, setting_flags
from mrsa.cli.settings import Settings
from mrsa.prices import PriceFileError

log = logging.getLogger("mrsa.api")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) is a loopback interface only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_auth(host: str, keys: list[str], allow_no_auth: bool) -> None:
    """Without API keys, warn; on a non-loopback interface, refuse unless told explicitly."""
    if keys:
        return
    if not is_loopback(host) and not allow_no_auth:
        fail(
            f"host: {host} is not a loopback address and no API keys are set, so anyone who can reach "
            "the port could submit jobs and read every job; set --api-keys (MRSA_API_KEYS), or pass "
            "--allow-no-auth (MRSA_ALLOW_NO_AUTH=1) if the network in front of it is trusted",
            EXIT_USAGE,
        )
    log.warning(
        "authentication is OFF: no API keys are set (--api-keys / MRSA_API_KEYS), every client on %s "
        "may submit jobs and read every job",
        host,
    )


@setting_flags(
    Settings,
    "redis_url",
    *BACKEND_FLAGS,
    "backend_context_length",
    "api_keys",
    "api_max_active_jobs",
    "api_max_problem_bytes",
    "allow_no_auth",
    "reports_dir",
    "prices_file",
    "api_passthrough_max_bytes",
    "api_passthrough_timeout_s",
    "api_passthrough_idle_s",
    "api_max_passthroughs_per_key",
    "api_max_passthroughs",
    "api_passthrough_drain_s",
)
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to bind (0.0.0.0 in a container).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Serve the REST API (OpenAPI docs at /docs) and the web console (/ui/) until Ctrl-C or SIGTERM."""
    from mrsa.api.app import create_app
    from mrsa.api.server import STARTUP_FAILURE, run_server

    settings = settings_from_flags(Settings, ctx.params, ctx)
    if not settings.redis_url:
        fail("redis: the API needs Redis: pass --redis URL or set MRSA_REDIS_URL", EXIT_USAGE)
    level = log_level.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        fail(f"log-level: unknown {log_level!r}; choose debug, info, warning or error", EXIT_USAGE)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    check_auth(host, settings.api_key_list(), settings.allow_no_auth)
    try:
        app = create_app(settings)
    except PriceFileError as exc:
        fail(str(exc), EXIT_USAGE)
    # uvicorn reports a failed startup (e.g. Redis unreachable after the retry window): exit 3.
    if not run_server(app, host=host, port=port, log_level=log_level.lower()):
        sys.exit(STARTUP_FAILURE)
