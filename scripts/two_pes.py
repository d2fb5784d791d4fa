"""Two JAX processes, one NVSHMEM PE each, running a script's `child(rank, workers)`: both
on GPU 0 by default (NVSHMEM's several-PEs-per-GPU mode), or PE i on GPU i with
--distinct. Without MPS the two persistent kernels on one GPU time-share it, so each waits
for the other's time slice: slow, but a correct protocol finishes well inside the watchdog
budget. Exit status 0 when both children exit 0."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(script: str, child, workers: int = 16, timeout: float = 500) -> int:
    parser = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__)
    parser.add_argument("--distinct", action="store_true", help="PE i on GPU i")
    parser.add_argument("--workers", type=int, default=workers,
                        help="worker blocks per megakernel (both share a GPU by default)")
    parser.add_argument("--timeout", type=float, default=timeout)
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank is not None:
        import jax

        jax.distributed.initialize(f"127.0.0.1:{args.port}", num_processes=2,
                                   process_id=args.rank, local_device_ids=[0])
        return child(args.rank, args.workers)
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
            [sys.executable, script, "--rank", str(rank), "--port", str(port),
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
