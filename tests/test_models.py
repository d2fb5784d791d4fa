"""The three decoder families, compiled by jax_mpk and run on the reference executor,
against jax.jit of the same step on the same random inputs."""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_mpk
from examples.models.config import FAMILIES
from jax_mpk.program import TaskKind
from tests.harness import SMALL_DEVICE, assert_close, decode_step, steps

STEPS = {"decode_b1": (1, 1), "decode_b4": (4, 1), "prefill": (2, 5)}


def _check(cfg, api, step_name, donate=True):
    batch, seq = STEPS[step_name]
    step, args = decode_step(cfg, api, batch, seq)
    expected = jax.jit(step)(*args)
    compiled = jax_mpk.jit(step, donate_argnums=(2,) if donate else (), backend="reference",
                           device=SMALL_DEVICE)
    assert_close(compiled(*args), expected, cfg.dtype)
    return compiled, args


@pytest.mark.parametrize("step_name", list(STEPS))
@pytest.mark.parametrize("scan_layers", [False, True], ids=["layers", "scan"])
@pytest.mark.parametrize("api", ["linen", "nnx"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_float32_step_matches_jax_jit(family, api, scan_layers, step_name):
    _check(FAMILIES[family].replace(scan_layers=scan_layers), api, step_name)


@pytest.mark.parametrize("step_name", list(STEPS))
@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_interleaved_rope_step_matches_jax_jit(api, step_name):
    _check(FAMILIES["llama"].replace(rope="interleaved"), api, step_name)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_half_precision_decode_matches_jax_jit(family, dtype):
    _check(FAMILIES[family].replace(dtype=dtype), "linen", "decode_b4")


@pytest.mark.parametrize("scan_layers", [False, True], ids=["layers", "scan"])
def test_donated_caches_are_updated_in_place(scan_layers):
    cfg = FAMILIES["llama"].replace(scan_layers=scan_layers)
    compiled, args = _check(cfg, "linen", "decode_b1", donate=True)
    lowered = compiled.lower(*args)
    num_results = len(jax.tree.leaves(jax.eval_shape(compiled.fn, *args)))
    # Every cache result aliases its argument; only the logits get a result buffer, and
    # nothing copies a cache.
    assert len(lowered.compiled.aliases) == num_results - 1
    assert TaskKind.COPY not in lowered.compiled.task_kinds
    ops = steps(lowered.compiled.program.graph)
    # Both appends go into the decode attention with the RoPE (DeviceSpec.fold_rope), which
    # writes the row in place, a layer's slice where the layers' caches are one array
    # (scan); without that fold k's goes into its RoPE (DeviceSpec.fold_cache_appends),
    # each half of the rotation writing its columns.
    assert sum("rope" in op.attrs for op in ops) == cfg.layers
    assert not any(op.kind == "dynamic_update_slice" for op in ops)
    unfolded = dataclasses.replace(SMALL_DEVICE, fold_rope=False)
    ops = steps(jax_mpk.jit(compiled.fn, donate_argnums=(2,), backend="reference",
                            device=unfolded).lower(*args).compiled.program.graph)
    assert sum(op.kind == "dynamic_update_slice" for op in ops) == cfg.layers
    assert sum("dynamic_row" in op.attrs for op in ops) == 2 * cfg.layers


def test_caches_that_are_not_donated_are_copied():
    compiled, args = _check(FAMILIES["gpt2"], "linen", "decode_b1", donate=False)
    assert compiled.lower(*args).compiled.aliases == {}


def test_a_decode_loop_compiles_once():
    cfg = FAMILIES["qwen3"]
    step, (params, tokens, cache, _) = decode_step(cfg, "linen", 1, 1)
    compiled = jax_mpk.jit(step, backend="reference", device=SMALL_DEVICE)
    reference = jax.jit(step)
    for pos in (0, 5, cfg.max_len - 1):
        logits, new_cache = compiled(params, tokens, cache, jnp.int32(pos))
        expected_logits, expected_cache = reference(params, tokens, cache, jnp.int32(pos))
        assert_close((logits, new_cache), (expected_logits, expected_cache), cfg.dtype)
        tokens = jnp.argmax(logits, -1).astype(jnp.int32)
        cache = new_cache
    assert len(compiled._cache) == 1
    assert np.asarray(tokens).shape == (1, 1)


@pytest.mark.parametrize("step_name", list(STEPS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_attention_reads_only_the_live_cache(family, step_name):
    """NaN past the live positions reaches no result: those cache rows are never read, and
    only the cache update and the two attention matmuls touch a cache (no relayout copy)."""
    cfg = FAMILIES[family]
    batch, seq = STEPS[step_name]
    step, (params, tokens, cache, _) = decode_step(cfg, "linen", batch, seq)
    pos = jnp.int32(4)
    live = int(pos) + seq
    clean = [(k.at[:, live:].set(0), v.at[:, live:].set(0)) for k, v in cache]
    poisoned = [(k.at[:, live:].set(jnp.nan), v.at[:, live:].set(jnp.nan)) for k, v in cache]
    unfused = dataclasses.replace(SMALL_DEVICE, fused_attention=False)  # the two matmuls
    compiled = jax_mpk.jit(step, donate_argnums=(2,), backend="reference", device=unfused)
    logits, _ = compiled(params, tokens, poisoned, pos)
    expected_logits, _ = jax.jit(step)(params, tokens, clean, pos)
    assert_close(logits, expected_logits, cfg.dtype)
    lowered = compiled.lower(params, tokens, poisoned, pos)
    # One extent serves every layer: the layers compute the same one, kept once.
    assert re.search(r"^  attention_extent +1$", lowered.as_text(), re.M)
    graph = lowered.compiled.program.graph
    attention = [op for op in graph.ops if op.label == "attention"]
    assert len(attention) == 2 * cfg.layers and all("extent_axis" in op.attrs for op in attention)
    caches = {id(b) for b in graph.args if b.name.startswith("arg2")}
    touching = [op for op in steps(graph) if any(id(t.buffer) in caches for t in op.inputs)]
    # The two attention matmuls of each layer read the caches, and so does each append left
    # an op (k's goes into its RoPE where there is one: DeviceSpec.fold_cache_appends).
    appends = sum(op.kind == "dynamic_update_slice" for op in touching)
    assert appends == (2 if cfg.family == "gpt2" else 1) * cfg.layers
    assert len(touching) == 2 * cfg.layers + appends
    assert {op.kind for op in touching} == {"dynamic_update_slice", "matmul"}
