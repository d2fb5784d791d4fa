"""A small Llama-style (or, with the argument qwen3, Qwen3-style) decode step (bf16, every
task kind a decoder uses, sequences included) through the megakernel, for compute-sanitizer;
it must match jax.jit.

JAX runs on the CPU (tracing, and jax.jit for the expected values) and the program runs
through runtime.run_once, so the megakernel is the process's only CUDA user: compute-sanitizer
crashed at start beside JAX's GPU backend (NOTES.md)."""

import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"  # before JAX loads

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import jax_mpk  # noqa: E402
from examples.models.config import FAMILIES  # noqa: E402
from jax_mpk import runtime  # noqa: E402
from jax_mpk.tiling import DeviceSpec  # noqa: E402
from tests.harness import assert_close, decode_step  # noqa: E402

# `sanitize_decode.py qwen3`: Qwen3's step, with two kv heads so that its qk-norm and RoPE fold
# into the decode attention (one kv head keeps them apart).
family = sys.argv[1] if len(sys.argv) > 1 else "llama"
cfg = FAMILIES[family].replace(dtype=jnp.bfloat16)
if family == "qwen3":
    cfg = cfg.replace(kv_heads=2)
step, args = decode_step(cfg, "linen", batch=2, seq=1, seed=3)
expected = jax.jit(step)(*args)
# Results and intermediates poisoned with NaN before the launch: an unwritten element fails.
device = DeviceSpec.of_cuda_device(runtime.device_info(0), poison_results=True)
# The cache donated, as a decode loop does: the kernel writes it in place.
compiled, flat = jax_mpk.jit(step, backend="megakernel", device=device,
                             donate_argnums=2).compile_for(args)
outs = runtime.run_once(compiled.program.program, [np.asarray(x) for x in flat], compiled.results,
                        compiled.aliases)
assert_close(jax.tree.unflatten(compiled.out_tree, outs), expected, cfg.dtype)
print(f"sanitized {family} decode step ({len(compiled.program.tasks)} tasks) matched jax.jit")
