"""Benchmarks, installed as `rampup.benchmarks` so that `rampup bench` can run them."""
