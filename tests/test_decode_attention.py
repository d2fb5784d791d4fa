"""Decode attention as one op (passes/decode_attention.py, DeviceSpec.fused_attention): the
models' decode steps against jax.jit, whole and split over the cache; what it must not take."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_mpk
from examples.models.config import FAMILIES
from jax_mpk.passes import decode_attention
from jax_mpk.program import TaskKind
from jax_mpk.task_kinds import ATTENTION_MERGE, ATTENTION_PARTIAL, ATTENTION_WHOLE
from tests.harness import SMALL_DEVICE, assert_close, decode_step, expect, kernel_constant, poisoned

FUSED = dataclasses.replace(SMALL_DEVICE, fused_attention=True)
BACKENDS = ["reference", pytest.param("megakernel", marks=pytest.mark.gpu)]


def fused_ops(compiled, args):
    return [op for op in compiled.lower(*args).compiled.program.graph.ops
            if op.kind == "decode_attention"]


@functools.cache
def model_case(family, dtype, batch, cache):
    """(cfg, step, args, jax.jit's result), shared by the cases that differ only in how the
    attention is split and merged: the model's init and jax.jit's compile are most of a case's
    time (nothing here donates, so the arrays can be reused)."""
    cfg = FAMILIES[family].replace(dtype=dtype, max_len=cache)
    step, args = decode_step(cfg, "linen", batch, 1, seed=batch + cache)
    return cfg, step, args, expect(step, *args)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cache, merge_in_splits", [(16, True), (300, True), (300, False)],
                         ids=["whole", "split", "split_merge_task"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_decode_step_matches_jax_jit(family, dtype, batch, cache, merge_in_splits, backend):
    cfg, step, args, expected = model_case(family, dtype, batch, cache)
    device = dataclasses.replace(FUSED, attention_merge_in_splits=merge_in_splits)
    compiled = jax_mpk.jit(step, backend=backend, device=poisoned(device, backend))
    assert_close(compiled(*args), expected, dtype)
    ops = fused_ops(compiled, args)
    assert len(ops) == cfg.layers
    program = compiled.lower(*args).program
    modes = {int(t["dims"][4]) for t in program.tasks if t["kind"] == TaskKind.DECODE_ATTENTION}
    # A short cache, or a head group (B of them) a worker: whole; else splits, merged by the
    # last of them or by a merge task.
    split = cache > 64 and ops[0].attrs["B"] * 2 <= SMALL_DEVICE.workers
    merges = set() if merge_in_splits else {ATTENTION_MERGE}
    assert modes == ({ATTENTION_PARTIAL} | merges if split else {ATTENTION_WHOLE})


def test_prefill_keeps_the_three_ops():
    """Several query positions a head: the mask differs by row, so the chain stays."""
    cfg = FAMILIES["llama"]
    step, args = decode_step(cfg, "linen", 2, 5)
    compiled = jax_mpk.jit(step, backend="reference", device=FUSED)
    assert_close(compiled(*args), jax.jit(step)(*args), cfg.dtype)
    assert not fused_ops(compiled, args)


def test_a_softmax_that_is_not_the_pattern_is_left_alone():
    """Probabilities used twice (returned beside the output): the chain is not only an
    attention's, so nothing fuses; the numbers still match."""
    rng = np.random.default_rng(4)
    q = jnp.asarray(rng.standard_normal((1, 1, 4, 16)), jnp.float32)
    kc = jnp.asarray(rng.standard_normal((1, 64, 4, 16)), jnp.float32)
    vc = jnp.asarray(rng.standard_normal((1, 64, 4, 16)), jnp.float32)
    pos = jnp.int32(40)

    def attend(q, kc, vc, pos):
        scores = jnp.einsum("bshd,bthd->bhst", q, kc) / 4.0
        scores = jnp.where(jnp.arange(64) <= pos, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, -1)
        return jnp.einsum("bhst,bthd->bshd", probs, vc), probs

    compiled = jax_mpk.jit(attend, backend="reference", device=FUSED)
    assert_close(compiled(q, kc, vc, pos), expect(attend, q, kc, vc, pos), jnp.float32)
    assert not fused_ops(compiled, (q, kc, vc, pos))


@pytest.mark.parametrize("api,scan", [("linen", True), ("nnx", False)], ids=["scan", "nnx"])
def test_scanned_and_nnx_decoders_fuse_too(api, scan):
    cfg = FAMILIES["qwen3"].replace(scan_layers=scan, max_len=200)
    step, args = decode_step(cfg, api, 1, 1)
    compiled = jax_mpk.jit(step, backend="reference", device=FUSED)
    assert_close(compiled(*args), jax.jit(step)(*args), cfg.dtype)
    assert len(fused_ops(compiled, args)) == cfg.layers


def test_split_length_follows_the_device_spec():
    """DeviceSpec.attention_split_positions: splits of at least that many positions, and a
    cache no longer than it runs whole (one task per head group, no merge)."""
    cfg = FAMILIES["llama"].replace(dtype=jnp.bfloat16, max_len=300)
    step, args = decode_step(cfg, "linen", 1, 1, seed=7)
    for positions, splits in ((100, 3), (150, 2), (300, 1)):  # under the workers a head group gets
        device = dataclasses.replace(FUSED, attention_split_positions=positions)
        compiled = jax_mpk.jit(step, backend="reference", device=device)
        assert_close(compiled(*args), expect(step, *args), jnp.bfloat16)
        dims = [t["dims"] for t in compiled.lower(*args).program.tasks
                if t["kind"] == TaskKind.DECODE_ATTENTION]
        partial = [d for d in dims if int(d[4]) == ATTENTION_PARTIAL]
        whole = [d for d in dims if int(d[4]) == ATTENTION_WHOLE]
        heads = cfg.layers * fused_ops(compiled, args)[0].attrs["B"]
        assert (len(partial), len(whole)) == ((heads * splits, 0) if splits > 1 else (0, heads))


def test_pass_limits_mirror_the_kernel():
    """passes/decode_attention.py copies the kernel's limits and its share of the task arena by
    hand (the arena's tail holds the value pass's sums): a kernel change must show here."""
    kernel = "tasks/decode_attention.cuh"
    assert decode_attention.MAX_HEAD_DIM == kernel_constant(kernel, "kMaxHeadDim")
    assert decode_attention.MAX_ROWS == kernel_constant(kernel, "kMaxRows")
    assert decode_attention.STAGED_WORDS == kernel_constant(kernel, "kDescWords")
    warps = kernel_constant("runtime/task_context.cuh", "kWorkerThreads") // 32
    sums = warps * kernel_constant(kernel, "kRowsPerPass") * kernel_constant(kernel, "kMaxHeadDim")
    arena_floats = kernel_constant("runtime/task_context.cuh", "kTaskSharedBytes") // 4
    assert decode_attention.SHARED_FLOATS + sums <= arena_floats
