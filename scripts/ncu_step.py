"""One Llama-3.2-1B-shaped decode step under jax_mpk.jit, launched twice: the second launch
is the one to profile, e.g. where the megakernel's warps stall:

    ncu --kernel-name regex:megakernel --launch-skip 1 --launch-count 1 \\
        --section WarpStateStats python scripts/ncu_step.py
"""

import os
import sys

import jax

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from bench_compile import LLAMA_1B  # noqa: E402
from bench_decode import setup  # noqa: E402

import jax_mpk  # noqa: E402

model, params, tokens, cache, pos = setup(LLAMA_1B, 1, 512)
step = jax_mpk.jit(model.apply)
for _ in range(2):
    jax.block_until_ready(step(params, tokens, cache, pos))
