"""Tensor-parallel compilation on the CPU: per-rank functions with psum/all_gather over the
"tp" axis, compiled once per rank and run together on the reference executor (puts and
signals crossing between ranks, races checked), against jax.jit of the unsharded function."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_mpk
from jax_mpk import program as fmt
from jax_mpk.frontend import UnsupportedError
from jax_mpk.program import TaskKind
from jax_mpk.tensor_parallel import RECEIVE_BUFFER, SIGNAL_BUFFER, bind_symmetric, run_reference
from tests.harness import SMALL_DEVICE, assert_close

# Small collective tiles, so that each allreduce splits into several tiles.
DEVICE = dataclasses.replace(SMALL_DEVICE, collective_tile_bytes=256)
D, H = 64, 128


def ranks(fn, size=2, **kwargs):
    return [jax_mpk.jit(fn, device=DEVICE, tensor_parallel=jax_mpk.TensorParallel("tp", r, size),
                        **kwargs) for r in range(size)]


def mlp_params(dtype, seed=0):
    rng = np.random.default_rng(seed)

    def normal(shape, scale):
        return jnp.asarray(rng.standard_normal(shape) * scale, dtype)

    x = normal((4, D), 1.0)
    return x, normal((D, H), D ** -0.5), normal((H, D), H ** -0.5), normal((D, D), D ** -0.5)


def two_layer(x, w1, w2, w3, psum=lambda y: y):
    """Column-parallel w1, row-parallel w2 (then psum), a replicated w3, residuals."""
    h = x + psum(jax.nn.gelu(x @ w1) @ w2)
    return h + jnp.tanh(h @ w3)


def shard(w1, w2, rank, size):
    n = w1.shape[1] // size
    return w1[:, rank * n:(rank + 1) * n], w2[rank * n:(rank + 1) * n]


@pytest.mark.parametrize("size", [2, 4])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_row_parallel_mlp_with_psum_matches_jax_jit(dtype, size):
    x, w1, w2, w3 = mlp_params(dtype)
    expected = jax.jit(two_layer)(x, w1, w2, w3)
    fns = ranks(lambda x, w1, w2, w3: two_layer(x, w1, w2, w3, lambda y: jax.lax.psum(y, "tp")),
                size)
    args = [(x, *shard(w1, w2, r, size), w3) for r in range(size)]
    outs = run_reference(fns, args)
    for out in outs:
        assert_close(out, expected, dtype)
    # Every rank gets the same bits: the sum runs in float32 in rank order on each.
    np.testing.assert_array_equal(np.asarray(outs[0]), np.asarray(outs[-1]))


def test_the_program_declares_the_job_and_its_symmetric_buffers():
    x, w1, w2, w3 = mlp_params(jnp.float32)

    def fn(x, w1, w2):
        y = jax.lax.psum(x @ w1 @ w2, "tp")
        return jax.lax.psum(y @ w1 @ w2, "tp")

    compiled = [f.compile_for((x, *shard(w1, w2, r, 2)))[0] for r, f in enumerate(ranks(fn))]
    for rank, c in enumerate(compiled):
        program = c.program.program
        assert (program.pe, program.num_pes) == (rank, 2)
        assert c.task_kinds[TaskKind.PUT] == 2 * c.task_kinds[TaskKind.REDUCE]
        tiles = x.nbytes // DEVICE.collective_tile_bytes
        # Two allreduces of x.nbytes: each receives 2 rows and takes 2 signal words a tile.
        assert c.symmetric_buffers == {SIGNAL_BUFFER: 8 * 2 * 2 * tiles,
                                       RECEIVE_BUFFER: 2 * 2 * x.nbytes}
    assert compiled[0].symmetric_buffers == compiled[1].symmetric_buffers
    slots = compiled[0].program.program.slots
    symmetric = slots[slots["source"] == fmt.SlotSource.SYMMETRIC]
    bound = bind_symmetric(compiled[0].program.program, {SIGNAL_BUFFER: 7, RECEIVE_BUFFER: 9})
    bound_symmetric = bound.slots[bound.slots["source"] == fmt.SlotSource.SYMMETRIC]
    assert sorted(set(bound_symmetric["index"])) == [7, 9]
    np.testing.assert_array_equal(bound_symmetric["offset"], symmetric["offset"])


@pytest.mark.parametrize("axis,tiled", [(0, False), (1, False), (0, True), (1, True)])
def test_all_gather_matches_concatenation(axis, tiled):
    x, w1, w2, _ = mlp_params(jnp.float32)
    size = 2

    def fn(x, w1):
        return jnp.tanh(jax.lax.all_gather(x @ w1, "tp", axis=axis, tiled=tiled))

    args = [(x, shard(w1, w2, r, size)[0]) for r in range(size)]
    parts = [jax.jit(lambda x, w: x @ w)(*a) for a in args]
    gathered = jnp.concatenate(parts, axis) if tiled else jnp.stack(parts, axis)
    for out in run_reference(ranks(fn, size), args):
        assert_close(out, jnp.tanh(gathered), jnp.float32)


def test_axis_index_is_the_rank():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((8,)), jnp.float32)
    outs = run_reference(ranks(lambda x: x * (1 + jax.lax.axis_index("tp"))), [(x,), (x,)])
    for rank, out in enumerate(outs):
        np.testing.assert_allclose(np.asarray(out), np.asarray(x) * (1 + rank), rtol=1e-6)


@pytest.mark.parametrize("collective,match", [
    (lambda y: jax.lax.pmax(y, "tp"), r"cannot compile `pmax`: pmax is not supported \(at .*"
                                      r"test_tensor_parallel.py:\d+"),
    (lambda y: jax.lax.psum(y, "dp"), r"`psum`: psum over axes \('dp',\) \(only the "
                                      r"tensor-parallel axis 'tp' is\)"),
    (lambda y: jax.lax.ppermute(y, "tp", [(0, 1), (1, 0)]), r"`ppermute`: ppermute is not"),
])
def test_unsupported_collectives_name_the_primitive_and_line(collective, match):
    from jax_mpk.frontend import build_graph

    x = jnp.asarray(np.random.default_rng(3).standard_normal((4, D)), jnp.float32)
    # Both axes bound, so that jax traces a collective over an axis other than "tp".
    closed = jax.make_jaxpr(lambda x: collective(x * 2), axis_env=[("tp", 2), ("dp", 2)])(x)
    with pytest.raises(UnsupportedError, match=match):
        build_graph(closed, [False], ["x"], jax_mpk.TensorParallel("tp", 0, 2))


def test_a_rank_cannot_run_alone():
    x = jnp.asarray(np.random.default_rng(2).standard_normal((8,)), jnp.float32)
    fn = ranks(lambda x: jax.lax.psum(x, "tp"))[0]
    with pytest.raises(NotImplementedError, match="run_reference"):
        fn(x)


def test_rank_outside_the_job_is_rejected():
    with pytest.raises(ValueError, match="rank 2 of 2"):
        jax_mpk.TensorParallel("tp", 2, 2)


@pytest.mark.parametrize("scan_layers", [False, True], ids=["layers", "scan"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("step_name", ["decode_b1", "prefill"])
def test_llama_decoder_split_over_two_ranks_matches_jax_jit(step_name, dtype, scan_layers):
    from examples.models import linen, tp
    from examples.models.config import FAMILIES
    from tests.harness import decode_step
    from tests.test_models import STEPS

    cfg = FAMILIES["llama"].replace(dtype=dtype, scan_layers=scan_layers)
    step, (params, tokens, cache, pos) = decode_step(cfg, "linen", *STEPS[step_name])
    expected_logits, expected_cache = jax.jit(step)(params, tokens, cache, pos)
    size = 2
    model = linen.Decoder(tp.rank_config(cfg, "tp", size))
    fns = ranks(lambda p, t, c, pos: model.apply(p, t, c, pos), size, donate_argnums=(2,))
    args = [(tp.shard_params(params, r, size), tokens, tp.shard_cache(cache, r, size), pos)
            for r in range(size)]
    graph = fns[0].compile_for(args[0])[0].program.graph
    assert [op.kind for op in graph.ops].count("allreduce") == 2 * cfg.layers  # o and down
    outs = run_reference(fns, args)
    for logits, _ in outs:
        assert_close(logits, expected_logits, dtype)
    caches = jax.tree.map(lambda *parts: jnp.concatenate(parts, -2), *[c for _, c in outs])
    assert_close(caches, expected_cache, dtype)


def test_a_rank_launch_allocates_and_binds_its_symmetric_buffers(monkeypatch):
    """On a GPU, a rank's first launch allocates the buffers its program names (collective,
    in id order) and registers the program bound to their ids; another PE's process is
    refused. The allocator here is a stand-in: NVSHMEM needs a GPU."""
    from jax_mpk import distributed, tensor_parallel

    x, w1, w2, w3 = mlp_params(jnp.float32)
    fns = ranks(lambda x, w1, w2, w3: two_layer(x, w1, w2, w3, lambda y: jax.lax.psum(y, "tp")))
    compiled, _ = fns[1].compile_for((x, *shard(w1, w2, 1, 2), w3))
    allocated = []

    class Buffer:
        def __init__(self, nbytes):
            self.id, self.nbytes = 40 + len(allocated), nbytes
            allocated.append(self)

    monkeypatch.setattr(distributed, "allocate", Buffer)
    monkeypatch.setattr(distributed, "job", lambda: distributed.Job(1, 2, None, 1 << 20))
    registered = tensor_parallel.register_on_symmetric_buffers(compiled)
    assert [(b.id, b.nbytes) for b in allocated] == [
        (40, compiled.symmetric_buffers[SIGNAL_BUFFER]),
        (41, compiled.symmetric_buffers[RECEIVE_BUFFER])]
    slots = registered.program.slots
    named = set(slots["index"][slots["source"] == fmt.SlotSource.SYMMETRIC].tolist())
    assert named == {40, 41} and registered.symmetric_buffers[SIGNAL_BUFFER].id == 40
    monkeypatch.setattr(distributed, "job", lambda: distributed.Job(0, 2, None, 1 << 20))
    with pytest.raises(ValueError, match="rank 1 of 2, but this process is NVSHMEM PE 0"):
        tensor_parallel.register_on_symmetric_buffers(compiled)
