"""Sibling matmuls (q, k and v of one normed x) are tiled together: one column width from
the group's columns, and split-K only when the whole group leaves half the workers idle."""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_mpk
from jax_mpk.program import TaskKind
from jax_mpk.tiling import DeviceSpec
from tests.harness import assert_close, expect

DEVICE = DeviceSpec(sm_count=16)  # 16 workers, tiles of 16 columns, K split in chunks >= 64
K = 256


def _inputs(columns, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((2, K)), dtype)
    ws = [jnp.asarray(rng.standard_normal((K, n)) / np.sqrt(K), dtype) for n in columns]
    return x, ws


def _projections(x, ws):
    h = x.astype(jnp.float32)
    h = (h * jax.lax.rsqrt(jnp.mean(h * h, -1, keepdims=True) + 1e-6)).astype(x.dtype)
    return tuple(h @ w for w in ws)


def _compile_and_check(fn, args, dtype):
    compiled = jax_mpk.jit(fn, backend="reference", device=DEVICE)
    assert_close(compiled(*args), expect(fn, *args), dtype)
    cp = compiled.lower(*args).compiled.program
    kinds = collections.defaultdict(collections.Counter)  # op index -> task kind -> tasks
    for record in cp.tasks:
        kinds[record.op][record.kind] += 1
    matmuls = [i for i, op in enumerate(cp.graph.ops) if op.kind == "matmul"]
    return cp.graph, matmuls, kinds


def _joint_tiles(columns, workers, unit=16):
    """The rule, restated: one width from the group's columns, ~one tile per worker."""
    per_worker = -(-sum(columns) // workers)
    row = max(unit, -(-per_worker // unit) * unit)
    tiles = [-(-n // row) for n in columns]
    splits = 1
    if 2 * sum(tiles) <= workers:
        splits = min(workers // sum(tiles), K // DEVICE.min_split_k, DEVICE.max_split_k)
    return tiles, splits


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("columns, tiles, splits", [
    ((512, 128, 128), (11, 3, 3), 1),  # 48-column tiles, 17 of them: no split-K
    ((64, 32, 32), (4, 2, 2), 2),  # 8 tiles leave half the 16 workers idle: K in halves
])
def test_sibling_matmuls_share_the_workers(columns, tiles, splits, dtype):
    assert _joint_tiles(columns, DEVICE.workers) == (list(tiles), splits)
    x, ws = _inputs(columns, dtype)
    graph, matmuls, kinds = _compile_and_check(lambda x, *ws: _projections(x, ws),
                                               (x, *ws), dtype)
    assert len(matmuls) == 3
    for i, n_tiles in zip(matmuls, tiles, strict=True):
        assert graph.ops[i].attrs["group_columns"] == columns
        assert kinds[i][TaskKind.MATMUL] == n_tiles * splits
        # A split op sums its partials in an elementwise stage of its own; an unsplit one
        # has none.
        assert (TaskKind.ELEMENTWISE in kinds[i]) == (splits > 1)


def test_a_small_matmul_alone_still_splits_k():
    """What the group avoids: a 128-column matmul alone fills 8 of the 16 workers."""
    x, (w,) = _inputs((128,), jnp.float32)
    graph, (i,), kinds = _compile_and_check(lambda x, w: _projections(x, [w]), (x, w),
                                            jnp.float32)
    assert "group_columns" not in graph.ops[i].attrs
    assert kinds[i][TaskKind.MATMUL] == 8 * 2 and TaskKind.ELEMENTWISE in kinds[i]


def test_dependent_or_different_x_matmuls_are_not_siblings():
    """b's weights depend on a's result, and c reads a slice of x: a and b, both reading x,
    must not share the workers (b runs after a); nor c, which reads other bytes."""
    x, (wa, wb, wc) = _inputs((128, 128, 64), jnp.float32, seed=1)

    def fn(x, wa, wb, wc):
        a = x @ wa
        b = x @ (wb * jnp.tanh(a[0, :])[None, :])
        c = x[:, : K // 2] @ wc[: K // 2]
        return a, b, c

    graph, matmuls, _ = _compile_and_check(fn, (x, wa, wb, wc), jnp.float32)
    assert len(matmuls) == 3
    assert all("group_columns" not in graph.ops[i].attrs for i in matmuls)
