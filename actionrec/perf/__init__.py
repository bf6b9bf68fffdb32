"""Benchmark harness and workloads behind ``tools/benchmark.py`` (timing, memory, benches)."""
