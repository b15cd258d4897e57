"""Helpers shared by the benchmarks in scripts/: a sink process, child processes, statistics."""
