"""Model steps for the tests: a decoder, its random model-scaled inputs, and comparison."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from examples.models import linen
from examples.models import nnx as nnx_models
from examples.models.config import DecoderConfig
from jax_mpk.tiling import DeviceSpec

# Relative L2 error allowed against jax.jit, by the dtype the model computes in. Half
# precision is about two units in the last place (f16 eps 9.8e-4, bf16 eps 7.8e-3): XLA
# rounds at other op boundaries than the task kinds, which keep float32 inside a task.
TOLERANCE = {
    np.dtype(np.float32): 1e-5,
    np.dtype(jnp.float16): 2e-3,
    np.dtype(jnp.bfloat16): 1e-2,
}

def division_operands():
    """int32 and uint32 dividends and divisors with XLA's edges among them: by zero, and the
    smallest int32 by -1."""
    a = jnp.asarray([37, -23, 7, -7, 0, -2**31, -2**31, 5, 2**31 - 1, -1], jnp.int32)
    b = jnp.asarray([0, 0, 2, -2, 3, -1, 1, -5, -1, 0], jnp.int32)
    return [(a, b), (a.astype(jnp.uint32), jnp.abs(b).astype(jnp.uint32))]


def divisions(a, b):
    return jax.lax.div(a, b), jax.lax.rem(a, b), a // b, a % b


def shift_operands(dtype, seed: int = 3):
    """Random values of an integer dtype and shift amounts, with XLA's edge amounts among them
    (the width, past it, and for signed dtypes negative ones)."""
    rng, info = np.random.default_rng(seed), np.iinfo(dtype)
    edges = [info.bits, info.bits + 3, 0, info.bits - 1, 100] + ([-1, -5] if info.min else [1, 2])
    amounts = np.concatenate([rng.integers(0, info.bits, 25), edges])
    return (jnp.asarray(rng.integers(info.min, int(info.max) + 1, amounts.size), dtype),
            jnp.asarray(amounts, dtype))


def shifts(a, b):
    """Every shift, and the unpacking of 4-bit fields as an int4 weight loader does it."""
    return (jax.lax.shift_left(a, b), jax.lax.shift_right_arithmetic(a, b),
            jax.lax.shift_right_logical(a, b), (a >> 4) & 15)


# A small device, so that the small test models still split into many tiles and events.
SMALL_DEVICE = DeviceSpec(sm_count=9, min_tile_elements=32, matmul_tile_n=8, min_split_k=16)


def decode_step(cfg: DecoderConfig, api: str, batch: int, seq: int, seed: int = 0):
    """(step, args) for a step of `seq` tokens at a random position against a random cache."""
    rng = np.random.default_rng(seed)
    tokens = jnp.asarray(rng.integers(0, cfg.vocab, (batch, seq)), jnp.int32)
    pos = jnp.int32(rng.integers(0, cfg.max_len - seq + 1))
    shape = cfg.cache_shape(batch)

    def kv():
        return jnp.asarray(rng.standard_normal(shape), cfg.dtype)

    cache = (kv(), kv()) if cfg.scan_layers else [(kv(), kv()) for _ in range(cfg.layers)]
    if api == "linen":
        model = linen.Decoder(cfg)
        params = jax.jit(model.init)(jax.random.key(seed), tokens, cache, pos)

        def step(params, tokens, cache, pos):
            return model.apply(params, tokens, cache, pos)
    else:
        graphdef, params = nnx.split(nnx_models.Decoder(cfg, nnx.Rngs(seed)))

        def step(params, tokens, cache, pos):
            return nnx.merge(graphdef, params)(tokens, cache, pos)
    return step, (params, tokens, cache, pos)


def poisoned(device: DeviceSpec | None, backend: str = "megakernel") -> DeviceSpec | None:
    """The DeviceSpec a GPU test compiles for: `device` (else the GPU's own) with its results
    filled with NaN bytes before each launch, so that an element no task writes fails the
    comparison. The reference executor checks that itself: `device` unchanged."""
    if backend != "megakernel":
        return device
    if device is None:
        from jax_mpk import runtime

        device = DeviceSpec.of_cuda_device(runtime.device_info())
    return dataclasses.replace(device, poison_results=True)


def matmul_descriptors(program) -> list[np.ndarray]:
    """The int32 descriptor (operand 1) of each MATMUL task of a lowered program."""
    from jax_mpk.program import TaskKind

    words = []
    for task in program.tasks[program.tasks["kind"] == TaskKind.MATMUL]:
        operand = program.operands[task["first_operand"] + 1]
        at = int(program.slots[operand["slot"]]["offset"] + operand["offset"])
        words.append(program.constants[at:at + int(operand["bytes"])].view(np.int32))
    return words


def steps(graph) -> list:
    """The graph's ops with each sequence (passes/sequence.py) replaced by its steps."""
    return [s for op in graph.ops for s in op.attrs.get("steps", [op])]


def relative_error(actual, expected) -> float:
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    return float(np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-30))


def expect(fn, *args):
    """jax.jit(fn)(*args) with float32 matmuls in float32: XLA's GPU default is TF32, whose
    error (~3e-4 relative) is over the float32 tolerance."""
    with jax.default_matmul_precision("highest"):
        return jax.jit(fn)(*args)


def assert_close(actual, expected, dtype) -> None:
    """Every leaf within TOLERANCE[dtype] relative L2 error; integer leaves exactly."""
    actual_leaves, expected_leaves = jax.tree.leaves(actual), jax.tree.leaves(expected)
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for i, (a, e) in enumerate(zip(actual_leaves, expected_leaves, strict=True)):
        assert a.shape == e.shape and a.dtype == e.dtype, (i, a.shape, e.shape, a.dtype, e.dtype)
        if np.issubdtype(e.dtype, np.integer):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(e))
            continue
        error = relative_error(a, e)
        assert error <= TOLERANCE[np.dtype(dtype)], f"leaf {i} {e.shape}: relative error {error}"


def kernel_constant(path: str, name: str) -> int:
    """An integer `constexpr` of a CUDA source under kernels/ (e.g. "tasks/matmul.cuh"), for
    tests that check a Python limit copied from the kernels by hand."""
    source = (Path(__file__).resolve().parents[1] / "kernels" / path).read_text()
    found = re.search(rf"constexpr int {name} = ([0-9 *+()-]+);", source)
    assert found, f"{name} is no longer an integer constant of kernels/{path}"
    return int(eval(found.group(1), {"__builtins__": {}}))  # digits and * + - ( ) only
