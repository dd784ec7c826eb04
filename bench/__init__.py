"""Benchmarks: each measures its reference in the same run and prints a ratio (see docs/BENCHMARKS.md)."""
