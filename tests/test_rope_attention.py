"""RoPE and the cache appends folded into decode attention (passes/rope_attention.py,
DeviceSpec.fold_rope): Llama's decode steps bit for bit against the unfolded step and
within tolerance of jax.jit, whole and split over the cache, the appended row where no task
reads it, and the rotations the pass must leave alone."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jax_mpk
from examples.models.config import FAMILIES
from tests.harness import SMALL_DEVICE, assert_close, decode_step, expect, poisoned

BACKENDS = ["reference", pytest.param("megakernel", marks=pytest.mark.gpu)]
FOLDED = dataclasses.replace(SMALL_DEVICE, fold_rope=True)
UNFOLDED = dataclasses.replace(SMALL_DEVICE, fold_rope=False)


def graph_ops(compiled, args):
    return compiled.lower(*args).compiled.program.graph.ops


def assert_same_bits(actual, expected):
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(a).view(np.uint8), np.asarray(e).view(np.uint8))


@functools.cache
def model_case(family, dtype, batch, cache, kv_heads=None):
    cfg = FAMILIES[family].replace(dtype=dtype, max_len=cache)
    cfg = cfg.replace(kv_heads=kv_heads or cfg.kv_heads)
    step, args = decode_step(cfg, "linen", batch, 1, seed=7 * batch + cache)
    return cfg, step, args, expect(step, *args)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cache", [16, 300], ids=["whole", "split"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_folded_step_is_the_unfolded_one(dtype, batch, cache, backend):
    cfg, step, args, expected = model_case("llama", dtype, batch, cache)
    folded = jax_mpk.jit(step, backend=backend, device=poisoned(FOLDED, backend))
    unfolded = jax_mpk.jit(step, backend=backend, device=poisoned(UNFOLDED, backend))
    result = folded(*args)
    assert_close(result, expected, dtype)
    assert_same_bits(result, unfolded(*args))
    ops = graph_ops(folded, args)
    assert sum("rope" in op.attrs for op in ops) == cfg.layers
    assert not any(op.kind == "dynamic_update_slice" or op.label == "rope" for op in ops)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cache", [16, 300], ids=["whole", "split"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_qwen3s_normed_rotation_folds_too(dtype, batch, cache, backend):
    """Qwen3's qk-norm rides in its rotation's ops (fuse_elementwise): the attention sums the
    squares of each head row of q and k and norms it before it rotates it. Its sums are in
    its own order, so the step is within tolerance of the unfolded one, not bit for bit."""
    cfg, step, args, expected = model_case("qwen3", dtype, batch, cache, kv_heads=2)
    folded = jax_mpk.jit(step, backend=backend, device=poisoned(FOLDED, backend))
    unfolded = jax_mpk.jit(step, backend=backend, device=poisoned(UNFOLDED, backend))
    result = folded(*args)
    assert_close(result, expected, dtype)
    assert_close(result, unfolded(*args), dtype)
    ops = graph_ops(folded, args)
    assert sum("norm" in op.attrs.get("rope", {}) for op in ops) == cfg.layers
    assert not any(op.kind == "dynamic_update_slice" or op.label == "rope" for op in ops)
    # q's and k's sums of squares went too: every norm is in a linear or the attention.
    assert [op.kind for op in ops if op.label == "rms_norm" and op.kind != "matmul"] == []


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_caches_stacked_over_layers_fold_each_layers_slice(family, backend):
    """scan_layers: one cache array for all layers, each layer's append a slice of it (Qwen3
    with two kv heads: its norm folds too, its sums in the attention's order)."""
    cfg = FAMILIES[family].replace(scan_layers=True, dtype=jnp.bfloat16, max_len=300)
    cfg = cfg.replace(kv_heads=2) if family == "qwen3" else cfg
    step, args = decode_step(cfg, "linen", 2, 1, seed=11)
    folded = jax_mpk.jit(step, backend=backend, device=poisoned(FOLDED, backend))
    unfolded = jax_mpk.jit(step, backend=backend, device=poisoned(UNFOLDED, backend))
    result = folded(*args)
    assert_close(result, expect(step, *args), cfg.dtype)
    if family == "qwen3":
        assert_close(result, unfolded(*args), cfg.dtype)
    else:
        assert_same_bits(result, unfolded(*args))
    ops = graph_ops(folded, args)
    assert sum("rope" in op.attrs for op in ops) == cfg.layers
    assert not any(op.kind == "dynamic_update_slice" for op in ops)


def rotate(x, cos, sin):
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


def rms_norm(x, scale):
    """As Qwen3's qk-norm, with lax.rsqrt (the models' take the reciprocal of sqrt); and the
    mean square."""
    x32 = x.astype(jnp.float32)
    mean_square = jnp.mean(x32 * x32, -1, keepdims=True)
    normed = x32 * lax.rsqrt(mean_square + 1e-6) * (1.0 + scale.astype(jnp.float32))
    return normed.astype(x.dtype), mean_square


