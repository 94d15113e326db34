"""The name mrsa's bundled model is served under (by :mod:`mrsa.servers`: the embedded server and
the bundled Triton). Clients know it without importing a launcher: the Triton client looks for it
when a server lists no models (PyTriton forbids the listing)."""

from __future__ import annotations

BUNDLED_MODEL = "smollm2-135m-instruct"
