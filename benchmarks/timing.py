"""Wall-clock timing shared by the benchmarks: warm up, then the median."""

import statistics
import time

import jax


def median_seconds(fn, repeats=20, warmup=3):
    for _ in range(warmup):
        jax.block_until_ready(fn())
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)
