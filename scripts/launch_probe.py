"""Where a launch's time goes: jax dispatch of a trivial jitted op vs one
megakernel launch of a single no-op, per schedule. Run under ncu to see the
kernel's own duration."""

import statistics
import time

import jax
import jax.numpy as jnp

from jax_mpk import program as fmt
from jax_mpk import runtime
from jax_mpk import taskgraph as tg


def median_us(fn, n=200):
    for _ in range(10):
        jax.block_until_ready(fn())
    times = []
    for _ in range(n):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


x = jnp.ones(16)
trivial = jax.jit(lambda x: x + 1)
print(f"jax.jit trivial op        {median_us(lambda: trivial(x)):7.1f} µs")
sm = runtime.device_info()["sm_count"]
for schedule in ("dynamic", "static"):
    for workers in (1, sm - 1):
        g = tg.TaskGraph()
        g.add_task(fmt.TaskKind.NOOP)
        config = tg.RuntimeConfig.for_sm_count(sm, schedule=schedule, num_workers=workers,
                                               num_schedulers=1)
        registered = runtime.RegisteredProgram(g.build(config, 0, 0).program)
        call = jax.jit(lambda r=registered: runtime.call(r, [], []))
        print(f"{schedule:8} {workers:3} workers  {median_us(call):7.1f} µs")
