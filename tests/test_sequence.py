"""Sequences (jax_mpk/passes/sequence.py): runs of small ops as one task, split by rows
where each step stays within its row; the reference executor checks the results against
jax.jit and flags any read of another task's row that no event orders."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_mpk
from jax_mpk import runtime
from jax_mpk.program import TaskKind
from jax_mpk.task_kinds import SEQUENCE_STEP_WORDS
from tests.harness import SMALL_DEVICE, assert_close, expect, poisoned


def rms_norm(x, scale):
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + 1e-6)
    return (normed * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)


# The reference executor everywhere; the megakernel too where a GPU is.
BACKENDS = ["reference", pytest.param("megakernel", marks=pytest.mark.gpu)]


def lowered(fn, *args, backend="reference", device=SMALL_DEVICE):
    compiled = jax_mpk.jit(fn, backend=backend, device=poisoned(device, backend))
    return compiled, compiled.lower(*args)


def row_tiles(rows: int) -> int:
    """Tasks a sequence of `rows` rows gets on SMALL_DEVICE: rows spread over the workers."""
    per_task = -(-rows // SMALL_DEVICE.workers)
    return -(-rows // per_task)


def sequences(low):
    return [op for op in low.compiled.program.graph.ops if op.kind == "sequence"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", [1, 3, 8, 64])
def test_rms_norm_runs_as_one_sequence(batch, backend):
    rng = np.random.default_rng(batch)
    x = jnp.asarray(rng.standard_normal((batch, 1, 256)) * 3, jnp.bfloat16)
    scale = jnp.asarray(rng.standard_normal(256) * 0.1, jnp.bfloat16)
    compiled, low = lowered(rms_norm, x, scale, backend=backend)
    assert_close(compiled(x, scale), expect(rms_norm, x, scale), jnp.bfloat16)
    (seq,) = sequences(low)
    assert [s.kind for s in seq.attrs["steps"]] == ["elementwise", "reduce", "elementwise"]
    assert seq.attrs["rows"] == batch
    assert low.compiled.task_kinds[TaskKind.SEQUENCE] == row_tiles(batch)
    assert set(low.compiled.task_kinds) == {TaskKind.SEQUENCE}


def masked_softmax(scores, pos):
    scores = scores.astype(jnp.float32) / np.float32(8.0)
    mask = jnp.arange(scores.shape[-1]) <= pos
    return jax.nn.softmax(jnp.where(mask, scores, jnp.finfo(jnp.float32).min), -1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rows,length", [(32, 499), (7, 512), (256, 384)])
def test_softmax_rows_split_across_tasks(rows, length, backend):
    rng = np.random.default_rng(rows)
    scores = jnp.asarray(rng.standard_normal((rows, length)) * 4, jnp.bfloat16)
    pos = jnp.int32(length // 3)
    compiled, low = lowered(masked_softmax, scores, pos, backend=backend)
    assert_close(compiled(scores, pos), expect(masked_softmax, scores, pos), jnp.float32)
    (seq,) = sequences(low)
    assert seq.attrs["rows"] == rows
    assert sum(s.kind == "reduce" for s in seq.attrs["steps"]) == 2
    assert low.compiled.task_kinds[TaskKind.SEQUENCE] == row_tiles(rows)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_step_reading_another_row_is_not_split(backend):
    """Every row scales by row 0 of the softmax: no row split may hold that step (the
    reference executor would flag the unordered read), and the numbers still match."""
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((32, 500)), jnp.float32)

    def fn(x):
        probs = jax.nn.softmax(x, -1)
        return probs * probs[0]

    compiled, low = lowered(fn, x, backend=backend)
    assert_close(compiled(x), expect(fn, x), jnp.float32)
    split = [seq for seq in sequences(low) if seq.attrs["rows"] > 1]
    assert split
    for seq in split:
        for step in seq.attrs["steps"]:
            assert all(t.strides[0] != 0 for t in step.inputs if t.shape[:1] == (32,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_small_indexing_ops_join_one_task(backend):
    """A table lookup, its use and an in-place cache update: one task, no hops."""
    rng = np.random.default_rng(6)
    table = jnp.asarray(rng.standard_normal((64, 16)), jnp.float32)
    cache = jnp.asarray(rng.standard_normal((32, 16)), jnp.float32)
    x = jnp.asarray(rng.standard_normal((16,)), jnp.float32)
    pos = jnp.int32(9)

    def fn(table, cache, x, pos):
        row = jnp.take(table, pos + jnp.arange(1), axis=0)[0]
        return jax.lax.dynamic_update_slice(cache, (x * row)[None], (pos, 0))

    # Unfolded: a folded append would move the update into the product, which writes at a
    # dynamic row and so stays an op of its own (passes/sequence.py).
    device = dataclasses.replace(SMALL_DEVICE, fold_cache_appends=False)
    compiled = jax_mpk.jit(fn, backend=backend, device=poisoned(device, backend),
                           donate_argnums=(1,))
    low = compiled.lower(table, cache, x, pos)
    expected = expect(fn, table, cache, x, pos)
    assert_close(compiled(table, jnp.array(cache), x, pos), expected, jnp.float32)
    assert set(low.compiled.task_kinds) == {TaskKind.SEQUENCE}
    assert low.program.num_tasks == 1
    assert {TaskKind.GATHER_ROWS, TaskKind.DYNAMIC_UPDATE_SLICE} <= set(low.compiled.kinds_run)


def _with_step_word(blob_program, step, word, value):
    p = blob_program
    task = p.tasks[p.tasks["kind"] == TaskKind.SEQUENCE][0]
    operand = p.operands[int(task["first_operand"])]
    slot = p.slots[int(operand["slot"])]
    at = int(slot["offset"]) + int(operand["offset"]) + 4 * (1 + step * SEQUENCE_STEP_WORDS + word)
    p.constants[at:at + 4] = np.frombuffer(np.int32(value).tobytes(), np.uint8)
    return p.to_bytes()


@pytest.mark.parametrize("word,value,message", [
    (0, int(TaskKind.MATMUL), "which a sequence cannot run"),
    (1, 500, "names operands past"),
    (3, 10**6, "step 1 (reduce): reduce output range"),
])
def test_malformed_sequence_steps_are_rejected(word, value, message):
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 256)), jnp.float32)
    scale = jnp.asarray(np.random.default_rng(1).standard_normal(256), jnp.float32)
    _, low = lowered(rms_norm, x, scale)
    step = 1 if message.startswith("step 1") else 0
    why = runtime.extension().validate_program(_with_step_word(low.program, step, word, value))
    assert message in why, why
