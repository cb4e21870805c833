"""Operator tools built on the store: the demo and the benchmarks."""