def attention_step(live_shift: int, return_q: bool = False, qk_norm: bool = False,
                   return_mean_square: bool = False):
    """Rotate q [1, 1, H, D] and k [1, 1, Hkv, D], append k and v at pos, attend over the
    positions t <= pos + live_shift (-1: not the appended row); return_q: the rotated q too;
    qk_norm: q and k normed first (rms_norm, by random scales), return_mean_square: q's mean
    squares too."""
    scales = np.random.default_rng(5).standard_normal((2, 16)).astype(np.float32) * 0.1

    def step(q, k, v, cos, sin, k_cache, v_cache, pos):
        mean_square = ()
        if qk_norm:
            (q, q_mean_square), (k, _) = rms_norm(q, scales[0]), rms_norm(k, scales[1])
            mean_square = (q_mean_square,) if return_mean_square else ()
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        k_cache = lax.dynamic_update_slice(k_cache, k, (0, pos, 0, 0))
        v_cache = lax.dynamic_update_slice(v_cache, v, (0, pos, 0, 0))
        T, kv_heads, D = k_cache.shape[1:]
        grouped = q.reshape(1, 1, kv_heads, -1, D)
        scores = jnp.einsum("bskgd,btkd->bkgst", grouped, k_cache).astype(jnp.float32)
        scores = scores / np.float32(np.sqrt(D))
        mask = jnp.arange(T)[None, :] <= (pos + live_shift)
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
        out = jnp.einsum("bkgst,btkd->bskgd", probs, v_cache)
        return (out, k_cache, v_cache) + ((q,) if return_q else ()) + mean_square

    return step


def attention_args(dtype, T: int, pos: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    heads, kv_heads, D = 8, 2, 16

    def normal(*shape):
        return jnp.asarray(rng.standard_normal(shape), dtype)

    angles = pos * (1.0 / 10000.0 ** (np.arange(0, D, 2) / D))
    return (normal(1, 1, heads, D), normal(1, 1, kv_heads, D), normal(1, 1, kv_heads, D),
            jnp.asarray(np.cos(angles)[None, None, None], jnp.float32),
            jnp.asarray(np.sin(angles)[None, None, None], jnp.float32),
            normal(1, T, kv_heads, D), normal(1, T, kv_heads, D), jnp.int32(pos))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pos", [1, 150, 255])
@pytest.mark.parametrize("live_shift", [0, -1], ids=["row_read", "row_not_read"])
def test_the_row_is_appended_whether_or_not_a_split_reads_it(live_shift, pos, backend):
    """Over 256 positions in splits of 16 or more: the split holding pos writes the row, or
    the first split where the live positions end before it."""
    step = attention_step(live_shift)
    args = attention_args(jnp.bfloat16, 256, pos, seed=pos)
    device = dataclasses.replace(FOLDED, attention_split_positions=16)
    compiled = jax_mpk.jit(step, donate_argnums=(5, 6), backend=backend,
                           device=poisoned(device, backend))
    ops = graph_ops(compiled, args)
    assert [op.kind for op in ops if "rope" in op.attrs] == ["decode_attention"]
    expected = jax.jit(step)(*args)
    assert_close(compiled(*[jnp.array(a, copy=True) for a in args]), expected, jnp.bfloat16)


def test_an_interleaved_rotation_keeps_its_ops():
    cfg = FAMILIES["llama"].replace(rope="interleaved")
    step, args = decode_step(cfg, "linen", 1, 1)
    compiled = jax_mpk.jit(step, backend="reference", device=FOLDED)
    assert_close(compiled(*args), jax.jit(step)(*args), cfg.dtype)
    ops = graph_ops(compiled, args)
    assert not any("rope" in op.attrs for op in ops)
    assert sum(op.kind == "decode_attention" for op in ops) == cfg.layers


def test_heads_sharing_one_cache_row_keep_their_ops():
    """MQA (one kv head, read by every head along a stride 0): each head's task would
    append the same row, a race; the rotations stay ops."""
    cfg, step, args, expected = model_case("qwen3", jnp.float32, 2, 16, kv_heads=1)
    compiled = jax_mpk.jit(step, backend="reference", device=FOLDED)
    assert_close(compiled(*args), expected, cfg.dtype)
    ops = graph_ops(compiled, args)
    assert not any("rope" in op.attrs for op in ops)
    assert sum(op.kind == "decode_attention" for op in ops) == cfg.layers


@pytest.mark.parametrize("backend", BACKENDS)
def test_qk_norm_with_rsqrt_folds(backend):
    """lax.rsqrt in the norm (Flax's nnx models' form): RSQRT, the same bits as 1 / sqrt."""
    step = attention_step(0, qk_norm=True)
    args = attention_args(jnp.bfloat16, 256, 77, seed=4)
    device = dataclasses.replace(FOLDED, attention_split_positions=16)
    compiled = jax_mpk.jit(step, donate_argnums=(5, 6), backend=backend,
                           device=poisoned(device, backend))
    ops = graph_ops(compiled, args)
    assert [op.kind for op in ops if "norm" in op.attrs.get("rope", {})] == ["decode_attention"]
    expected = jax.jit(step)(*args)
    assert_close(compiled(*[jnp.array(a, copy=True) for a in args]), expected, jnp.bfloat16)


def test_a_mean_square_read_elsewhere_keeps_the_ops():
    """q's mean square is also a result: its ops stay, and so does the rotation that reads it."""
    step = attention_step(0, qk_norm=True, return_mean_square=True)
    args = attention_args(jnp.float32, 64, 9)
    compiled = jax_mpk.jit(step, backend="reference", device=FOLDED)
    assert_close(compiled(*args), jax.jit(step)(*args), jnp.float32)
    assert not any("rope" in op.attrs for op in graph_ops(compiled, args))


def test_a_rotated_q_read_elsewhere_keeps_its_ops():
    """The rotated q is also a result: the rotation must stay an op."""
    step = attention_step(0, return_q=True)
    args = attention_args(jnp.float32, 64, 9)
    compiled = jax_mpk.jit(step, backend="reference", device=FOLDED)
    assert_close(compiled(*args), jax.jit(step)(*args), jnp.float32)
    assert not any("rope" in op.attrs for op in graph_ops(compiled, args))
