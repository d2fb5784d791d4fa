"""Issue 5's endurance and memory checks, on a GPU: many consecutive decode steps of a Flax
decoder under one jit in one process, each step's cache donated to the next. Device memory
in use must not grow after the first steps; the process's peak is printed so that a run
under each jit can be compared (peaks cannot be reset, hence one jit per process).

    python scripts/endurance.py --jit jax_mpk --steps 10000 [--size tiny|1b]
    python scripts/endurance.py --jit jax --steps 200      # jax.jit's peak, for comparison
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import jax_mpk  # noqa: E402
from examples.decode_loop import LLAMA_1B_SIZES  # noqa: E402
from examples.models.config import FAMILIES  # noqa: E402
from examples.models.linen import Decoder  # noqa: E402

GROWTH_SLACK = 1 << 20  # bytes in use may wobble this much (XLA's own small buffers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jit", choices=["jax", "jax_mpk"], default="jax_mpk")
    parser.add_argument("--size", choices=["tiny", "1b"], default="tiny")
    parser.add_argument("--steps", type=int, default=10000)
    args = parser.parse_args()
    cfg = FAMILIES["llama"].replace(dtype=jnp.bfloat16)
    if args.size == "1b":
        cfg = cfg.replace(**LLAMA_1B_SIZES)
    model = Decoder(cfg)
    rng = np.random.default_rng(0)
    token = jnp.asarray(rng.integers(0, cfg.vocab, (1, 1)), jnp.int32)
    shape = cfg.cache_shape(1)
    cache = [(jnp.asarray(rng.standard_normal(shape), cfg.dtype),
              jnp.asarray(rng.standard_normal(shape), cfg.dtype)) for _ in range(cfg.layers)]
    params = jax.jit(model.init)(jax.random.key(0), token, cache, jnp.int32(0))
    jit = jax.jit if args.jit == "jax" else jax_mpk.jit
    step = jit(model.apply, donate_argnums=(2,))
    device = jax.devices()[0]
    pointer = cache[0][0].unsafe_buffer_pointer()
    settled = None
    start = time.perf_counter()
    for i in range(args.steps):
        logits, cache = step(params, token, cache, jnp.int32(i % (cfg.max_len - 1)))
        token = jnp.argmax(logits[:, -1], axis=-1)[:, None].astype(jnp.int32)
        if i == 10 or (i + 1) % 1000 == 0 or i == args.steps - 1:
            jax.block_until_ready(token)
            in_use = device.memory_stats()["bytes_in_use"]
            settled = settled if settled is not None else in_use
            print(f"step {i + 1:6}: {in_use / 2**20:9.1f} MiB in use", flush=True)
            if in_use > settled + GROWTH_SLACK:
                sys.exit(f"device memory grew from {settled} to {in_use} bytes by step {i + 1}")
    seconds = time.perf_counter() - start
    donated = cache[0][0].unsafe_buffer_pointer() == pointer
    peak = device.memory_stats()["peak_bytes_in_use"]
    print(f"{args.jit}.jit, {args.size}: {args.steps} steps in {seconds:.1f} s, no growth of "
          f"device memory; cache updated in place: {donated}; peak {peak / 2**20:.1f} MiB")
    if args.jit == "jax_mpk" and not donated:
        sys.exit("the donated cache moved: a step copied it")


if __name__ == "__main__":
    main()
