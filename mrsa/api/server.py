"""uvicorn's server for ``mrsa serve``, which also tells the app when SIGTERM/SIGINT arrives.

uvicorn waits for every open response before it stops; a chat passthrough to a stalled backend
would hold a shutdown for as long as the backend stalls. The signal starts the passthroughs' drain
(:meth:`mrsa.api.chat.passthrough_slots.Passthroughs.request_drain`), which cuts them after
``MRSA_API_PASSTHROUGH_DRAIN_S``.
"""

from __future__ import annotations

from collections.abc import Callable
from types import FrameType

import uvicorn
from fastapi import FastAPI
from uvicorn.config import STARTUP_FAILURE

from mrsa.api.deps import ApiDeps

__all__ = ["STARTUP_FAILURE", "DrainingServer", "run_server"]


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._on_exit()


def drain_passthroughs(app: FastAPI) -> None:
    """Start the open passthroughs' drain (from the signal handler; before startup: nothing open)."""
    deps: ApiDeps | None = getattr(app.state, "deps", None)
    if deps is not None:
        deps.passthroughs.request_drain()


def run_server(app: FastAPI, *, host: str, port: int, log_level: str) -> bool:
    """Serve ``app`` until a signal; False when it never started."""
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, proxy_headers=True)
    server = DrainingServer(config, on_exit=lambda: drain_passthroughs(app))
    server.run()
    return server.started
