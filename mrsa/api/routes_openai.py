"""``POST /v1/chat/completions``: Markovian RSA behind OpenAI's chat-completions schema.

A request with RSA fields (our knobs, a ``preset``, or Zyphra's proxy fields: see
:mod:`mrsa.api.proxy_fields`) runs RSA; any other chat request is passed through to the backend
unchanged (:mod:`mrsa.api.passthrough`), so mrsa can front the inference server for all traffic.
The conversation (system prompt, earlier turns, last user message) is the problem. The request
creates an ordinary job (visible in ``/v1/jobs``) and waits for it while keeping the connection
alive:

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
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from sse_starlette import EventSourceResponse, ServerSentEvent

from mrsa.api import jobs
from mrsa.api.auth import Principal, authenticate, bearer
from mrsa.api.deps import ApiDeps, get_deps
from mrsa.api.errors import invalid, responses
from mrsa.api.metrics import JOBS_SUBMITTED
from mrsa.api.openai_schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    CompletionUsage,
    Delta,
    PromptTokensDetails,
    RsaInfo,
)
from mrsa.api.passthrough import forward, parse_body, passthrough_reason
from mrsa.api.proxy_fields import ProxyFieldConflict
from mrsa.api.schemas import ErrorResponse, OpenAIErrorDetail
from mrsa.api.streams import SlotEventSourceResponse, SlotStreamingResponse
from mrsa.domain import Job, JobResult, JobSpec, JobStatus
from mrsa.engine.follow import follow
from mrsa.engine.planning import select_round
from mrsa.engine.tails import split_trace

log = logging.getLogger("mrsa.api")


class ChatRoute(APIRoute):
    """The chat route: a body that is not an RSA request (:func:`passthrough_reason`) goes to the
    backend before it is validated as one; the rest is the ordinary FastAPI route."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        rsa_handler = super().get_route_handler()

        async def handler(request: Request) -> Response:
            raw = await request.body()  # cached: the RSA handler reads the same bytes
            reason = passthrough_reason(parse_body(raw))
            if reason is None:
                return await rsa_handler(request)
            principal = authenticate(request, await bearer(request))
            return await forward(request, raw, get_deps(request), principal.owner, reason)

        return handler


router = APIRouter(tags=["openai"], responses=responses(401, 503), route_class=ChatRoute)
Auth = Annotated[Principal, Depends(authenticate)]
Deps = Annotated[ApiDeps, Depends(get_deps)]

NO_RETRY = {"x-should-retry": "false"}
IGNORED_HEADER = "X-Mrsa-Ignored-Fields"
IGNORED_HEADER_DOC = {
    "description": "Top-level request fields this server ignored (unknown to it), comma-separated; "
    "absent when there were none.",
    "schema": {"type": "string"},
}
_PRINTABLE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
DISCONNECT_REASON = "cancelled: the chat-completions client disconnected"


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    summary="OpenAI-compatible chat completion by Markovian RSA",
    responses={
        **responses(400, 409, 413, 422, 429),
        200: {
            "description": "A chat.completion (JSON, possibly preceded by keep-alive whitespace), or "
            "with `stream: true` server-sent chat.completion.chunk events ending in `[DONE]`.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "headers": {IGNORED_HEADER: IGNORED_HEADER_DOC},
        },
        502: {
            "model": ErrorResponse,
            "description": "The job failed (its reason is the message); or, passed through, the backend did "
            "not answer or declared a reply larger than `MRSA_API_PASSTHROUGH_MAX_BYTES`.",
            "headers": {IGNORED_HEADER: IGNORED_HEADER_DOC},
        },
        504: {
            "model": ErrorResponse,
            "description": "Passed through: the backend sent no reply within `MRSA_API_PASSTHROUGH_TIMEOUT_S`.",
        },
    },
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, principal: Auth, deps: Deps
) -> JSONResponse | StreamingResponse | EventSourceResponse:
    """Run Markovian RSA on the conversation and answer in OpenAI's schema. A request without RSA
    fields (or with `"rsa": false`, `tools`, `n` > 1) is passed through to the backend unchanged and
    answered as the backend answered it (header `X-Mrsa-Passthrough` says why): its status, its
    content and OpenAI/vLLM client headers (others dropped), its body relayed as it arrives — cut
    at `MRSA_API_PASSTHROUGH_MAX_BYTES` or a deadline (an event stream then ends with an `error`
    event, another body is broken off)."""
    problem = body.problem()
    if not problem:
        raise invalid(("body", "messages"), "messages: needs a user message with text (the problem)")
    jobs.check_problem_size(deps, problem, ("body", "messages"))
    try:
        overrides = body.overrides()
    except ProxyFieldConflict as exc:
        raise invalid(("body", str(exc).split(":", 1)[0]), str(exc)) from None
    params = jobs.resolve(body.preset, overrides, loc=("body",))
    spec = JobSpec(problem=problem, params=params, model=body.model, preset=jobs.preset_name(body.preset))
    ignored = body.ignored_fields()
    if ignored:
        log.warning("chat completion: ignored unknown request fields %s", shown_fields(ignored, 20))
    warnings = await jobs.check_budget(deps, spec, loc=("body",))
    # Waiting for the job holds an event read, like an event stream: it takes one of the key's slots.
    slot = deps.slots.acquire(principal.owner)
    handed_over = False
    try:
        job = (await jobs.submit(deps, principal, spec, warnings=warnings)).job
        JOBS_SUBMITTED.labels("chat").inc()
        run = ChatRun(deps, request, job, body)
        if body.stream:
            handed_over = True
            return SlotEventSourceResponse(
                run.sse(), ping=deps.config.keepalive_s, sep="\n", headers=run.headers, slot=slot
            )
        waiter = asyncio.create_task(run.wait())
        try:
            done = await asyncio.wait_for(asyncio.shield(waiter), deps.config.chat_hold_s)
        except TimeoutError:
            handed_over = True
            return SlotStreamingResponse(
                run.keepalive_json(waiter), media_type="application/json", headers=run.headers, slot=slot
            )
        except BaseException:
            waiter.cancel()
            raise
        return await run.final_response(done)
    finally:
        if not handed_over:
            slot.release()


