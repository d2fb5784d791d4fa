"""Trace + compile time of a Llama-3.2-1B-shaped decode step from abstract shapes.

    python benchmarks/bench_compile.py
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

import jax_mpk
from examples.models.config import DecoderConfig
from examples.models.linen import Decoder

LLAMA_1B = DecoderConfig(family="llama", vocab=128256, dim=2048, layers=16, heads=32,
                         kv_heads=8, head_dim=64, mlp_dim=8192, max_len=2048, norm="rms",
                         positions="rope", mlp="swiglu", qk_norm=False, tied_embeddings=True,
                         dtype=jnp.bfloat16)
BUDGET_S = 2.0


def abstract_step(cfg: DecoderConfig, batch: int):
    model = Decoder(cfg)
    tokens = jax.ShapeDtypeStruct((batch, 1), jnp.int32)
    layer_cache = (jax.ShapeDtypeStruct(cfg.cache_shape(batch), cfg.dtype),) * 2
    cache = layer_cache if cfg.scan_layers else [layer_cache] * cfg.layers
    pos = jax.ShapeDtypeStruct((), jnp.int32)
    params = jax.eval_shape(model.init, jax.random.key(0), tokens, cache, pos)

    def step(params, tokens, cache, pos):
        return model.apply(params, tokens, cache, pos)

    return step, (params, tokens, cache, pos)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--scan", action="store_true", help="nn.scan over the layers")
    args = parser.parse_args()
    cfg = LLAMA_1B.replace(scan_layers=args.scan)
    step, inputs = abstract_step(cfg, args.batch)
    start = time.perf_counter()
    lowered = jax_mpk.jit(step, donate_argnums=(2,)).lower(*inputs)
    seconds = time.perf_counter() - start
    program = lowered.program
    print(f"llama-3.2-1b shape, batch {args.batch}{', scan' if args.scan else ''}: "
          f"trace + compile {seconds:.2f} s (budget {BUDGET_S:.1f} s), "
          f"{program.num_tasks} tasks, {program.num_events} events")


if __name__ == "__main__":
    main()
