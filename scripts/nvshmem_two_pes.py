"""Two NVSHMEM PEs, one JAX process each, checked exactly against numpy: allreduce (f32 and
bf16) and allgather, over several launches and both schedules.

    python scripts/nvshmem_two_pes.py              # both processes on GPU 0 (NVSHMEM's
                                                   # several-PEs-per-GPU mode; MPS optional)
    python scripts/nvshmem_two_pes.py --distinct   # PE i on GPU i

Without MPS the two persistent kernels on one GPU time-share it, so each waits for the
other's time slice: slow, but a correct protocol finishes well inside the watchdog budget.
Exit status 0 when every check passed on both PEs.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(rank: int, port: int, workers: int) -> int:
    import jax

    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=rank,
                               local_device_ids=[0])
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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--distinct", action="store_true", help="PE i on GPU i")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=500)
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank is not None:
        return child(args.rank, args.port, args.workers)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false",
                   CUDA_VISIBLE_DEVICES=str(rank) if args.distinct else "0",
                   NVSHMEM_BOOTSTRAP_UID_SOCK_IFNAME=os.environ.get(
                       "NVSHMEM_BOOTSTRAP_UID_SOCK_IFNAME", "lo"))
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "--rank", str(rank), "--port", str(port),
             "--workers", str(args.workers)], env=env, cwd=ROOT))
    deadline = time.time() + args.timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(1.0, deadline - time.time())))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append("timeout")
    print(f"exit codes {codes}: {'PASS' if codes == [0, 0] else 'FAIL'}")
    return 0 if codes == [0, 0] else 1


if __name__ == "__main__":
    sys.exit(main())