def shown_fields(names: list[str], limit: int) -> list[str]:
    """Field names safe to echo (a header, a log line): printable ones as sent, others replaced;
    at most ``limit`` names, then a count of the rest."""
    shown = [n if _PRINTABLE_NAME.fullmatch(n) else "(unprintable name)" for n in names[:limit]]
    if len(names) > limit:
        shown.append(f"(+{len(names) - limit} more)")
    return shown


def proxy_metadata(job: Job, result: JobResult) -> dict[str, Any]:
    """The ``rsa_metadata`` Zyphra's proxy returns, from this job (its keys; token counts are model
    tokens, decode tokens of a stage's candidates on average)."""
    params = job.spec.params
    history = [r.usage.decode_tokens / len(r.candidates) if r.candidates else 0.0 for r in result.rounds]
    return {
        "rsa_iterations": params.rounds,
        "rsa_n": params.population,
        "rsa_k": params.subset,
        "rsa_summarize": params.tail_mode == "summarize",
        "rsa_tail_window": params.tail < params.budget,
        "tail_window_len": params.tail,
        "short_resp_len": params.budget,
        "use_pacore": params.prompts == "pacore",
        "rsa_token_count_history": history,
    }


def error_body(error: OpenAIErrorDetail) -> ErrorResponse:
    """A job's failure as the API's error body, which carries OpenAI's ``error`` object too."""
    return ErrorResponse(message=error.message, error=error)


