"""The LLM task kinds on the GPU: small functions and the test models through
jax_mpk.jit(backend="megakernel") against jax.jit, at ragged sizes and in every float dtype.

JAX_MPK_TEST_BACKEND=reference runs the same checks on the numpy reference executor, which
checks the tests themselves (and the compiler) on a machine without a GPU."""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jax_mpk
from examples.models.config import FAMILIES
from jax_mpk.program import TaskKind
from jax_mpk.task_kinds import MATMUL_TENSOR_CORES
from jax_mpk.tiling import MAX_TILE_COLUMNS, DeviceSpec
from tests.harness import (
    SMALL_DEVICE,
    assert_close,
    decode_step,
    division_operands,
    divisions,
    expect,
    matmul_descriptors,
    poisoned,
    shift_operands,
    shifts,
)
from tests.test_models import STEPS

BACKEND = os.environ.get("JAX_MPK_TEST_BACKEND", "megakernel")
if BACKEND == "megakernel":
    pytestmark = pytest.mark.gpu

FLOATS = {"f32": jnp.float32, "bf16": jnp.bfloat16, "f16": jnp.float16}
RAGGED = [1, 3, 17, 999]
# The device the GPU has, and a small one whose tiles and split-K chunks are small and ragged.
DEVICES = {"gpu": None, "small": SMALL_DEVICE}


def compile(fn, device=None, donate_argnums=()):
    return jax_mpk.jit(fn, backend=BACKEND, device=poisoned(device, BACKEND),
                       donate_argnums=donate_argnums)


def close(actual, expected, dtype):
    """assert_close, with NaNs and infinities required at the same places and left out of
    the error."""
    def split(a, e):
        a, e = np.asarray(a), np.asarray(e)
        if not np.issubdtype(e.dtype, np.floating) and e.dtype != jnp.bfloat16:
            return a, e
        a32, e32 = a.astype(np.float32), e.astype(np.float32)
        np.testing.assert_array_equal(np.isnan(a32), np.isnan(e32))
        special = ~np.isfinite(e32)
        np.testing.assert_array_equal(np.where(special, a32, 0), np.where(special, e32, 0))
        return np.where(special, 0, a).astype(a.dtype), np.where(special, 0, e).astype(e.dtype)

    pairs = [split(a, e) for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected),
                                         strict=True)]
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    assert_close([a for a, _ in pairs], [e for _, e in pairs], dtype)



def check(fn, *args, dtype=jnp.float32, device=None, kinds=()):
    """fn through the megakernel matches jax.jit within the tolerance of `dtype`; the program
    uses every kind in `kinds`."""
    expected = expect(fn, *args)
    compiled = compile(fn, device)
    close(compiled(*args), expected, dtype)
    used = compiled.lower(*args).compiled.kinds_run
    for kind in kinds:
        assert used[kind], f"{kind.name} not in the program: {dict(used)}"


def normal(rng, shape, dtype, scale=1.0):
    return jnp.asarray(rng.standard_normal(shape) * scale, dtype)


# ELEMENTWISE ------------------------------------------------------------------------------
@pytest.mark.parametrize("device", list(DEVICES))
@pytest.mark.parametrize("dtype", list(FLOATS))
@pytest.mark.parametrize("n", RAGGED)
def test_elementwise_float_chain(n, dtype, device):
    dtype = FLOATS[dtype]
    rng = np.random.default_rng(n)
    x, y = normal(rng, (n, 5), dtype), normal(rng, (5,), dtype)

    def fn(x, y):
        z = jnp.tanh(x) * y + jnp.exp(-x * x) / (1 + jnp.abs(y))
        z = z + jax.nn.sigmoid(x) * lax.rsqrt(1.5 + y * y) - jnp.maximum(x, 0.25) ** 3
        return z.astype(dtype), jax.nn.gelu(x.astype(jnp.float32)).astype(dtype)

    check(fn, x, y, dtype=dtype, device=DEVICES[device], kinds=[TaskKind.ELEMENTWISE])


