"""Benchmarks: each module's `main()` measures ratios in one run and prints them (not timed tests)."""
