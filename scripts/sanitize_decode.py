"""A small Llama-style decode step (bf16, every task kind a decoder uses, sequences
included) through the megakernel, for compute-sanitizer; it must match jax.jit."""

import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import jax_mpk  # noqa: E402
from examples.models.config import FAMILIES  # noqa: E402
from tests.harness import assert_close, decode_step  # noqa: E402

cfg = FAMILIES["llama"].replace(dtype=jnp.bfloat16)
step, args = decode_step(cfg, "linen", batch=2, seq=1, seed=3)
expected = jax.jit(step)(*args)
got = jax_mpk.jit(step, backend="megakernel")(*args)
assert_close(got, expected, cfg.dtype)
print("sanitized decode step matched jax.jit")
