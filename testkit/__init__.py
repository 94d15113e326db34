"""Test support shared by tests/ and benchmarks/: the inference-server simulator, a router, Redis and process harnesses."""