@pytest.mark.parametrize("n", RAGGED)
def test_elementwise_math_functions_f32(n):
    rng = np.random.default_rng(n + 1)
    x = normal(rng, (n, 3), jnp.float32, 2.0)

    def fn(x):
        a = jnp.abs(x) + 0.1
        return (jnp.log(a), jnp.log1p(a), jnp.expm1(x), jnp.exp2(x), jnp.sqrt(a), jnp.sin(x),
                jnp.cos(x), jnp.floor(x), jnp.ceil(x), jnp.round(x), lax.erf(x), jnp.sign(x),
                jnp.where(x > 0.5, x, -2 * x), jnp.clip(x, -0.5, 0.75), jnp.fmod(x, 0.7),
                jnp.where(x > 0, x, 0.5) ** 2.5, jnp.isfinite(x / (x - x[0, 0])),
                jnp.arange(n)[:, None] * x)

    check(fn, x, kinds=[TaskKind.ELEMENTWISE])


@pytest.mark.parametrize("n", RAGGED)
def test_elementwise_integers_and_bools(n):
    rng = np.random.default_rng(n + 2)
    i = jnp.asarray(rng.integers(-1000, 1000, (n, 4)), jnp.int32)
    j = jnp.asarray(rng.integers(1, 50, (4,)), jnp.int32)
    b = jnp.asarray(rng.integers(0, 2, (n, 4)), bool)

    def fn(i, j, b):
        j = jnp.broadcast_to(j, i.shape)
        q = lax.div(i, j) + lax.rem(i, j) * 3 - (i & 0x5F) ^ (j | 2)
        small = (i % 200).astype(jnp.int8) * 3
        return (q, jnp.where(b & (i > 0), i, -i), ~b | (i < j), small,
                small.astype(jnp.uint8) + 7, (i.astype(jnp.float32) * 0.37).astype(jnp.int32),
                jnp.maximum(i, j) - jnp.minimum(i, -j),
                i.astype(jnp.uint32) * jnp.uint32(2654435761))

    check(fn, i, j, b, kinds=[TaskKind.ELEMENTWISE])


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.uint32, jnp.int8, jnp.uint8, jnp.bool_])
def test_float_to_integer_conversions_saturate_as_xla_does(dtype):
    x = jnp.asarray([1.7, -1.7, 300.0, -300.0, 1e10, -1e10, np.nan, np.inf, -np.inf, 255.9],
                    jnp.float32)
    # x * 1.0: converted in the task, not folded into the load.
    check(lambda x: (x * 1.0).astype(dtype), x, kinds=[TaskKind.ELEMENTWISE])


def test_integer_division_and_remainder_at_xlas_edges():
    for a, b in division_operands():
        check(divisions, a, b, kinds=[TaskKind.ELEMENTWISE])


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.uint32, jnp.int8, jnp.uint8])
def test_shifts_as_xla_shifts(dtype):
    check(shifts, *shift_operands(dtype), kinds=[TaskKind.ELEMENTWISE])


def test_elementwise_transposed_and_broadcast_inputs():
    rng = np.random.default_rng(5)
    x, y = normal(rng, (17, 33), jnp.bfloat16), normal(rng, (33, 1), jnp.float32)
    check(lambda x, y: (x.T * y + 1).astype(jnp.bfloat16), x, y, dtype=jnp.bfloat16,
          kinds=[TaskKind.ELEMENTWISE])


# REDUCE --------------------------------------------------------------------------------
REDUCERS = {"sum": jnp.sum, "max": jnp.max, "min": jnp.min, "argmax": jnp.argmax,
            "argmin": jnp.argmin}


@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16", "i32"])
@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("reducer", list(REDUCERS))
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 17, 5), (2, 999, 3), (5, 3, 999)])
def test_reduce(shape, reducer, axis, dtype):
    rng = np.random.default_rng(sum(shape) + axis)
    if dtype == "i32":
        x = jnp.asarray(rng.integers(-50, 50, shape), jnp.int32)  # ties: the first index wins
        tolerance_dtype = jnp.float32
    else:
        x = normal(rng, shape, FLOATS[dtype])
        tolerance_dtype = FLOATS[dtype]
    reduce = REDUCERS[reducer]
    check(lambda x: reduce(x, axis=axis), x, dtype=tolerance_dtype, device=SMALL_DEVICE)


