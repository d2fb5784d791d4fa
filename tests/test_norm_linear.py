"""RMS norms folded into the matmuls that read them (passes/norm_linear.py, DeviceSpec.
fold_norms): against jax.jit on both backends, and the norms the pass must leave alone."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

import jax_mpk
from examples.models import linen
from jax_mpk import tiling
from jax_mpk.passes import norm_linear
from jax_mpk.task_kinds import MATMUL_TENSOR_CORES
from tests.harness import (SMALL_DEVICE, assert_close, expect, kernel_constant, matmul_descriptors,
                           poisoned)

BACKENDS = ["reference", pytest.param("megakernel", marks=pytest.mark.gpu)]
DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16}


def rms_norm(kind: str, h, scale):
    if kind == "llama":  # 1 / sqrt(mean + eps) * (1 + scale), the example models' norm
        return linen.RMSNorm(h.dtype).apply({"params": {"scale": scale}}, h)
    # Flax's: x * (rsqrt(mean + eps) * scale), scale in float32
    return nn.RMSNorm(dtype=h.dtype, param_dtype=scale.dtype).apply({"params": {"scale": scale}}, h)


def inputs(kind, dtype, rows, k, seed=0):
    rng = np.random.default_rng(seed)
    x, residual = (jnp.asarray(rng.standard_normal((rows, 1, k)), dtype) for _ in range(2))
    scale = rng.standard_normal(k) * 0.1 + (0.0 if kind == "llama" else 1.0)
    scale = jnp.asarray(scale, dtype if kind == "llama" else jnp.float32)
    wq, wk = (jnp.asarray(rng.standard_normal((k, n)) * k ** -0.5, dtype) for n in (48, 24))
    return x, residual, scale, wq, wk


def ops_of(compiled, args):
    return compiled.lower(*args).compiled.program.graph.ops


def reductions(ops) -> int:
    """Reduce ops, and reduce steps of sequences."""
    return sum(op.kind == "reduce" or sum(s.kind == "reduce" for s in op.attrs.get("steps", ()))
               for op in ops)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [256, 104])  # 104: 13 bf16 vectors a row, no power of two
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("kind", ["llama", "flax"])
def test_the_norm_runs_inside_its_linears(kind, dtype, rows, k, backend):
    dtype = DTYPES[dtype]

    def fn(x, residual, scale, wq, wk):
        h = x + residual  # the residual stream, as in a decoder layer
        n = rms_norm(kind, h, scale)
        return n @ wq, n @ wk, h

    args = inputs(kind, dtype, rows, k, seed=rows + k)
    compiled = jax_mpk.jit(fn, backend=backend, device=poisoned(SMALL_DEVICE, backend))
    assert_close(compiled(*args), expect(fn, *args), dtype)
    ops = ops_of(compiled, args)
    assert reductions(ops) == 0
    assert all("norm" in op.attrs for op in ops if op.kind == "matmul")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [256, 104])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_the_final_norm_runs_inside_a_tied_lm_head(dtype, k, backend):
    """A tied LM head reads the embedding along k (x @ E^T): at one row its tasks stage and
    normalize all of x too; at three rows the norm stays three ops."""
    dtype = DTYPES[dtype]
    x, residual, scale, _, _ = inputs("llama", dtype, 1, k, seed=k)
    embedding = jnp.asarray(np.random.default_rng(k).standard_normal((300, k)), dtype)

    def fn(x, residual, scale, embedding):
        h = x + residual  # the residual stream
        return rms_norm("llama", h, scale) @ embedding.T, h

    compiled = jax_mpk.jit(fn, backend=backend, device=poisoned(SMALL_DEVICE, backend))
    args = (x, residual, scale, embedding)
    assert_close(compiled(*args), expect(fn, *args), dtype)
    ops = ops_of(compiled, args)
    assert reductions(ops) == 0
    (head,) = (op for op in ops if op.kind == "matmul")
    assert "norm" in head.attrs and head.attrs["w_strides"][2] == 1
    rows = tuple(jnp.tile(t, (3, 1, 1)) for t in (x, residual)) + (scale, embedding)
    assert_close(compiled(*rows), expect(fn, *rows), dtype)
    assert reductions(ops_of(compiled, rows)) == 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [256, 104])
@pytest.mark.parametrize("kind", ["llama", "flax"])
def test_the_norm_runs_inside_tensor_core_linears(kind, k, backend):
    """8 rows in bf16 run on tensor cores (DeviceSpec.matmul_tensor_core_rows), which
    normalize x as they stage it as 16-bit pairs, in tiles of 16 to 128 columns; columns
    that do not fill 16-column blocks keep the norm, as do tiles of 8-column units."""
    x, residual, scale, wq, _ = inputs(kind, jnp.bfloat16, 8, k, seed=k)
    device = dataclasses.replace(SMALL_DEVICE, matmul_tile_n=16)  # tiles of whole 16-column blocks
    wk = jnp.asarray(np.random.default_rng(k).standard_normal((k, 32)) * k ** -0.5, jnp.bfloat16)

    def fn(x, residual, scale, wq, wk):
        h = x + residual
        n = rms_norm(kind, h, scale)
        return n @ wq, n @ wk, h

    args = (x, residual, scale, wq, wk)
    compiled = jax_mpk.jit(fn, backend=backend, device=poisoned(device, backend))
    assert_close(compiled(*args), expect(fn, *args), jnp.bfloat16)
    ops = ops_of(compiled, args)
    assert reductions(ops) == 0
    assert all("norm" in op.attrs for op in ops if op.kind == "matmul")
    program = compiled.lower(*args).program
    assert all(words[8] & MATMUL_TENSOR_CORES for words in matmul_descriptors(program))
    ragged = (x, residual, scale, wq, wk[:, :24])
    assert reductions(ops_of(compiled, ragged)) == 1
    assert reductions(ops_of(jax_mpk.jit(fn, backend=backend, device=SMALL_DEVICE), args)) == 1


def test_norms_it_must_leave_alone():
    x, residual, scale, wq, wk = inputs("llama", jnp.bfloat16, 3, 64)

    def also_returned(x, scale, wq):
        n = rms_norm("llama", x, scale)
        return n @ wq, n

    def layer_norm(x, scale, wq):
        return nn.LayerNorm(dtype=x.dtype).apply(
            {"params": {"scale": scale, "bias": scale}}, x) @ wq

    many_rows = jnp.tile(x, (30, 1, 1))  # 90 rows: more than a matmul task normalizes
    ragged = inputs("llama", jnp.bfloat16, 1, 100)  # rows not of whole 16-byte vectors

    def linear(x, scale, wq):
        return rms_norm("llama", x, scale) @ wq

    def gram(x, scale):  # the normed rows as both operands
        n = rms_norm("llama", x, scale)[:, 0, :]
        return n @ n.T

    for fn, args in ((also_returned, (x, scale, wq)), (layer_norm, (x, scale, wq)),
                     (also_returned, (many_rows, scale, wq)),
                     (linear, (ragged[0], ragged[2], ragged[3])), (gram, (x, scale))):
        compiled = jax_mpk.jit(fn, backend="reference", device=SMALL_DEVICE)
        assert_close(compiled(*args), expect(fn, *args), jnp.bfloat16)
        ops = ops_of(compiled, args)
        assert reductions(ops) >= 1
        assert not any("norm" in op.attrs for op in ops if op.kind == "matmul")


def test_fold_norms_off_keeps_the_three_ops():
    args = inputs("llama", jnp.float32, 1, 64)

    def fn(x, residual, scale, wq, wk):
        return rms_norm("llama", x + residual, scale) @ wq

    device = dataclasses.replace(SMALL_DEVICE, fold_norms=False)
    ops = ops_of(jax_mpk.jit(fn, backend="reference", device=device), args)
    assert reductions(ops) == 1


def test_norm_folds_mirror_the_kernel_staging_limits():
    """A norm folds only where the kernel stages all of x (tiling.tensor_cores_normalize, and
    norm_linear on the CUDA cores): their constants copy matmul.cuh's by hand, so a kernel
    change must show here."""
    assert tiling.MMA_PAIR_WORDS == kernel_constant("tasks/matmul.cuh", "kPairWords")
    assert tiling.MMA_MAX_ROWS == kernel_constant("tasks/matmul.cuh", "kMmaRows")
    assert norm_linear.STAGED_FLOATS == kernel_constant("tasks/matmul.cuh", "kStagedX")
    assert norm_linear.MAX_NORM_ROWS <= kernel_constant("tasks/matmul.cuh", "kStagedRows")
    source = (Path(__file__).resolve().parents[1] / "kernels" / "tasks" / "matmul.cuh").read_text()
    # on_tensor_cores<T>: tiles of up to so many column groups of 8
    groups = re.search(r"static bool on_tensor_cores\(.*?round_groups <= (\d+)", source, re.S)
    assert groups, "MatmulTask::on_tensor_cores no longer caps the column groups"
    assert tiling.MMA_TILE_COLUMNS == int(groups.group(1)) * 8
