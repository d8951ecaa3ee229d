"""Benchmark suites (pytest, timed interleaved by the bench fixture), the timing helpers and the report."""
