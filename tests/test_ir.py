"""Tensor views: which of them share bytes (jax_mpk/ir.py Tensor.overlaps), checked against
the byte sets numpy enumerates, and what the answer buys the dependency planner."""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

import jax_mpk
from jax_mpk.ir import Buffer, Role, Tensor
from jax_mpk.tiling import op_dependencies
from tests.harness import SMALL_DEVICE, assert_close, expect


def touched_bytes(t: Tensor) -> set[int]:
    item = t.dtype.itemsize
    starts = {t.offset + sum(i * s for i, s in zip(index, t.strides, strict=True))
              for index in itertools.product(*(range(n) for n in t.shape))}
    return {e * item + b for e in starts for b in range(item)}


# (shape, strides, offset) pairs over one float32 buffer of 4 x 64 elements.
VIEWS = [
    # RoPE halves of each row: apart.
    (((4, 32), (64, 1), 0), ((4, 32), (64, 1), 32)),
    # Even and odd columns: apart.
    (((4, 32), (64, 2), 0), ((4, 32), (64, 2), 1)),
    # Halves that share a column: overlap.
    (((4, 33), (64, 1), 0), ((4, 32), (64, 1), 32)),
    # Rows 0-1 against rows 1-2: overlap.
    (((2, 64), (64, 1), 0), ((2, 64), (64, 1), 64)),
    # Rows 0-1 against rows 2-3: apart (spans do not meet).
    (((2, 64), (64, 1), 0), ((2, 64), (64, 1), 128)),
    # A column read broadcast across rows (stride 0) against the rest of the row.
    (((4, 8), (0, 1), 0), ((4, 56), (64, 1), 8)),
    # A transposed read against one column: overlap.
    (((64, 4), (1, 64), 0), ((4,), (64,), 5)),
    # Reversed strides count as overlapping whenever the spans meet.
    (((4, 32), (64, -1), 31), ((4, 32), (64, 1), 32)),
]


@pytest.mark.parametrize("a,b", VIEWS)
def test_overlaps_agrees_with_the_bytes_touched(a, b):
    buffer = Buffer(4 * 64 * 4, Role.INTERMEDIATE)
    ta, tb = (Tensor(shape, np.float32, buffer, offset, strides)
              for shape, strides, offset in (a, b))
    shared = bool(touched_bytes(ta) & touched_bytes(tb))
    negative = any(s < 0 for s in ta.strides + tb.strides)
    assert ta.overlaps(tb) == tb.overlaps(ta)
    if negative:
        assert ta.overlaps(tb)  # conservative
    else:
        assert ta.overlaps(tb) == shared


def test_views_of_other_buffers_never_overlap():
    a = Tensor((8,), np.float32, Buffer(32, Role.INTERMEDIATE))
    b = Tensor((8,), np.float32, Buffer(32, Role.INTERMEDIATE))
    assert not a.overlaps(b)


@pytest.mark.parametrize("backend",
                         ["reference", pytest.param("megakernel", marks=pytest.mark.gpu)])
def test_the_halves_of_a_rotation_do_not_wait_for_each_other(backend):
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((8, 4, 64)), jnp.float32)
    cos = jnp.asarray(rng.standard_normal((8, 1, 32)), jnp.float32)
    sin = jnp.asarray(rng.standard_normal((8, 1, 32)), jnp.float32)

    def rotate(x, cos, sin):
        x1, x2 = x[..., :32], x[..., 32:]
        return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

    compiled = jax_mpk.jit(rotate, backend=backend, device=SMALL_DEVICE)
    assert_close(compiled(x, cos, sin), expect(rotate, x, cos, sin), jnp.float32)
    ops = compiled.lower(x, cos, sin).compiled.program.graph.ops
    writers = [i for i, op in enumerate(ops) if op.outputs[0].buffer.role is Role.OUTPUT]
    assert len(writers) == 2
    deps, _ = op_dependencies(ops)
    assert writers[0] not in deps[writers[1]]
