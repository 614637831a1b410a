"""Test harness shared by the tests, the benchmarks and the demo: local clusters, truth, faults."""
