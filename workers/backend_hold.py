"""Whether a worker's backend is *out*, judged from evidence about the backend, not about one request.

A request that fails with an outage error (connection refused, timeout, 429/502/503/504) after the
HTTP client's retries may be that request's own trouble: one prompt the server stalls on, one
replica behind a router that is restarting. Stopping the whole worker for it starves every other
job while the backend serves them fine. So the worker stops taking tasks only when

* ``out_after`` distinct tasks have failed so, one after another, with no task succeeding in
  between, or
* the backend's health probe (``Backend.health``: vLLM's ``/health``, Triton's
  ``/v2/health/ready``…) fails or does not answer within ``probe_timeout_s``, asked when a task
  fails (one probe at a time, shared by the tasks failing meanwhile).

Until then a failing task retries by itself with its own backoff while the worker keeps taking
tasks. The hold ends when any task succeeds; it also lapses once no task is retrying (they ran or
their jobs failed after the hold time), and comes back at the next failure without a new probe
until a task succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from mrsa.backends.base import BackendError

log = logging.getLogger("mrsa.worker")

Probe = Callable[[], Awaitable[bool]]


class BackendHold:
    """The evidence one worker has about its backend, and whether it holds (takes no new tasks)."""

    def __init__(self, probe: Probe, *, out_after: int = 3, probe_timeout_s: float = 10.0) -> None:
        self._probe = probe
        self.out_after = max(1, out_after)
        self.probe_timeout_s = probe_timeout_s
        self._failing: set[str] = set()  # tasks whose request failed since the last success
        self._retrying = 0  # tasks waiting to try again after an outage error
        self._probing: asyncio.Task[bool] | None = None
        self.reason: str | None = None  # why the backend is judged out; None while it is not

    @property
    def holding(self) -> bool:
        """Take no new tasks: the backend is judged out and tasks are waiting for it."""
        return self.reason is not None and self._retrying > 0

    def retrying(self, delta: int) -> None:
        """A task starts (+1) or stops (-1) retrying after an outage error."""
        self._retrying += delta

    def succeeded(self) -> None:
        """A task ran: the backend serves."""
        self._failing.clear()
        if self.reason is not None:
            log.info("backend serving again: taking tasks again")
            self.reason = None

    async def failed(self, task_key: str, exc: BackendError) -> bool:
        """Record that ``task_key``'s request failed with an outage error; ``True`` when the
        backend is judged out (the worker then holds), ``False`` when only this task is retried."""
        self._failing.add(task_key)
        if self.reason is None:
            if len(self._failing) >= self.out_after:
                self._enter(f"{len(self._failing)} tasks failed in a row with no success between ({exc})")
            elif not await self._probe_shared():
                self._enter(f"its health probe failed after: {exc}")
        return self.reason is not None

    def _enter(self, reason: str) -> None:
        if self.reason is None:
            log.warning("backend out: %s; taking no new tasks", reason)
            self.reason = reason

    async def _probe_shared(self) -> bool:
        """One health probe for every task failing meanwhile; shielded, so a task cancelled while
        it waits does not cancel the others' probe."""
        if self._probing is None or self._probing.done():
            self._probing = asyncio.create_task(self._probe_bounded())
        return await asyncio.shield(self._probing)

    async def _probe_bounded(self) -> bool:
        try:
            async with asyncio.timeout(self.probe_timeout_s):
                return await self._probe()
        except TimeoutError:
            return False
        except Exception:  # a probe that breaks says nothing good about the backend
            log.exception("backend health probe failed")
            return False

    async def aclose(self) -> None:
        if self._probing is not None and not self._probing.done():
            self._probing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probing
