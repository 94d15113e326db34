"""``mrsa serve``: run the REST API with uvicorn (it enqueues; ``mrsa worker`` processes run the jobs)."""

from __future__ import annotations

import ipaddress
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from mrsa.cli.common import EXIT_USAGE, fail, settings_from_flags
from mrsa.cli.options import BackendKindOpt, PricesOpt, RedisOpt
from mrsa.prices import PriceFileError
from mrsa.settings import Settings

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


def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to bind (0.0.0.0 in a container).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    redis_url: RedisOpt = None,
    backend_url: Annotated[
        str | None,
        typer.Option(
            "--backend",
            help="Inference server the API asks about context length and health (env MRSA_BACKEND_URL); "
            "unset = no budget check against the context.",
        ),
    ] = None,
    backend_kind: BackendKindOpt = None,
    backend_context_length: Annotated[
        int | None,
        typer.Option(
            "--context-length",
            min=1,
            help="The backend's context in tokens when the server does not report it "
            "(env MRSA_BACKEND_CONTEXT_LENGTH; vLLM and `mrsa backend` report theirs).",
        ),
    ] = None,
    api_keys: Annotated[
        str | None,
        typer.Option(help="Comma-separated bearer API keys (env MRSA_API_KEYS); empty = no auth."),
    ] = None,
    api_max_active_jobs: Annotated[
        int | None,
        typer.Option(
            "--max-active-jobs", min=1, help="Queued + running jobs per key (env MRSA_API_MAX_ACTIVE_JOBS)."
        ),
    ] = None,
    api_max_problem_bytes: Annotated[
        int | None,
        typer.Option(
            "--max-problem-bytes",
            min=1,
            help="Largest problem accepted, bytes (env MRSA_API_MAX_PROBLEM_BYTES).",
        ),
    ] = None,
    allow_no_auth: Annotated[
        bool | None,
        typer.Option(
            "--allow-no-auth",
            help="Listen on a non-loopback --host without API keys (env MRSA_ALLOW_NO_AUTH): anyone "
            "who can reach the port may submit jobs and read every job.",
        ),
    ] = None,
    reports_dir: Annotated[
        Path | None,
        typer.Option(
            file_okay=False,
            help="Folder of sweep run folders (mrsa bench --out) whose reports the API serves at "
            "/v1/reports and the console shows at /ui/#/reports (env MRSA_REPORTS_DIR).",
        ),
    ] = None,
    prices_file: PricesOpt = None,
    api_passthrough_max_bytes: Annotated[
        int | None,
        typer.Option(
            "--passthrough-max-bytes",
            min=1024,
            help="Largest reply a chat passthrough relays, bytes; a longer one is cut "
            "(env MRSA_API_PASSTHROUGH_MAX_BYTES; default 64 MiB).",
        ),
    ] = None,
    api_passthrough_timeout_s: Annotated[
        float | None,
        typer.Option(
            "--passthrough-timeout",
            min=0.001,
            help="Total seconds of one chat passthrough, the backend's wait included "
            "(env MRSA_API_PASSTHROUGH_TIMEOUT_S; default 1800).",
        ),
    ] = None,
    api_passthrough_idle_s: Annotated[
        float | None,
        typer.Option(
            "--passthrough-idle-timeout",
            min=0.001,
            help="Longest silence within a passthrough's reply body, seconds "
            "(env MRSA_API_PASSTHROUGH_IDLE_S; default 300).",
        ),
    ] = None,
    api_max_passthroughs_per_key: Annotated[
        int | None,
        typer.Option(
            "--max-passthroughs-per-key",
            min=1,
            help="Chat passthroughs open per key, 429 above "
            "(env MRSA_API_MAX_PASSTHROUGHS_PER_KEY; default 64).",
        ),
    ] = None,
    api_max_passthroughs: Annotated[
        int | None,
        typer.Option(
            "--max-passthroughs",
            min=1,
            help="Chat passthroughs open in all, 503 above (env MRSA_API_MAX_PASSTHROUGHS; default 512).",
        ),
    ] = None,
    api_passthrough_drain_s: Annotated[
        float | None,
        typer.Option(
            "--passthrough-drain",
            min=0,
            help="On SIGTERM, seconds open passthroughs get before they are cut "
            "(env MRSA_API_PASSTHROUGH_DRAIN_S; default 10).",
        ),
    ] = None,
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
