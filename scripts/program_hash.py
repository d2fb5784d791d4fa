"""A fingerprint of the programs jax_mpk compiles for the benchmark shapes, from abstract
arguments (no weights, no GPU; about a minute here): run it before and after a pass or
tiling change to see which programs it touched. A line a program: its sha256, tasks,
events and dependent stages.

    python scripts/program_hash.py [--models llama-1b,qwen3-8b,gpt2] [--batches 1,8]

The device is an H100's 132 SMs with the GPU's default DeviceSpec; the caches are the
configs' max_len (2,048 for Llama-1B, where bench_decode.py sizes them to its context), and
Qwen3-8B is cut to 4 layers (its program repeats per layer) to keep the run short.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys

import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from bench_compile import abstract_step  # noqa: E402
from bench_decode import MODELS  # noqa: E402

import jax_mpk  # noqa: E402
from examples.models.config import FAMILIES  # noqa: E402
from jax_mpk.report import dependent_stages  # noqa: E402
from jax_mpk.tiling import DeviceSpec  # noqa: E402

H100 = DeviceSpec(sm_count=132, smem_bytes=232448)
SHAPES = {
    "llama-1b": MODELS["llama-1b"],
    "qwen3-8b": MODELS["qwen3-8b"].replace(layers=4),
    "gpt2": FAMILIES["gpt2"].replace(vocab=50257, dim=768, layers=12, heads=12, kv_heads=12,
                                     head_dim=64, mlp_dim=3072, max_len=1024,
                                     dtype=jnp.bfloat16),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=",".join(SHAPES))
    parser.add_argument("--batches", default="1,8")
    args = parser.parse_args()
    for name in args.models.split(","):
        for batch in map(int, args.batches.split(",")):
            step, inputs = abstract_step(SHAPES[name], batch)
            lowered = jax_mpk.jit(step, donate_argnums=(2,), device=H100).lower(*inputs)
            program = lowered.program
            digest = hashlib.sha256(program.to_bytes()).hexdigest()[:16]
            print(f"{name:9} b{batch:<3} {digest}  {program.num_tasks:6} tasks "
                  f"{program.num_events:5} events {dependent_stages(program):4} stages", flush=True)


if __name__ == "__main__":
    main()
