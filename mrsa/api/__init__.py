"""The REST API (FastAPI): :func:`mrsa.api.app.create_app`.

One subpackage per endpoint family, each split as vLLM's ``entrypoints/openai`` is:

* ``routes.py`` — the router: it validates the request, calls, and returns; no rendering in it;
* ``schemas.py`` — the endpoint's wire models (its part of the OpenAPI schema);
* what serves it — ``jobs/operations.py``, ``chat/serving.py`` + ``chat/completion.py``,
  ``reports/folders.py``, ``ops/prometheus.py``.

``jobs/`` is ``/v1/jobs``; ``chat/`` is ``/v1/chat/completions`` (RSA behind OpenAI's schema, and
the passthrough of other chat requests to the backend); ``reports/`` is ``/v1/reports``; ``ops/`` is
``/healthz``, ``/readyz`` and ``/metrics``. An endpoint to come (OpenAI's Responses API as
``responses/``) is a subpackage of its own, its router registered in :mod:`mrsa.api.app`.

Shared by every endpoint, at this level: the app factory (``app.py``), its dependencies
(``deps.py``), API keys (``auth.py``), JSON errors (``errors.py``), the shared wire models
(``schemas.py``: the error body, the parameter overrides), the one submission pipeline every
job-creating endpoint goes through (``submission.py``), the slots of open streams
(``streams.py``), the body-size limit (``body_limit.py``) and uvicorn's server (``server.py``).
"""
