"""Two NVSHMEM PEs, one JAX process each, checked exactly against numpy: allreduce (f32 and
bf16) and allgather, over several launches and both schedules.

    python scripts/nvshmem_two_pes.py              # both processes on GPU 0
    python scripts/nvshmem_two_pes.py --distinct   # PE i on GPU i

See scripts/two_pes.py. Exit status 0 when every check passed on both PEs.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import two_pes  # noqa: E402


def child(rank: int, workers: int) -> int:
    import jax
    import jax.numpy as jnp
    import ml_dtypes
    import numpy as np

    from jax_mpk import collectives, distributed, runtime
    from jax_mpk import taskgraph as tg

    jnp.zeros(1).block_until_ready()
    job = distributed.init(heap_bytes=64 << 20)
    print(f"PE {job.pe} of {job.num_pes} on {job.device}", flush=True)
    failures = 0
    cases = [("allreduce", np.float32, 10_007), ("allreduce", ml_dtypes.bfloat16, 4099),
             ("allgather", np.float32, 5000)]
    for kind, dtype, n in cases:
        for schedule in ("static", "dynamic"):
            itemsize = np.dtype(dtype).itemsize
            recv = distributed.allocate(2 * n * itemsize)
            signals = distributed.allocate(8 * 256)
            g = tg.TaskGraph()
            g.nvshmem(job.pe, job.num_pes)
            g.signal_words(signals.id, 256)
            x = tg.Operand(g.arg(0, n * itemsize), 0, n * itemsize)
            rows = 2 if kind == "allgather" else 1
            out = tg.Operand(g.ret(0, rows * n * itemsize), 0, rows * n * itemsize)
            build = collectives.allreduce if kind == "allreduce" else collectives.allgather
            build(g, x, out, dtype, recv.id, tile_bytes=4096)
            config = tg.RuntimeConfig(num_workers=workers, num_schedulers=2, schedule=schedule,
                                      watchdog_ns=30_000_000_000)
            registered = runtime.RegisteredProgram(g.build(config, 1, 1).program)
            shape = (rows, n) if kind == "allgather" else (n,)
            for launch in range(3):
                # Every PE can compute every PE's input: seeds are (launch, pe).
                xs = [np.random.default_rng([launch, pe]).standard_normal(n).astype(dtype)
                      for pe in range(job.num_pes)]
                start = time.perf_counter()
                (got,) = runtime.call(registered, [jnp.asarray(xs[job.pe])],
                                      [jax.ShapeDtypeStruct(shape, dtype)])
                got = np.asarray(got)
                ms = (time.perf_counter() - start) * 1e3
                reference = (collectives.allreduce_reference(xs) if kind == "allreduce"
                             else collectives.allgather_reference(xs))
                ok = np.array_equal(got, reference)
                failures += not ok
                print(f"PE {job.pe}: {kind} {np.dtype(dtype).name} n={n} {schedule} launch "
                      f"{launch}: {'exact' if ok else 'MISMATCH'} ({ms:.1f} ms)", flush=True)
            del registered
            signals.free()
            recv.free()
    distributed.finalize()
    print(f"PE {job.pe}: {failures} failures", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(two_pes.main(__file__, child))