def test_argmax_of_logits_and_nan_rows():
    rng = np.random.default_rng(7)
    logits = normal(rng, (4, 5003), jnp.bfloat16)
    logits = logits.at[2, 17].set(jnp.nan).at[3, 4000].set(jnp.inf)
    check(lambda x: (jnp.argmax(x, -1), jnp.max(x, -1)), logits, dtype=jnp.bfloat16,
          kinds=[TaskKind.REDUCE])


def test_softmax_and_layer_norm_rows():
    rng = np.random.default_rng(8)
    x = normal(rng, (6, 999), jnp.float32, 3.0)

    def fn(x):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return jax.nn.softmax(x, -1), (x - mean) * lax.rsqrt(var + 1e-5)

    check(fn, x, kinds=[TaskKind.REDUCE, TaskKind.ELEMENTWISE])


# MATMUL --------------------------------------------------------------------------------
@pytest.mark.parametrize("device", list(DEVICES))
@pytest.mark.parametrize("epilogue", ["none", "bias", "residual", "both"])
@pytest.mark.parametrize("dtype", list(FLOATS))
@pytest.mark.parametrize("m", [1, 3, 8, 64])
def test_matmul(m, dtype, epilogue, device):
    dtype = FLOATS[dtype]
    rng = np.random.default_rng(m)
    k, n = 200, 136
    x, w = normal(rng, (m, k), dtype), normal(rng, (k, n), dtype, k ** -0.5)
    b, r = normal(rng, (n,), dtype), normal(rng, (m, n), dtype)

    def fn(x, w, b, r):
        y = x @ w
        if epilogue in ("bias", "both"):
            y = y + b
        if epilogue in ("residual", "both"):
            y = y + r
        return y

    check(fn, x, w, b, r, dtype=dtype, device=DEVICES[device], kinds=[TaskKind.MATMUL])


def _tensor_core_device(device, rows):
    spec = DEVICES[device]
    if spec is None and BACKEND == "megakernel":
        from jax_mpk import runtime

        spec = DeviceSpec.of_cuda_device(runtime.device_info())
    return dataclasses.replace(spec or DeviceSpec(), matmul_tensor_core_rows=rows,
                               matmul_tensor_core_rows_along_k=rows)


@pytest.mark.parametrize("device", list(DEVICES))
@pytest.mark.parametrize("dtype", ["bf16", "f16"])
@pytest.mark.parametrize("m, k, n", [(8, 200, 136), (16, 2048, 128), (33, 999, 40), (64, 130, 24),
                                     (100, 64, 1000), (8, 8192, 2048), (8, 6000, 2048),
                                     (24, 8192, 2048)])
def test_matmul_on_tensor_cores(m, k, n, dtype, device):
    """DeviceSpec.matmul_tensor_core_rows: ragged rows (two passes of 64 at 100), k (partial
    ring stages, several staged chunks of x: at 8 x 8192, the 1B step's down projection, 8 x
    6000, the last chunk ragged, and 24 x 8192) and columns (tiles of 16 to 128 on the small
    device, split K there), with the residual."""
    dtype = FLOATS[dtype]
    rng = np.random.default_rng(m + k)
    x, w = normal(rng, (m, k), dtype), normal(rng, (k, n), dtype, k ** -0.5)
    r = normal(rng, (m, n), dtype)
    spec = _tensor_core_device(device, rows=8)

    def fn(x, w, r):
        return x @ w + r

    check(fn, x, w, r, dtype=dtype, device=spec, kinds=[TaskKind.MATMUL])
    program = compile(fn, spec).lower(x, w, r).program
    assert all(words[8] & MATMUL_TENSOR_CORES for words in matmul_descriptors(program))


@pytest.mark.parametrize("device", list(DEVICES))
@pytest.mark.parametrize("dtype", ["bf16", "f16"])
@pytest.mark.parametrize("m, k, n", [(1, 2048, 1000), (8, 200, 136), (13, 56, 40), (64, 2048, 72),
                                     (3, 2600, 24), (5, 999, 33), (1, 2048, 30000),
                                     (8, 512, 20000)])
