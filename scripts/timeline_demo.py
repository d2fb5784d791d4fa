"""A profiled launch of a mixed graph (copies fanning into reductions), written
as a Chrome trace and an occupancy PNG: python scripts/timeline_demo.py OUT_DIR"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jax_mpk import profile, runtime
from jax_mpk import program as fmt
from jax_mpk import taskgraph as tg

out_dir = sys.argv[1] if len(sys.argv) > 1 else "."
sm = runtime.device_info()["sm_count"]
words, tiles, layers = 1 << 16, 256, 4
g = tg.TaskGraph()
src = g.arg(0, 4 * words * tiles)
dst = g.ret(0, 4 * words * tiles)
prev = []
for layer in range(layers):
    cur = []
    for t in range(tiles):
        row = tg.Operand(dst, 4 * words * t, 4 * words)
        srcs = [tg.Operand(src, 4 * words * t, 4 * words)] if layer == 0 else [row]
        cur.append(g.add_task(fmt.TaskKind.COMBINE_U32, [row, *srcs], [words, 3, layer],
                              deps=prev[max(0, t - 1) : t + 2] if prev else []))
    prev = cur
for schedule in ("static", "dynamic"):
    config = tg.RuntimeConfig.for_sm_count(sm, schedule=schedule, profile_capacity=64)
    built = g.build(config, num_args=1, num_rets=1)
    registered = runtime.RegisteredProgram(built.program)
    x = jnp.asarray(np.random.default_rng(0).integers(0, 2**32, words * tiles, dtype=np.uint32))
    shape = [jax.ShapeDtypeStruct(x.shape, x.dtype)]
    for _ in range(3):  # the last launch is the one read back
        _, workspace = runtime.call(registered, [x], shape, return_workspace=True)
    timeline = profile.read(built.program, np.asarray(workspace))
    base = os.path.join(out_dir, f"timeline_{schedule}")
    profile.write_chrome_trace(timeline, base + ".json")
    profile.plot_occupancy(timeline, config.num_workers, base + ".png")
    _, busy = profile.occupancy(timeline, config.num_workers)
    print(f"{schedule}: {len(timeline)} tasks in {timeline['end_us'].max():.0f} µs, "
          f"mean occupancy {busy.mean():.2f}; wrote {base}.json and .png")