class ChatRun:
    """One chat completion's job: wait for it, and render its outcome in OpenAI's schema."""

    def __init__(self, deps: ApiDeps, request: Request, job: Job, body: ChatCompletionRequest) -> None:
        self.deps = deps
        self.request = request
        self.job = job
        self.body = body
        self.id = f"chatcmpl-{job.id}"
        self.created = int(time.time())
        # How long one event read waits; also how often a waiting response checks for its client.
        self.block_ms = min(deps.config.events_block_ms, 1000)
        self.ignored = [name[:64] for name in body.ignored_fields()[:100]]
        self.headers: dict[str, str] = {}
        if self.ignored:
            self.headers[IGNORED_HEADER] = ", ".join(shown_fields(body.ignored_fields(), 20))

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
                log.info("chat completion %s: client disconnected, cancelling job %s", self.id, self.job.id)
                with contextlib.suppress(Exception):
                    await jobs.cancel(self.deps, current, DISCONNECT_REASON)

    # -- rendering ---------------------------------------------------------------------------------

    async def completion(self, job: Job) -> tuple[ChatCompletion | None, OpenAIErrorDetail | None, int]:
        """The chat.completion of a terminal job, or the error and its HTTP status."""
        if job.status == JobStatus.succeeded:
            result = await jobs.result_of(self.deps, job)
            content = await self.content(job, result)
            asked = self.body.response_flag
            prompt = await self.aggregation_prompt(job) if asked("return_aggregation_prompt") else None
            metadata = proxy_metadata(job, result) if asked("return_rsa_metadata") else None
            if metadata is not None and prompt is not None:
                metadata["rsa_final_aggregation_prompt"] = prompt  # as the proxy adds it
            usage = CompletionUsage(
                prompt_tokens=result.usage.prompt_tokens,
                completion_tokens=result.usage.decode_tokens,
                total_tokens=result.usage.prompt_tokens + result.usage.decode_tokens,
                prompt_tokens_details=PromptTokensDetails(cached_tokens=result.usage.cached_prompt_tokens),
            )
            return (
                ChatCompletion(
                    id=self.id,
                    created=self.created,
                    model=self.body.model,
                    choices=[Choice(message=AssistantMessage(content=content))],
                    usage=usage,
                    mrsa=RsaInfo(
                        job_id=job.id,
                        answer=result.answer,
                        votes=result.votes,
                        rounds=len(result.rounds),
                        requests=result.usage.requests,
                        warnings=job.warnings,
                        ignored_fields=self.ignored,
                        cost=result.cost,
                    ),
                    rsa_metadata=metadata,
                    aggregation_prompt=prompt,
                ),
                None,
                200,
            )
        if job.status == JobStatus.cancelled:
            detail = OpenAIErrorDetail(
                message=f"job {job.id} was cancelled: {job.error}", type="job_cancelled", code="cancelled"
            )
            return None, detail, 409
        detail = OpenAIErrorDetail(
            message=f"job {job.id} failed: {job.error or job.status.value}",
            type="job_failed",
            code="job_failed",
        )
        return None, detail, 502

    async def aggregation_prompt(self, job: Job) -> list[dict[str, str]] | None:
        """The last stage's first aggregation prompt as chat messages (None without aggregation)."""
        last = job.spec.params.rounds
        if last == 0:
            return None
        candidates = sorted(await self.deps.store.get_candidates(job.id, last), key=lambda c: c.index)
        return [{"role": "user", "content": candidates[0].prompt}] if candidates else None

    async def content(self, job: Job, result: JobResult) -> str:
        """A short solution: the answer part of a final candidate that gave the selected answer,
        ending in ``\\boxed{answer}``."""
        params = job.spec.params
        final = select_round(params) if params.selection == "aggregate" else params.rounds
        candidates = await self.deps.store.get_candidates(job.id, final)
        if not candidates and final > params.rounds:
            candidates = await self.deps.store.get_candidates(job.id, params.rounds)
        matching = [c for c in candidates if c.answer is not None and c.answer == result.answer]
        matching.sort(key=lambda c: (not c.finished, c.index))
        text = ""
        if matching:
            chosen = matching[0]
            text = chosen.content if chosen.reasoning else split_trace(chosen.content)[1]
            text = text.strip()
        if result.answer is None:
            return text or "Markovian RSA found no final answer (no candidate wrote \\boxed{…})."
        boxed = f"\\boxed{{{result.answer}}}"
        return text if boxed in text else (f"{text}\n\n" if text else "") + f"Final answer: {boxed}"

    async def final_response(self, job: Job) -> JSONResponse:
        completion, error, status = await self.completion(job)
        if completion is not None:
            return JSONResponse(completion.wire(), headers=self.headers)
        assert error is not None
        return JSONResponse(
            error_body(error).model_dump(mode="json", exclude_none=True),
            status_code=status,
            headers={**self.headers, **NO_RETRY},
        )

    async def keepalive_json(self, waiter: asyncio.Task[Job]) -> AsyncIterator[bytes]:
        """Leading whitespace every ``keepalive_s`` until the job ends, then the JSON body."""
        try:
            while not waiter.done():
                await asyncio.wait({waiter}, timeout=self.deps.config.keepalive_s)
                if not waiter.done():
                    yield b" "
            completion, error, _ = await self.completion(waiter.result())
            if completion is not None:
                yield json.dumps(completion.wire()).encode()
            else:
                assert error is not None
                yield error_body(error).model_dump_json(exclude_none=True).encode()
        finally:
            if not waiter.done():
                waiter.cancel()
                await self.cancel_if_running()

    async def sse(self) -> AsyncIterator[dict[str, str] | ServerSentEvent]:
        """The ``stream: true`` event sequence (see the module docstring)."""
        finished = False
        try:
            yield {"data": self.chunk(Delta(role="assistant", content="")).model_dump_json()}
            async for line in self.progress():
                yield ServerSentEvent(comment=line)
            job = await self.deps.store.get_job(self.job.id) or self.job
            completion, error, _ = await self.completion(job)
            finished = True
            if completion is None:
                assert error is not None
                yield {"data": error_body(error).model_dump_json(exclude_none=True)}
                return
            content = completion.choices[0].message.content
            yield {"data": self.chunk(Delta(content=content)).model_dump_json()}
            yield {"data": self.chunk(Delta(), finish_reason="stop").model_dump_json()}
            if self.body.stream_options is not None and self.body.stream_options.include_usage:
                usage_chunk = ChatCompletionChunk(
                    id=self.id,
                    created=self.created,
                    model=self.body.model,
                    choices=[],
                    usage=completion.usage,
                )
                yield {"data": usage_chunk.model_dump_json()}
            yield {"data": "[DONE]"}
        finally:
            if not finished:
                await self.cancel_if_running()

    def chunk(self, delta: Delta, finish_reason: str | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=self.id,
            created=self.created,
            model=self.body.model,
            choices=[ChunkChoice(delta=delta, finish_reason=finish_reason)],
        )
