"""Cache appends folded into the elementwise ops that compute what they append
(passes/cache_append.py, DeviceSpec.fold_cache_appends): against jax.jit on both backends,
bit for bit against the unfolded append, and the appends the pass must leave alone; and
jnp's `.at[...].set/add` at one place, which the frontend turns into such appends."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jax_mpk
from examples.models.config import GPT2, LLAMA, QWEN3
from jax_mpk.frontend import UnsupportedError
from jax_mpk.tiling import op_dependencies
from tests.harness import SMALL_DEVICE, assert_close, decode_step, expect, poisoned

BACKENDS = ["reference", pytest.param("megakernel", marks=pytest.mark.gpu)]
# RoPE stays out of the decode attention (DeviceSpec.fold_rope), which would take the appends.
FOLDED = dataclasses.replace(SMALL_DEVICE, fold_cache_appends=True, fold_rope=False)
UNFOLDED = dataclasses.replace(SMALL_DEVICE, fold_cache_appends=False, fold_rope=False)


def graph_of(fn, args):
    return jax_mpk.jit(fn, backend="reference", device=FOLDED).lower(*args).compiled.program.graph


def appends(fn, args) -> int:
    return sum(op.kind == "dynamic_update_slice" for op in graph_of(fn, args).ops)


def op_shapes(fn, args) -> list:
    return [(op.kind, len(op.attrs.get("instrs", ())), op.outputs[0].shape)
            for op in graph_of(fn, args).ops]


def rope_append(x, cos, sin, cache, pos):
    """Half-split rotation of x [B, 1, H, D], appended at row pos of cache [B, T, H, D]."""
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)
    cache = lax.dynamic_update_slice(cache, rotated, (0, pos, 0, 0))
    return cache, cache.astype(jnp.float32).sum(axis=1)  # a reader of every row


def interleaved_rope_append(x, cos, sin, cache, pos):
    """rope_append over the pairs (2i, 2i + 1) of a head's dims."""
    pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
    x1, x2 = pairs[..., 0], pairs[..., 1]
    rotated = jnp.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)
    cache = lax.dynamic_update_slice(cache, rotated.reshape(x.shape).astype(x.dtype),
                                     (0, pos, 0, 0))
    return cache, cache.astype(jnp.float32).sum(axis=1)


ROPES = {"half": rope_append, "interleaved": interleaved_rope_append}


def rope_inputs(dtype, pos, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((2, 1, 3, 16)), dtype)
    cos, sin = (jnp.asarray(rng.uniform(-1, 1, (1, 1, 1, 8)), jnp.float32) for _ in range(2))
    cache = jnp.asarray(rng.standard_normal((2, 12, 3, 16)), dtype)
    return x, cos, sin, cache, jnp.int32(pos)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pos", [0, 5, 11, 40, -3])  # 40 clamps to the last row; -3 to the first
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("rope", list(ROPES))
def test_the_rope_writes_its_cache_row(rope, dtype, pos, backend):
    fn = ROPES[rope]
    args = rope_inputs(dtype, pos, seed=pos + 7)
    folded = jax_mpk.jit(fn, backend=backend, device=poisoned(FOLDED, backend))
    got = folded(*args)
    assert_close(got, expect(fn, *args), dtype)
    assert appends(fn, args) == 0
    # Two ops rotate, each writing its half of the row (the converts and the stack or
    # concatenation run inside them), in either pairing of the dims.
    assert op_shapes(fn, args) == op_shapes(rope_append, args)
    assert sum("writes_within" in op.attrs for op in graph_of(fn, args).ops) == 2
    unfolded = jax_mpk.jit(fn, backend=backend, device=poisoned(UNFOLDED, backend))
    np.testing.assert_array_equal(np.asarray(got[0], np.float32),
                                  np.asarray(unfolded(*args)[0], np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cfg", [LLAMA, LLAMA.replace(rope="interleaved", dtype=jnp.bfloat16),
                                 QWEN3.replace(dtype=jnp.bfloat16), GPT2],
                         ids=["llama", "llama-interleaved-bf16", "qwen3-bf16", "gpt2"])
