"""Operations endpoints: ``/healthz``, ``/readyz`` and the API's Prometheus ``/metrics`` (see :mod:`mrsa.api`)."""
