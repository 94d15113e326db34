"""A small synchronous client of the mrsa REST API for the CLI (``submit``, ``status``, ``watch`` …).

Every failure becomes :class:`ApiClientError` with one line: the server's own ``message`` for an
HTTP error, or "cannot reach the mrsa API at URL" when nothing answers. The event stream is read
with a minimal server-sent-events parser and resumed with ``Last-Event-ID`` after a dropped
connection.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from mrsa.api.jobs.schemas import JobList, JobView, SubmitResponse
from mrsa.domain import Event, JobResult

M = TypeVar("M", bound=BaseModel)


class ApiClientError(Exception):
    """One line for the user; ``status`` is the HTTP status (``None``: the API was not reached)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _server_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip().splitlines()
        return text[0][:300] if text else response.reason_phrase
    if isinstance(body, dict):
        for key in ("message", "detail"):
            if isinstance(body.get(key), str):
                return str(body[key])
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
    return str(body)[:300]


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str | None, str | None, str]]:
    """(id, event, data) of each event in a ``text/event-stream``; comments are skipped."""
    event_id: str | None = None
    event: str | None = None
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield event_id, event, "\n".join(data)
            event, data = None, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id":
            event_id = value
    if data:
        yield event_id, event, "\n".join(data)


class ApiClient:
    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unreachable(self, exc: httpx.HTTPError) -> ApiClientError:
        return ApiClientError(f"cannot reach the mrsa API at {self.url}: {type(exc).__name__}: {exc}")

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400:
            raise ApiClientError(
                f"HTTP {response.status_code}: {_server_message(response)}", response.status_code
            )
        return response

    def _model(self, model: type[M], response: httpx.Response) -> M:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise ApiClientError(
                f"unexpected answer from {self.url}{response.request.url.path}: {exc.errors()[0]['msg']}"
            ) from None

    # -- endpoints ---------------------------------------------------------------------------------

    def submit(self, body: dict[str, Any], idempotency_key: str | None = None) -> SubmitResponse:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._model(SubmitResponse, self.request("POST", "/v1/jobs", json=body, headers=headers))

    def job(self, job_id: str) -> JobView:
        return self._model(JobView, self.request("GET", f"/v1/jobs/{job_id}"))

    def result(self, job_id: str) -> JobResult:
        return self._model(JobResult, self.request("GET", f"/v1/jobs/{job_id}/result"))

    def cancel(self, job_id: str) -> JobView:
        return self._model(JobView, self.request("POST", f"/v1/jobs/{job_id}/cancel"))

    def list(self, limit: int = 100) -> JobList:
        return self._model(JobList, self.request("GET", "/v1/jobs", params={"limit": limit}))

    def events(self, job_id: str, reconnects: int = 5) -> Iterator[Event]:
        """The job's events until its ``done`` event, resuming after dropped connections."""
        after: str | None = None
        failures = 0
        while True:
            headers = {"Last-Event-ID": after} if after else {}
            try:
                with self._http.stream(
                    "GET",
                    f"/v1/jobs/{job_id}/events",
                    headers=headers,
                    timeout=httpx.Timeout(30.0, read=120.0),
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise ApiClientError(
                            f"HTTP {response.status_code}: {_server_message(response)}", response.status_code
                        )
                    for event_id, _kind, data in parse_sse(response.iter_lines()):
                        after = event_id or after
                        failures = 0
                        event = Event.model_validate_json(data)
                        yield event
                        if event.type == "done":
                            return
                    return  # the server ended the stream: the job is over
            except httpx.HTTPError as exc:
                failures += 1
                if failures > reconnects:
                    raise self._unreachable(exc) from None
                time.sleep(min(5.0, 0.5 * 2**failures))
