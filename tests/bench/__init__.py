"""Benchmarks: `python -m tests.bench` prints a table and JSON."""
