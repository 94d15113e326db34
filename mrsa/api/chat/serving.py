"""Serving one RSA chat completion: wait for its job while keeping the connection alive, and send
its outcome (:mod:`mrsa.api.chat.completion`) in the shape the request asked for.

* ``stream: true`` — server-sent events: a first chunk with the assistant role at once, SSE comment
  lines (``: round 1/2 …`` progress and pings) while the job runs, then the content chunk, the
  finish chunk (plus a usage chunk with ``stream_options.include_usage``) and ``data: [DONE]``. A
  failed job ends the stream with ``data: {"message": …, "error": {…}}``, which OpenAI SDKs raise.
* ``stream: false`` — the response is held for up to ``chat_hold_s`` (20 s by default). A job that
  ends by then gets an ordinary response with an honest status (200, or 502/409 with an error
  body). After that the server commits to 200 and sends one space every ``keepalive_s`` — leading
  whitespace is valid JSON, so clients parse the body as usual once the object follows. A job that
  then fails is reported as an ``{"error": {…}}`` body under that 200: use ``stream: true`` where
  that matters.

Failed and cancelled jobs carry ``x-should-retry: false`` so SDKs do not resubmit them. If the
client goes away before the end, the job is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from sse_starlette import EventSourceResponse, ServerSentEvent

from mrsa.api.chat.completion import CompletionRenderer, error_body
from mrsa.api.chat.schemas import ChatCompletionRequest, Delta
from mrsa.api.deps import ApiDeps
from mrsa.api.jobs import operations as jobs
from mrsa.api.streams import SlotEventSourceResponse, SlotStreamingResponse, StreamSlot
from mrsa.domain import Job
from mrsa.engine.follow import follow

log = logging.getLogger("mrsa.api")

NO_RETRY = {"x-should-retry": "false"}
DISCONNECT_REASON = "cancelled: the chat-completions client disconnected"


class ChatRun:
    """One chat completion's job: wait for it, and answer with its outcome."""

    def __init__(self, deps: ApiDeps, request: Request, job: Job, body: ChatCompletionRequest) -> None:
        self.deps = deps
        self.request = request
        self.job = job
        self.body = body
        self.render = CompletionRenderer(deps, job, body)
        self.headers = self.render.headers
        # How long one event read waits; also how often a waiting response checks for its client.
        self.block_ms = min(deps.config.events_block_ms, 1000)

    async def respond(self, slot: StreamSlot) -> JSONResponse | StreamingResponse | EventSourceResponse:
        """The answer in the shape the request asked for (see the module docstring). ``slot`` (the
        event read the wait holds) goes with a streamed response, which gives it back when it ends;
        otherwise it is given back here."""
        handed_over = False
        try:
            if self.body.stream:
                handed_over = True
                return SlotEventSourceResponse(
                    self.sse(), ping=self.deps.config.keepalive_s, sep="\n", headers=self.headers, slot=slot
                )
            waiter = asyncio.create_task(self.wait())
            try:
                done = await asyncio.wait_for(asyncio.shield(waiter), self.deps.config.chat_hold_s)
            except TimeoutError:
                handed_over = True
                return SlotStreamingResponse(
                    self.keepalive_json(waiter),
                    media_type="application/json",
                    headers=self.headers,
                    slot=slot,
                )
            except BaseException:
                waiter.cancel()
                raise
            return await self.final_response(done)
        finally:
            if not handed_over:
                slot.release()

    # -- waiting -----------------------------------------------------------------------------------

    async def progress(self) -> AsyncIterator[str]:
        """A line per round and per stored candidate until the job is over (:func:`follow`)."""
        params = self.job.spec.params
        async for _, event in follow(self.deps.store, self.job.id, block_ms=self.block_ms):
            if event.type == "candidate":
                size = params.stage_population(event.round or 0)
                yield f"round {event.round}/{params.rounds}: {event.done}/{size} candidates"
            elif event.type == "round":
                yield f"round {event.round}/{params.rounds} started"

    async def wait(self) -> Job:
        """Until the job is over, or until the client goes away (the job is then cancelled; a
        streamed response is torn down on its own, which cancels it too: see :meth:`sse`)."""
        over = asyncio.create_task(self._drain())
        gone = asyncio.create_task(self._cancel_on_disconnect())
        try:
            await asyncio.wait({over, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            over.cancel()
            gone.cancel()
        for task in (over, gone):
            if task.done() and not task.cancelled():
                task.result()  # a store error reaches the caller, as from any read
        return await self.deps.store.get_job(self.job.id) or self.job

    async def _drain(self) -> None:
        async for _ in self.progress():
            pass

    async def _cancel_on_disconnect(self) -> None:
        while True:
            if await self.request.is_disconnected():
                await self.cancel_if_running()
                return
            await asyncio.sleep(self.block_ms / 1000)

    async def cancel_if_running(self) -> None:
        """The client is gone: stop the job (shielded, as this runs while the response is torn down)."""
        with anyio.move_on_after(5, shield=True):
            current = await self.deps.store.get_job(self.job.id)
            if current is not None and not current.status.terminal:
                log.info(
                    "chat completion %s: client disconnected, cancelling job %s", self.render.id, self.job.id
                )
                with contextlib.suppress(Exception):
                    await jobs.cancel(self.deps, current, DISCONNECT_REASON)

    # -- answering ---------------------------------------------------------------------------------

    async def final_response(self, job: Job) -> JSONResponse:
        """The JSON answer of a job that ended within the hold: 200, or the error and its status."""
        outcome = await self.render.outcome(job)
        if outcome.completion is not None:
            return JSONResponse(outcome.completion.wire(), headers=self.headers)
        assert outcome.error is not None
        return JSONResponse(
            error_body(outcome.error).model_dump(mode="json", exclude_none=True),
            status_code=outcome.status,
            headers={**self.headers, **NO_RETRY},
        )

    async def keepalive_json(self, waiter: asyncio.Task[Job]) -> AsyncIterator[bytes]:
        """Leading whitespace every ``keepalive_s`` until the job ends, then the JSON body."""
        try:
            while not waiter.done():
                await asyncio.wait({waiter}, timeout=self.deps.config.keepalive_s)
                if not waiter.done():
                    yield b" "
            outcome = await self.render.outcome(waiter.result())
            if outcome.completion is not None:
                yield json.dumps(outcome.completion.wire()).encode()
            else:
                assert outcome.error is not None
                yield error_body(outcome.error).model_dump_json(exclude_none=True).encode()
        finally:
            if not waiter.done():
                waiter.cancel()
                await self.cancel_if_running()

    async def sse(self) -> AsyncIterator[dict[str, str] | ServerSentEvent]:
        """The ``stream: true`` event sequence (see the module docstring)."""
        finished = False
        try:
            yield {"data": self.render.chunk(Delta(role="assistant", content="")).model_dump_json()}
            async for line in self.progress():
                yield ServerSentEvent(comment=line)
            job = await self.deps.store.get_job(self.job.id) or self.job
            outcome = await self.render.outcome(job)
            finished = True
            completion = outcome.completion
            if completion is None:
                assert outcome.error is not None
                yield {"data": error_body(outcome.error).model_dump_json(exclude_none=True)}
                return
            content = completion.choices[0].message.content
            yield {"data": self.render.chunk(Delta(content=content)).model_dump_json()}
            yield {"data": self.render.chunk(Delta(), finish_reason="stop").model_dump_json()}
            if self.body.stream_options is not None and self.body.stream_options.include_usage:
                yield {"data": self.render.usage_chunk(completion).model_dump_json()}
            yield {"data": "[DONE]"}
        finally:
            if not finished:
                await self.cancel_if_running()
