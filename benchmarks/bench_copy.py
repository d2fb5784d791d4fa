"""Memory bandwidth inside the megakernel: COPY tasks streaming a large buffer,
beside the HBM copy rate measured in the same run (a device-to-device
cudaMemcpy) and an XLA elementwise pass over the same bytes; all count bytes
read plus bytes written.

Usage: python benchmarks/bench_copy.py [--mib 1024] [--json PATH]
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
from timing import median_seconds

from jax_mpk import program as fmt
from jax_mpk import runtime
from jax_mpk import taskgraph as tg


def copy_program(nbytes, tile, schedule, sm_count):
    g = tg.TaskGraph()
    src, dst = g.arg(0, nbytes), g.ret(0, nbytes)
    for lo in range(0, nbytes, tile):
        n = min(tile, nbytes - lo)
        g.add_task(fmt.TaskKind.COPY, [tg.Operand(dst, lo, n), tg.Operand(src, lo, n)], [n, 0])
    config = tg.RuntimeConfig.for_sm_count(sm_count, schedule=schedule)
    return runtime.RegisteredProgram(g.build(config, num_args=1, num_rets=1).program)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--json")
    args = parser.parse_args()
    nbytes = args.mib << 20
    info = runtime.device_info()
    x = jnp.asarray(np.random.default_rng(0).integers(0, 2**31, nbytes // 4, dtype=np.int32))
    xla_pass = jax.jit(lambda v: v ^ 0x5A5A)
    xla = 2 * nbytes / median_seconds(lambda: xla_pass(x))
    hbm = runtime.hbm_copy_rate(nbytes)
    results = {"device": info["name"], "bytes": nbytes, "hbm_copy_GBps": hbm / 1e9,
               "xla_elementwise_GBps": xla / 1e9}
    print(f"{info['name']}: HBM copy rate (cudaMemcpy D2D, read + write) {hbm / 1e9:.0f} GB/s; "
          f"an XLA elementwise pass {xla / 1e9:.0f} GB/s ({xla / hbm:.2f}), over {args.mib} MiB")
    print(f"{'schedule':10}{'tile':>10}{'tasks':>7}{'µs':>9}{'GB/s':>8}{'of HBM':>8}")
    out_shape = [jax.ShapeDtypeStruct(x.shape, x.dtype)]
    for schedule in ("static", "dynamic"):
        for tile in (1 << 20, 4 << 20, 16 << 20):
            registered = copy_program(nbytes, tile, schedule, info["sm_count"])
            call = jax.jit(lambda v, r=registered: runtime.call(r, [v], out_shape)[0])
            np.testing.assert_array_equal(np.asarray(call(x)[:4096]), np.asarray(x[:4096]))
            seconds = median_seconds(lambda c=call: c(x))
            rate = 2 * nbytes / seconds
            results[f"{schedule}_{tile >> 20}MiB_GBps"] = rate / 1e9
            print(f"{schedule:10}{tile >> 20:>8}Mi{-(-nbytes // tile):7d}{seconds * 1e6:9.0f}"
                  f"{rate / 1e9:8.0f}{rate / hbm:8.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