def test_matmul_on_tensor_cores_along_k(m, k, n, dtype, device):
    """Weights contiguous along k (a tied LM head) on tensor cores from one row: ragged
    columns and rows (passes of 8 rows at k = 2048), a k step half loaded (200), split K on
    the small device, many 16-column blocks a warp (30000 and 20000 columns, as an LM head
    has); k too long for the arena (2600) or not whole 16-byte loads (999) stays on CUDA
    cores."""
    dtype = FLOATS[dtype]
    rng = np.random.default_rng(m + k + n)
    x, table = normal(rng, (m, k), dtype), normal(rng, (n, k), dtype, k ** -0.5)
    r = normal(rng, (m, n), dtype)
    spec = _tensor_core_device(device, rows=1)

    def fn(x, table, r):
        return x @ table.T + r

    check(fn, x, table, r, dtype=dtype, device=spec, kinds=[TaskKind.MATMUL])
    program = compile(fn, spec).lower(x, table, r).program
    assert all(words[8] & MATMUL_TENSOR_CORES for words in matmul_descriptors(program))


@pytest.mark.parametrize("dtype", list(FLOATS))
@pytest.mark.parametrize("k, n", [(2048, 1000), (2048, 30000), (4096, 2000), (2600, 24), (999, 33),
                                  (56, 40)])
def test_matmul_along_k_from_one_row(k, n, dtype):
    """One row of x against weights contiguous along k, on CUDA cores (a batch-1 tied LM
    head, by_k_pipelined): all of k a task (2048, 4096 on the GPU), split K into ragged chunks
    (2600 x 24), k not whole 16-byte loads (999: the scalar tail), few columns (56 x 40)."""
    dtype = FLOATS[dtype]
    rng = np.random.default_rng(k + n)
    x, table = normal(rng, (1, k), dtype), normal(rng, (n, k), dtype, k ** -0.5)
    r = normal(rng, (1, n), dtype)
    check(lambda x, table, r: x @ table.T + r, x, table, r, dtype=dtype, kinds=[TaskKind.MATMUL])


@pytest.mark.parametrize("device", list(DEVICES))
@pytest.mark.parametrize("dtype", ["bf16", "f16"])
@pytest.mark.parametrize("m, k, n, layout", [(1, 2048, 1000, "along_k"), (1, 999, 33, "along_k"),
                                             (3, 200, 136, "along_n"), (1, 4096, 64, "along_n")])
def test_matmul_result_cast_to_float32(m, k, n, layout, dtype, device):
    """A 16-bit result that only its cast to float32 reads (an LM head's logits) is stored
    as float32 by the matmul, rounded to its dtype first (passes/patterns.fold_output_casts),
    bit for bit as the cast op stores it: by the matmul's tasks (the small device) or, where
    many workers split K over these few columns, by the combine op."""
    dtype = FLOATS[dtype]
    rng = np.random.default_rng(m + k + n)
    x = normal(rng, (m, k), dtype)
    w = normal(rng, (k, n) if layout == "along_n" else (n, k), dtype, k ** -0.5)

    def product(x, w):
        return x @ (w if layout == "along_n" else w.T)

    def cast(x, w):
        return product(x, w).astype(jnp.float32)

    def cast_and_result(x, w):  # the 16-bit result is read twice: no fold
        y = product(x, w)
        return y.astype(jnp.float32), y

    check(cast, x, w, dtype=dtype, device=DEVICES[device], kinds=[TaskKind.MATMUL])
    folded = compile(cast, DEVICES[device])
    ops = folded.lower(x, w).compiled.program.graph.ops
    assert [op.kind for op in ops] == ["matmul"] and ops[0].attrs["round"] == dtype
    unfolded = compile(cast_and_result, DEVICES[device])
    assert "round" not in unfolded.lower(x, w).compiled.program.graph.ops[0].attrs
    np.testing.assert_array_equal(np.asarray(folded(x, w)), np.asarray(unfolded(x, w)[0]))


