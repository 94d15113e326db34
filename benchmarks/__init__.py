"""Benchmarks and load-testing tools (not shipped in the wheel)."""
