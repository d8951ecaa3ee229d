"""Benchmark suites (pytest-benchmark), the GPU timing helper and the report."""
