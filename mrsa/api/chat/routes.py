"""``POST /v1/chat/completions``: Markovian RSA behind OpenAI's chat-completions schema (the route:
it validates, submits through :mod:`mrsa.api.submission`, and returns what
:mod:`mrsa.api.chat.serving` answers).

A request with RSA fields (our knobs, a ``preset``, or Zyphra's proxy fields: see
:mod:`mrsa.api.chat.proxy_fields`) runs RSA; any other chat request is passed through to the backend
unchanged (:mod:`mrsa.api.chat.passthrough`), so mrsa can front the inference server for all
traffic. The conversation (system prompt, earlier turns, last user message) is the problem. The
request creates an ordinary job (visible in ``/v1/jobs``) and waits for it while keeping the
connection alive (:mod:`mrsa.api.chat.serving` says how, streamed or not).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from sse_starlette import EventSourceResponse

from mrsa.api.auth import Principal, authenticate, bearer
from mrsa.api.chat.completion import IGNORED_HEADER, shown_fields
from mrsa.api.chat.passthrough import forward, parse_body, passthrough_reason
from mrsa.api.chat.proxy_fields import ProxyFieldConflict
from mrsa.api.chat.schemas import ChatCompletion, ChatCompletionRequest
from mrsa.api.chat.serving import ChatRun
from mrsa.api.deps import ApiDeps, get_deps
from mrsa.api.errors import invalid, responses
from mrsa.api.schemas import ErrorResponse
from mrsa.api.submission import FieldLocs, Submission, prepare, submit

log = logging.getLogger("mrsa.api")

# Where a chat request carries a submission's parts: the problem is the conversation, the knobs are
# top-level fields.
CHAT_LOCS = FieldLocs(problem=("body", "messages"), params=("body",))


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

IGNORED_HEADER_DOC = {
    "description": "Top-level request fields this server ignored (unknown to it), comma-separated; "
    "absent when there were none.",
    "schema": {"type": "string"},
}


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
    try:
        overrides = body.overrides()
    except ProxyFieldConflict as exc:
        raise invalid(("body", str(exc).split(":", 1)[0]), str(exc)) from None
    submission = Submission(problem, body.preset, overrides, body.model, endpoint="chat", locs=CHAT_LOCS)
    prepared = await prepare(deps, submission)
    ignored = body.ignored_fields()
    if ignored:
        log.warning("chat completion: ignored unknown request fields %s", shown_fields(ignored, 20))
    # Waiting for the job holds an event read, like an event stream: it takes one of the key's slots.
    slot = deps.slots.acquire(principal.owner)
    try:
        job = (await submit(deps, principal, prepared)).job
    except BaseException:
        slot.release()
        raise
    return await ChatRun(deps, request, job, body).respond(slot)
