"""An inference-server simulator for load tests: the vLLM subset mrsa speaks, continuous batching,
a prefix cache and seeded outputs. ``python -m testkit.simulator --help``."""
