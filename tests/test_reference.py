"""The reference executor: task-kind semantics, random orders, and race detection."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_mpk
from examples.models.config import FAMILIES
from jax_mpk import tiling
from jax_mpk.program import TaskKind
from jax_mpk.reference import RaceError, execute
from jax_mpk.taskgraph import Operand, RuntimeConfig, TaskGraph
from tests.harness import SMALL_DEVICE, assert_close, decode_step

CONFIG = RuntimeConfig(num_workers=4, num_schedulers=1)
DATA = np.arange(64, dtype=np.uint8) * 3


def copy_through_workspace(with_dependency: bool):
    """arg 0 -> workspace -> result 0, two COPY tasks."""
    g = TaskGraph()
    src, dst, tmp = g.arg(0, 64), g.ret(0, 64), g.workspace(64)
    first = g.add_task(TaskKind.COPY, [Operand(tmp, 0, 64), Operand(src, 0, 64)], [64, 0])
    g.add_task(TaskKind.COPY, [Operand(dst, 0, 64), Operand(tmp, 0, 64)], [64, 0],
               deps=[first] if with_dependency else [])
    return g.build(CONFIG, 1, 1).program


@pytest.mark.parametrize("seed", range(4))
def test_copies_in_order_run(seed):
    (out,) = execute(copy_through_workspace(True), [DATA], [((64,), np.uint8)], seed=seed)
    np.testing.assert_array_equal(out, DATA)


@pytest.mark.parametrize("seed", range(4))
def test_a_missing_dependency_is_a_race_in_every_order(seed):
    with pytest.raises(RaceError, match="COPY"):
        execute(copy_through_workspace(False), [DATA], [((64,), np.uint8)], seed=seed)


def test_a_write_unordered_with_an_earlier_read_is_a_race():
    g = TaskGraph()
    src, dst, tmp = g.arg(0, 64), g.ret(0, 64), g.workspace(64)
    fill = g.add_task(TaskKind.COPY, [Operand(tmp, 0, 64), Operand(src, 0, 64)], [64, 0])
    g.add_task(TaskKind.COPY, [Operand(dst, 0, 64), Operand(tmp, 0, 64)], [64, 0], deps=[fill])
    g.add_task(TaskKind.COPY, [Operand(tmp, 0, 64), Operand(src, 0, 64)], [64, 0], deps=[fill])
    with pytest.raises(RaceError, match="no event orders"):
        for seed in range(8):  # the overwrite lands before or after the read
            execute(g.build(CONFIG, 1, 1).program, [DATA], [((64,), np.uint8)], seed=seed)


def test_combine_u32_and_noop():
    g = TaskGraph()
    a, b, out = g.arg(0, 16), g.arg(1, 16), g.ret(0, 16)
    noop = g.add_task(TaskKind.NOOP)
    g.add_task(TaskKind.COMBINE_U32, [Operand(out, 0, 16), Operand(a, 0, 16), Operand(b, 0, 16)],
               [4, 3, -1], deps=[noop])  # add 0xFFFFFFFF
    x = np.array([1, 2, 3, 0xFFFFFFFF], np.uint32)
    y = np.array([10, 20, 30, 1], np.uint32)
    (out,) = execute(g.build(CONFIG, 2, 1).program, [x, y], [((4,), np.uint32)])
    np.testing.assert_array_equal(out, ((x.astype(np.uint64) + y) * 3 + 0xFFFFFFFF) % 2**32)


def test_wait_value_that_never_arrives_is_reported():
    g = TaskGraph()
    flag = g.arg(0, 8)
    g.add_task(TaskKind.WAIT_VALUE, [Operand(flag, 0, 8)], [5, 0])
    program = g.build(CONFIG, 1, 0).program
    execute(program, [np.array([5], np.uint64)], [])
    with pytest.raises(RaceError, match="watchdog"):
        execute(program, [np.array([4], np.uint64)], [])


def test_different_seeds_run_different_orders_with_equal_results():
    step, args = decode_step(FAMILIES["llama"], "linen", 2, 1)
    compiled = jax_mpk.jit(step, backend="reference", device=SMALL_DEVICE)
    c = compiled.lower(*args).compiled
    flat = [np.asarray(x) for x in jax.tree.leaves(args)]
    orders = [[] for _ in range(3)]
    runs = [execute(c.program.program, flat, c.results, c.aliases, seed=s, order=orders[s])
            for s in range(3)]
    assert orders[0] != orders[1] and sorted(orders[0]) == sorted(orders[1])
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            np.testing.assert_array_equal(a, b)


def test_a_graph_without_op_dependencies_is_caught(monkeypatch):
    def fn(x, w):
        return jnp.tanh(x @ w).sum(-1)

    monkeypatch.setattr(tiling, "op_dependencies",
                        lambda ops: ([[] for _ in ops], [0 for _ in ops]))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8)), jnp.float32)
    with pytest.raises(RaceError):
        jax_mpk.jit(fn, backend="reference", device=SMALL_DEVICE)(x, x.T)


def test_auto_backend_without_cuda_uses_the_reference_executor(capsys):
    x = jnp.asarray(np.random.default_rng(1).standard_normal((3, 5)), jnp.float32)
    compiled = jax_mpk.jit(lambda x: jnp.exp(x) * 2)
    assert_close(compiled(x), jnp.exp(x) * 2, np.float32)
    compiled(x)
    assert capsys.readouterr().err.count("reference executor") == 1


def test_megakernel_backend_names_task_kinds_it_lacks(monkeypatch):
    from jax_mpk import runtime

    monkeypatch.setattr(runtime, "implemented_task_kinds", lambda: {"NOOP", "COPY"})
    x = jnp.asarray(np.random.default_rng(2).standard_normal((3, 5)), jnp.float32)
    with pytest.raises(NotImplementedError, match="ELEMENTWISE"):
        jax_mpk.jit(lambda x: jnp.exp(x), backend="megakernel")(x)


def test_intermediates_share_workspace_bytes_once_dead():
    def fn(x, w):
        for _ in range(8):
            x = jnp.tanh(x @ w) * 2.0
        return x

    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((4, 64)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((64, 64)) * 0.1, jnp.float32)
    compiled = jax_mpk.jit(fn, backend="reference", device=tiling.DeviceSpec(sm_count=5))
    assert_close(compiled(x, w), jax.jit(fn)(x, w), np.float32)
    program = compiled.lower(x, w).program
    one = 4 * 64 * 4  # bytes of one intermediate; 15 of them live one after another
    assert program.workspace_bytes - program.control_bytes <= 2 * one
