"""Grouped-query attention written with jnp.repeat of the cache's heads (the Qwen3 example,
Hugging Face's repeat_kv): the attention's matmuls read the cache in place
(passes/repeated_heads.py), so the step neither copies the cache every step nor misses the
fused decode attention."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

import jax_mpk
from examples.models.config import FAMILIES
from tests.harness import SMALL_DEVICE, assert_close, decode_step, expect, poisoned

BACKENDS = ["reference", pytest.param("megakernel", marks=pytest.mark.gpu)]


def _lowered_graph(compiled, args):
    return compiled.lower(*args).compiled.program.graph


def _cache_buffers(graph):
    return {id(b) for b in graph.args if b.name.startswith("arg2")}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "matmuls"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("heads, kv_heads", [(4, 2), (8, 2)])
def test_repeated_heads_decode_step_matches_jax_jit(heads, kv_heads, batch, fused, backend):
    cfg = FAMILIES["qwen3"].replace(heads=heads, kv_heads=kv_heads)
    step, args = decode_step(cfg, "linen", batch, 1, seed=heads + batch)
    device = dataclasses.replace(SMALL_DEVICE, fused_attention=fused)
    compiled = jax_mpk.jit(step, backend=backend, device=poisoned(device, backend),
                           donate_argnums=(2,))
    graph = _lowered_graph(compiled, args)
    expected = expect(step, *args)
    assert_close(compiled(*args), expected, cfg.dtype)
    caches = _cache_buffers(graph)
    readers = [op for op in graph.ops if any(id(t.buffer) in caches for t in op.inputs)]
    # Only the attention reads the donated caches (and v's append its row): no copy of them.
    assert {op.kind for op in readers} <= {"decode_attention", "matmul", "dynamic_update_slice"}
    if fused:
        assert sum(op.kind == "decode_attention" for op in graph.ops) == cfg.layers
    else:
        attention = [op for op in readers if op.kind == "matmul"]
        assert len(attention) == 2 * cfg.layers
        assert all(op.attrs["B1"] == kv_heads and "extent_axis" in op.attrs for op in attention)


def test_several_query_positions_keep_the_copy():
    """A prefill's query rows are its positions: the group cannot become them, so the
    repeat stays a copy, and the step is still right."""
    cfg = FAMILIES["qwen3"].replace(heads=4, kv_heads=2)
    step, args = decode_step(cfg, "linen", 2, 5)
    compiled = jax_mpk.jit(step, backend="reference", device=SMALL_DEVICE, donate_argnums=(2,))
    graph = _lowered_graph(compiled, args)
    expected = expect(step, *args)
    assert_close(compiled(*args), expected, cfg.dtype)
    caches = _cache_buffers(graph)
    copies = [op for op in graph.ops if op.kind == "elementwise"
              and any(id(t.buffer) in caches for t in op.inputs)]
    assert len(copies) == 2 * cfg.layers


@pytest.mark.parametrize("repeated", ["keys", "values"])
def test_a_repeat_read_by_a_matmul_of_several_rows_is_left_alone(repeated):
    """The other operand has more than one row (column): nothing to put the group in."""
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((1, 3, 4, 8)), jnp.float32)  # b, s, h, d
    k = jnp.asarray(rng.standard_normal((1, 6, 2, 8)), jnp.float32)  # b, t, kv, d

    def fn(q, k):
        keys = jnp.repeat(k, 2, axis=2)
        if repeated == "keys":
            return jnp.einsum("bshd,bthd->bhst", q, keys)
        return jnp.einsum("bhst,bthd->bshd", jnp.einsum("bshd,bthd->bhst", q, keys), keys)

    compiled = jax_mpk.jit(fn, backend="reference", device=SMALL_DEVICE)
    assert_close(compiled(q, k), expect(fn, q, k), jnp.float32)