@pytest.mark.parametrize("device", list(DEVICES))
@pytest.mark.parametrize("dtype", list(FLOATS))
@pytest.mark.parametrize("m", [1, 3])
def test_matmul_tiles_wider_than_the_block(m, dtype, device):
    """Weights contiguous along n, N over the workers above the block's 256 threads (an
    untied LM head: Qwen3-8B's 151936 columns on 132 workers, 1152 a worker; here 304 a
    worker on the GPU, 336 on the small device): the tiles stay at most 256 columns wide, as
    by_columns stores a column a thread, and every column is written."""
    dtype = FLOATS[dtype]
    rng = np.random.default_rng(m)
    k, n = 256, 3000 if device == "small" else 132 * 304
    x, w = normal(rng, (m, k), dtype), normal(rng, (k, n), dtype, k ** -0.5)
    r = normal(rng, (m, n), dtype)

    def fn(x, w, r):
        return x @ w + r

    check(fn, x, w, r, dtype=dtype, device=DEVICES[device], kinds=[TaskKind.MATMUL])
    program = compile(fn, DEVICES[device]).lower(x, w, r).program
    tiles = program.tasks[program.tasks["kind"] == TaskKind.MATMUL]["dims"][:, 3]
    assert tiles.max() <= MAX_TILE_COLUMNS and tiles.sum() == n


@pytest.mark.parametrize("dtype", list(FLOATS))
@pytest.mark.parametrize("k, n", [(1, 1), (3, 17), (17, 3), (999, 24), (4096, 64)])
@pytest.mark.parametrize("m", [1, 3])
def test_matmul_ragged_and_split_k(m, k, n, dtype):
    """Long K with few columns splits K (the small device splits at 16, the GPU at 512)."""
    dtype = FLOATS[dtype]
    rng = np.random.default_rng(k + n)
    x, w = normal(rng, (m, k), dtype), normal(rng, (k, n), dtype, k ** -0.5)
    r = normal(rng, (m, n), dtype)
    for device in DEVICES.values():
        check(lambda x, w, r: x @ w + r, x, w, r, dtype=dtype, device=device,
              kinds=[TaskKind.MATMUL])


@pytest.mark.parametrize("dtype", list(FLOATS))
def test_matmul_transposed_weights_and_batches(dtype):
    """Weights contiguous along k (tied embeddings, q @ k^T) and batched contractions."""
    dtype = FLOATS[dtype]
    rng = np.random.default_rng(11)
    x, table = normal(rng, (4, 48), dtype), normal(rng, (999, 48), dtype, 0.2)
    q, kc = normal(rng, (6, 3, 16), dtype), normal(rng, (6, 13, 16), dtype, 0.25)
    v = normal(rng, (6, 13, 16), dtype)

    def fn(x, table, q, kc, v):
        scores = jnp.einsum("bqd,bkd->bqk", q, kc)
        # k shorter than one 16-byte load, read from rows 16-byte aligned.
        short = x[:, :3] @ table[:, 8:11].T
        return x @ table.T, scores, jnp.einsum("bqk,bkd->bqd", scores, v), short

    check(fn, x, table, q, kc, v, dtype=dtype, device=SMALL_DEVICE, kinds=[TaskKind.MATMUL])


# GATHER_ROWS, DYNAMIC_SLICE, DYNAMIC_UPDATE_SLICE ------------------------------------------
@pytest.mark.parametrize("dtype", list(FLOATS))
@pytest.mark.parametrize("width", [1, 3, 64, 999])
def test_gather_embeddings(width, dtype):
    dtype = FLOATS[dtype]
    rng = np.random.default_rng(width)
    table = normal(rng, (97, width), dtype)
    ids = jnp.asarray(rng.integers(-97, 97, (4, 17)), jnp.int32)  # negative ids wrap
    check(lambda t, i: t[i], table, ids, dtype=dtype, kinds=[TaskKind.GATHER_ROWS])
    wild = jnp.asarray(rng.integers(-200, 200, (5,)), jnp.int32)  # out of range: NaN rows
    check(lambda t, i: jnp.take(t, i, axis=0, mode="fill"), table, wild, dtype=dtype)
    check(lambda t, i: jnp.take(t, i, axis=0, mode="clip"), table, wild, dtype=dtype)


