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


def back_to_back_seconds(fn, steps=20, warmup=3):
    """Seconds per call when `steps` calls are dispatched without waiting and the last is
    waited for: the device's rate wherever dispatching a call is faster than running it."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    start = time.perf_counter()
    for _ in range(steps - 1):
        fn()
    jax.block_until_ready(fn())
    return (time.perf_counter() - start) / steps
