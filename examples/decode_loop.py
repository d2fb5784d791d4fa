"""Greedy generation with a Flax decoder: prefill the prompt, then decode one
token per step against a donated KV cache, under jax.jit and jax_mpk.jit side by
side. Random weights; tiny on a CPU (the reference executor), Llama-3.2-1B-sized
on a GPU.

    python examples/decode_loop.py --family llama --size tiny --steps 16
    python examples/decode_loop.py --family llama --size 1b --steps 64   # on a GPU
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
from examples.models.config import FAMILIES  # noqa: E402
from examples.models.linen import Decoder  # noqa: E402

LLAMA_1B_SIZES = dict(vocab=128256, dim=2048, layers=16, heads=32, kv_heads=8, head_dim=64,
                      mlp_dim=8192, max_len=2048)


def generate(step, params, prompt, cache, steps):
    """Greedy tokens and decode tokens/s (the first decode step, which compiles,
    is not timed); the cache is donated to every step."""
    logits, cache = step(params, prompt, cache, jnp.int32(0))
    tokens = [jnp.argmax(logits[:, -1], axis=-1)[:, None].astype(jnp.int32)]
    start = None
    for i in range(steps - 1):
        if i == 1:
            jax.block_until_ready(tokens[-1])
            start = time.perf_counter()
        logits, cache = step(params, tokens[-1], cache, jnp.int32(prompt.shape[1] + i))
        tokens.append(jnp.argmax(logits[:, -1], axis=-1)[:, None].astype(jnp.int32))
    jax.block_until_ready(tokens[-1])
    jax_mpk.check_launches()  # jax_mpk.jit calls return before their kernels end
    rate = (steps - 2) / (time.perf_counter() - start) if start else float("nan")
    return np.concatenate([np.asarray(t) for t in tokens], axis=1), rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--family", choices=sorted(FAMILIES), default="llama")
    parser.add_argument("--size", choices=["tiny", "1b"], default="tiny")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=5, help="prompt length")
    parser.add_argument("--steps", type=int, default=8, help="tokens to generate (>= 3)")
    args = parser.parse_args()
    cfg = FAMILIES[args.family]
    if args.size == "1b":
        cfg = cfg.replace(dtype=jnp.bfloat16, **LLAMA_1B_SIZES)
    cfg = cfg.replace(max_len=max(cfg.max_len, args.prompt + args.steps))
    model = Decoder(cfg)
    rng = np.random.default_rng(0)
    prompt = jnp.asarray(rng.integers(0, cfg.vocab, (args.batch, args.prompt)), jnp.int32)

    def empty_cache():
        shape = cfg.cache_shape(args.batch)
        return [(jnp.zeros(shape, cfg.dtype), jnp.zeros(shape, cfg.dtype))
                for _ in range(cfg.layers)]

    params = jax.jit(model.init)(jax.random.key(0), prompt, empty_cache(), jnp.int32(0))
    results = {}
    for name, jit in (("jax.jit", jax.jit), ("jax_mpk.jit", jax_mpk.jit)):
        step = jit(model.apply, donate_argnums=(2,))
        results[name] = generate(step, params, prompt, empty_cache(), args.steps)
        tokens, rate = results[name]
        print(f"{name:12} {rate:9.1f} tokens/s   tokens {tokens[0].tolist()}")
    same = np.array_equal(results["jax.jit"][0], results["jax_mpk.jit"][0])
    print(f"{args.family} ({args.size}): greedy tokens {'match' if same else 'DIFFER'}")


if __name__ == "__main__":
    main()