def test_a_decoder_step_with_folded_appends(cfg, backend):
    step, args = decode_step(cfg, "linen", 1, 1, seed=5)
    folded = jax_mpk.jit(step, backend=backend, device=poisoned(FOLDED, backend))
    logits, cache = folded(*args)
    expected_logits, expected_cache = expect(step, *args)
    assert_close(logits, expected_logits, cfg.dtype)
    assert_close(cache, expected_cache, cfg.dtype)
    # k's append folds into its RoPE; v's has a matmul for writer, and GPT-2 has no RoPE.
    assert appends(step, args) == (2 if cfg.family == "gpt2" else 1) * cfg.layers


AT_ONE_PLACE = {  # jnp's .at[...] updates, which jax lowers to scatters
    "set_row": lambda c, pos, k: c.at[:, pos].set(k),
    "add_row": lambda c, pos, k: c.at[1, pos].add(k[0]),
    "set_token": lambda c, pos, k: c[0, :, 0, 0].at[pos].set(k[0, 0, 0]),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pos", [0, 11, 12, 40, -1, -13])  # 12 and 40 past the end: dropped
@pytest.mark.parametrize("name", list(AT_ONE_PLACE))
def test_at_one_place_updates_as_jax_jit(name, pos, backend):
    fn = AT_ONE_PLACE[name]
    _, _, _, cache, _ = rope_inputs(jnp.float32, 0, seed=3)
    k = jnp.asarray(np.random.default_rng(4).standard_normal((2, 3, 16)), jnp.float32)
    expected = expect(fn, cache, jnp.int32(pos), k)
    got = jax_mpk.jit(fn, backend=backend, device=poisoned(FOLDED, backend),
                      donate_argnums=0)(jnp.array(cache), jnp.int32(pos), k)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_a_scatter_at_several_places_is_refused():
    fn = jax_mpk.jit(lambda c, rows: c.at[rows].set(0.0), backend="reference")
    with pytest.raises(UnsupportedError, match="scatter other than at one place"):
        fn(jnp.zeros((4, 3)), jnp.asarray([0, 2], jnp.int32))


def test_the_parts_of_one_row_are_written_independently():
    """The two halves of k's rotation land in disjoint columns of the row: neither waits for
    the other, while the attention that reads the cache waits for both."""
    step, args = decode_step(LLAMA, "linen", 1, 1, seed=3)
    lowered = jax_mpk.jit(step, backend="reference", device=FOLDED).lower(*args)
    ops = lowered.compiled.program.graph.ops
    deps, ancestors = op_dependencies(ops)
    writers = [i for i, op in enumerate(ops) if "dynamic_row" in op.attrs]
    assert len(writers) == 2 * LLAMA.layers
    for first, second in zip(writers[::2], writers[1::2], strict=True):
        assert ops[first].outputs[0].buffer is ops[second].outputs[0].buffer
        assert not ancestors[second] >> first & 1
        reader = next(i for i in range(second, len(ops)) if ops[i].kind == "decode_attention")
        assert {first, second} <= set(deps[reader])


def test_appends_it_must_leave_alone():
    x, _, _, cache, pos = rope_inputs(jnp.float32, 3)

    def from_a_matmul(x, w, cache, pos):  # the update's writer is no elementwise op
        return lax.dynamic_update_slice(cache, (x.reshape(2, 48) @ w).reshape(2, 1, 3, 16),
                                        (0, pos, 0, 0))

    def also_returned(x, cache, pos):  # the update has another reader
        y = x * 2.0
        return lax.dynamic_update_slice(cache, y, (0, pos, 0, 0)), y

    def two_dynamic_axes(x, cache, pos):
        return lax.dynamic_update_slice(cache, x[:, :, :2] * 2.0, (0, pos, pos, 0))

    w = jnp.asarray(np.random.default_rng(1).standard_normal((48, 48)), jnp.float32)
    for fn, args in ((from_a_matmul, (x, w, cache, pos)), (also_returned, (x, cache, pos)),
                     (two_dynamic_axes, (x, cache, pos))):
        assert appends(fn, args) == 1, fn.__name__
        got = jax_mpk.jit(fn, backend="reference", device=FOLDED)(*args)
        assert_close(got, expect(fn, *args), jnp.float32)
