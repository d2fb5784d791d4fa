"""Gatings silu(g) * up folded into the matmuls that read them (passes/gating_linear.py,
DeviceSpec.fold_gating): against jax.jit on both backends, bit for bit against the unfolded
gating, and the gatings the pass must leave alone."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_mpk
from examples.models.config import LLAMA, QWEN3
from tests.harness import SMALL_DEVICE, assert_close, decode_step, expect, poisoned

BACKENDS = ["reference", pytest.param("megakernel", marks=pytest.mark.gpu)]
DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16}
UNFOLDED = dataclasses.replace(SMALL_DEVICE, fold_gating=False)


def inputs(dtype, rows, k, seed=0):
    rng = np.random.default_rng(seed)
    g, up = (jnp.asarray(rng.standard_normal((rows, 1, k)) * 2.0, dtype) for _ in range(2))
    w_down = jnp.asarray(rng.standard_normal((k, 48)) * k ** -0.5, dtype)
    residual = jnp.asarray(rng.standard_normal((rows, 1, 48)), dtype)
    return g, up, w_down, residual


def assert_same_bits(a, b):
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def gated_ops(compiled, args) -> tuple[int, int]:
    """(gated matmuls, elementwise ops) of the compiled graph."""
    ops = compiled.lower(*args).compiled.program.graph.ops
    return (sum(op.kind == "matmul" and bool(op.attrs.get("gate")) for op in ops),
            sum(op.kind == "elementwise" for op in ops))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [256, 104])  # 104: 13 bf16 vectors a row, no power of two
@pytest.mark.parametrize("rows", [1, 3, 8])  # 8: on CUDA cores (the fold stays off tensor cores)
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_the_gating_runs_inside_its_linear(dtype, rows, k, backend):
    dtype = DTYPES[dtype]

    def fn(g, up, w_down, residual):
        return residual + (jax.nn.silu(g) * up) @ w_down

    args = inputs(dtype, rows, k, seed=rows + k)
    device = dataclasses.replace(SMALL_DEVICE, matmul_tensor_core_rows=0)
    folded = jax_mpk.jit(fn, backend=backend, device=poisoned(device, backend))
    got = folded(*args)
    assert_close(got, expect(fn, *args), dtype)
    assert gated_ops(folded, args) == (1, 0)
    # The matmul stages what the elementwise program computes, rounding as it rounds.
    unfolded = jax_mpk.jit(fn, backend=backend, device=poisoned(UNFOLDED, backend))
    assert_same_bits(got, unfolded(*args))
    assert gated_ops(unfolded, args) == (0, 1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_the_gating_stays_beside_tensor_core_linears(dtype, backend):
    """From DeviceSpec.matmul_tensor_core_rows rows on, each task would gate all its rows
    again: the gating stays an elementwise op."""
    dtype = DTYPES[dtype]

    def fn(g, up, w_down, residual):
        return residual + (jax.nn.silu(g) * up) @ w_down

    args = inputs(dtype, 8, 256, seed=11)
    compiled = jax_mpk.jit(fn, backend=backend, device=poisoned(SMALL_DEVICE, backend))
    assert_close(compiled(*args), expect(fn, *args), dtype)
    assert gated_ops(compiled, args) == (0, 1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k, n", [(12288, 48), (20480, 48), (256, 8)],
                         ids=["whole-x", "chunked-x", "split-k"])
def test_the_gating_on_every_staging_path(k, n, backend):
    """x staged whole by vectors up to kStagedX floats (a Qwen3-8B down projection: K 12288),
    in chunks past that, and K split over tasks (few columns), each task gating its own k
    range."""
    g, up, _, _ = inputs(jnp.bfloat16, 1, k, seed=k + n)
    w_down = jnp.asarray(np.random.default_rng(n).standard_normal((k, n)) * k ** -0.5,
                         jnp.bfloat16)

    def fn(g, up, w_down):
        return (jax.nn.silu(g) * up) @ w_down

    args = (g, up, w_down)
    folded = jax_mpk.jit(fn, backend=backend, device=poisoned(SMALL_DEVICE, backend))
    got = folded(*args)
    assert_close(got, expect(fn, *args), jnp.bfloat16)
    assert gated_ops(folded, args)[0] == 1
    unfolded = jax_mpk.jit(fn, backend=backend, device=poisoned(UNFOLDED, backend))
    assert_same_bits(got, unfolded(*args))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cfg", [LLAMA, QWEN3.replace(dtype=jnp.bfloat16)],
                         ids=["llama", "qwen3-bf16"])
def test_a_decoder_step_folds_every_gating(cfg, backend):
    step, args = decode_step(cfg, "linen", 1, 1, seed=3)
    folded = jax_mpk.jit(step, backend=backend, device=poisoned(SMALL_DEVICE, backend))
    gated, _ = gated_ops(folded, args)
    assert gated == cfg.layers
    logits, _ = folded(*args)
    unfolded = jax_mpk.jit(step, backend=backend, device=poisoned(UNFOLDED, backend))
    assert_same_bits(logits, unfolded(*args)[0])
    assert_close(logits, expect(step, *args)[0], cfg.dtype)


def test_gatings_it_must_leave_alone():
    g, up, w_down, _ = inputs(jnp.bfloat16, 3, 64)

    def also_returned(g, up, w):
        h = jax.nn.silu(g) * up
        return h @ w, h

    def gelu_gate(g, up, w):
        return (jax.nn.gelu(g) * up) @ w

    def squared(g, up, w):  # silu(g) * g: up is g itself
        return (jax.nn.silu(g) * g) @ w

    def mixed_dtypes(g, up, w):
        return (jax.nn.silu(g) * up.astype(jnp.float32)).astype(g.dtype) @ w

    for fn in (also_returned, gelu_gate, squared, mixed_dtypes):
        args = (g, up, w_down)
        compiled = jax_mpk.jit(fn, backend="reference", device=SMALL_DEVICE)
        assert_close(compiled(*args), expect(fn, *args), jnp.bfloat16)
        gated, elementwise = gated_ops(compiled, args)
        assert gated == 0 and elementwise >= 1, fn.__name__