@pytest.mark.parametrize("dtype", list(FLOATS))
@pytest.mark.parametrize("pos", [0, 5, 15, 40, -3])
def test_kv_cache_append(pos, dtype):
    """dynamic_update_slice in place into a donated cache, positions clamped as lax does."""
    dtype = FLOATS[dtype]
    rng = np.random.default_rng(pos + 100)
    cache = normal(rng, (4, 16, 2, 17), dtype)
    new = normal(rng, (4, 1, 2, 17), dtype)

    def append(cache, new, pos):
        return lax.dynamic_update_slice(cache, new, (0, pos, 0, 0))

    expected = expect(append, cache, new, jnp.int32(pos))
    compiled = compile(append, donate_argnums=(0,))
    kinds = compiled.lower(cache, new, jnp.int32(pos)).compiled.task_kinds
    assert TaskKind.DYNAMIC_UPDATE_SLICE in kinds
    assert_close(compiled(jnp.array(cache), new, jnp.int32(pos)), expected, dtype)


@pytest.mark.parametrize("size", [1, 3, 17])
@pytest.mark.parametrize("start", [0, 7, 990, -5])
def test_dynamic_slice(start, size):
    rng = np.random.default_rng(size)
    x = normal(rng, (999, 3, 5), jnp.bfloat16)
    check(lambda x, s: lax.dynamic_slice(x, (s, 1, 0), (size, 2, 5)), x, jnp.int32(start),
          dtype=jnp.bfloat16, kinds=[TaskKind.DYNAMIC_SLICE])
    check(lambda x, s: lax.dynamic_index_in_dim(x, s, 0, keepdims=False), x, jnp.int32(start),
          dtype=jnp.bfloat16)


# Whole decode steps --------------------------------------------------------------------
def _check_model(cfg, api, step_name, donate=True):
    batch, seq = STEPS[step_name]
    step, args = decode_step(cfg, api, batch, seq)
    expected = expect(step, *args)
    compiled = compile(step, SMALL_DEVICE, donate_argnums=(2,) if donate else ())
    cache = jax.tree.map(jnp.copy, args[2])  # donated: the call consumes it, as under jax.jit
    pointers = [leaf.unsafe_buffer_pointer() for leaf in jax.tree.leaves(cache)]
    got = compiled(*args[:2], cache, *args[3:])
    assert_close(got, expected, cfg.dtype)
    if donate:  # updated in place: the new cache lives where the donated one did
        assert [leaf.unsafe_buffer_pointer() for leaf in jax.tree.leaves(got[1])] == pointers
    # The GPU's own tiling too: other tile sizes, no split-K at these sizes.
    assert_close(compile(step)(*args), expected, cfg.dtype)


@pytest.mark.parametrize("step_name", list(STEPS))
@pytest.mark.parametrize("scan_layers", [False, True], ids=["layers", "scan"])
@pytest.mark.parametrize("api", ["linen", "nnx"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_float32_step_matches_jax_jit(family, api, scan_layers, step_name):
    _check_model(FAMILIES[family].replace(scan_layers=scan_layers), api, step_name)


# As tests/test_models.py: f16 decode_b1 misses 1e-3 on the reference executor too.
@pytest.mark.parametrize("step_name", ["decode_b4"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_half_precision_decode_matches_jax_jit(family, dtype, step_name):
    _check_model(FAMILIES[family].replace(dtype=dtype), "linen", step_name)


def test_a_decode_loop_feeds_argmax_back():
    cfg = FAMILIES["llama"]
    step, (params, tokens, cache, _) = decode_step(cfg, "linen", 4, 1)
    compiled = compile(lambda *a: step(*a), SMALL_DEVICE)
    for pos in (0, 5, cfg.max_len - 1):
        logits, cache_out = compiled(params, tokens, cache, jnp.int32(pos))
        expected_logits, expected_cache = expect(step, params, tokens, cache, jnp.int32(pos))
        assert_close((logits, cache_out), (expected_logits, expected_cache), cfg.dtype)
        tokens = jnp.argmax(expected_logits, -1).astype(jnp.int32)
        cache = expected_cache
