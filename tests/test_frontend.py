"""The jaxpr frontend: every supported primitive, nested jaxprs, views, index folding and
the errors for what is not supported; each checked against jax.jit on random inputs."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jax_mpk
from jax_mpk.frontend import UnsupportedError
from jax_mpk.program import TaskKind
from jax_mpk.tiling import DeviceSpec
from tests.harness import (
    SMALL_DEVICE,
    assert_close,
    division_operands,
    divisions,
    shift_operands,
    shifts,
    steps,
)

RNG = np.random.default_rng(0)


def normal(*shape, dtype=np.float32, scale=1.0):
    return jnp.asarray(RNG.standard_normal(shape) * scale, dtype)


def check(fn, *args, dtype=np.float32, **jit_kwargs):
    compiled = jax_mpk.jit(fn, backend="reference", device=SMALL_DEVICE, **jit_kwargs)
    assert_close(compiled(*args), jax.jit(fn, **jit_kwargs)(*args), dtype)
    return compiled


UNARY = {
    "exp": jnp.exp, "log": lambda x: jnp.log(jnp.abs(x) + 0.1), "tanh": jnp.tanh,
    "logistic": jax.nn.sigmoid, "erf": lax.erf, "rsqrt": lambda x: lax.rsqrt(jnp.abs(x) + 0.1),
    "sqrt": lambda x: jnp.sqrt(jnp.abs(x)), "pow": lambda x: jnp.abs(x) ** 1.7,
    "integer_pow": lambda x: x ** 3, "reciprocal": lambda x: 1 / (jnp.abs(x) + 0.5),
    "gelu_exact": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_tanh": jax.nn.gelu, "silu": jax.nn.silu,
    "neg_abs_sign": lambda x: -jnp.abs(x) * jnp.sign(x),
    "sin_cos": lambda x: jnp.sin(x) + jnp.cos(x),
    "floor_ceil": lambda x: jnp.floor(x) + jnp.ceil(x),
    "round_halves": lambda x: jnp.round(jnp.floor(x * 4) / 2)  # to even
    + 10 * lax.round(jnp.floor(x * 4) / 2, lax.RoundingMethod.AWAY_FROM_ZERO),
    "expm1_log1p": lambda x: jnp.expm1(x) + jnp.log1p(jnp.abs(x)),
    "clip": lambda x: jnp.clip(x, -0.5, 0.5), "square": jnp.square,
    "is_finite": lambda x: jnp.where(jnp.isfinite(x / (x - x[0, 0])), x, 0.0),
}


@pytest.mark.parametrize("name", list(UNARY))
def test_elementwise_math(name):
    check(UNARY[name], normal(6, 10))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_elementwise_dtypes_and_conversions(dtype):
    def fn(x, y):
        z = (x * y + 1).astype(jnp.float32)
        return jnp.maximum(z, 0).astype(dtype), (x > y).astype(jnp.int32), jnp.where(x < 0, x, y)

    check(fn, normal(5, 7, dtype=dtype), normal(5, 7, dtype=dtype), dtype=dtype)


def test_integer_arithmetic_and_comparisons():
    def fn(a, b):
        which = (a > 0).astype(jnp.int32)
        return a // b, a % b, jnp.minimum(a, b), (a == b) | (a > 3), lax.select_n(which, a, b)

    a = jnp.asarray(RNG.integers(-20, 20, (4, 9)), jnp.int32)
    b = jnp.asarray(RNG.integers(1, 6, (4, 9)), jnp.int32)
    check(fn, a, b)


@pytest.mark.parametrize("axes", [(0,), (1,), (2,), (0, 2), (1, 2), (0, 1, 2)])
def test_reductions(axes):
    def fn(x):
        return x.sum(axes), x.max(axes), x.min(axes)

    check(fn, normal(3, 5, 7))


def test_argmax_and_softmax():
    check(lambda x: (jnp.argmax(x, -1), jnp.argmin(x, 0), jax.nn.softmax(x, -1)), normal(6, 33))


DOTS = {
    "linear": ("bk,kn->bn", (3, 24), (24, 10)),
    "linear_3d": ("bsk,kn->bsn", (2, 3, 24), (24, 10)),
    "transposed_weight": ("bk,nk->bn", (3, 24), (10, 24)),
    "heads_out": ("bsk,khd->bshd", (2, 1, 24), (24, 4, 8)),
    "heads_in": ("bshd,hdn->bsn", (2, 1, 4, 8), (4, 8, 16)),
    "scores": ("bshd,bthd->bhst", (2, 3, 4, 8), (2, 11, 4, 8)),
    "values": ("bhst,bthd->bshd", (2, 4, 3, 11), (2, 11, 4, 8)),
    "grouped": ("bskgd,btkd->bkgst", (1, 2, 2, 3, 8), (1, 11, 2, 8)),
}


@pytest.mark.parametrize("name", list(DOTS))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dot_general_layouts(name, dtype):
    spec, x_shape, w_shape = DOTS[name]
    check(lambda x, w: jnp.einsum(spec, x, w), normal(*x_shape, dtype=dtype),
          normal(*w_shape, dtype=dtype), dtype=dtype)


def test_split_k_matmul_with_bias_and_residual():
    def fn(x, w, b, r):
        return r + (x @ w + b)

    check(fn, normal(2, 256), normal(256, 8, scale=0.1), normal(8), normal(2, 8))


def test_views_and_copies():
    def fn(x):
        a = x.T.reshape(4, 15)[:, 1:12:2]
        b = jnp.concatenate([x[:, :2], -x[:, 3:]], axis=1)
        c = jnp.pad(x, ((1, 0), (0, 2)))
        d = jnp.broadcast_to(x[:, None, :1], (6, 3, 2)).squeeze()
        e = jnp.expand_dims(x, 1).transpose(2, 1, 0).reshape(10, 6)
        f = jnp.stack([x[:, ::2], jnp.tanh(x[:, 1::2])], axis=-1)
        g = jnp.stack([x, -x, x.T.reshape(6, 10)])
        return a, b, c, d, e, f, g

    check(fn, normal(6, 10))


def test_stepped_views_fuse_both_ways():
    """A producer read with a step (x[..., ::2]) is computed inside its reader, and a
    reader of a buffer written with a step (the two halves of a stack) inside its writers."""
    def fn(x):
        y = jnp.exp(x)
        pairs = jnp.stack([y[:, ::2] * 2.0, y[:, 1::2] - 1.0], axis=-1)
        return pairs.reshape(x.shape).astype(jnp.bfloat16)

    compiled = check(fn, normal(4, 16), dtype=jnp.bfloat16)
    ops = compiled.lower(normal(4, 16)).compiled.program.graph.ops
    assert [op.kind for op in ops] == ["elementwise", "elementwise"], ops


@pytest.mark.parametrize("index", [-1, 0, 1, 2, 7])  # lax.switch clamps it into range
def test_cond_and_switch_select_the_taken_branch(index):
    def fn(x, w, i):
        cond = lax.cond(i > 0, lambda a: jnp.tanh(a @ w), lambda a: a * 2.0 - 1.0, x)
        switch = lax.switch(i, [lambda a: a, lambda a: -a, jnp.exp], x.sum(1))
        # The branch not taken is computed too: its infinities must not leak.
        finite = lax.cond(i >= -1, lambda a: a + 1.0, lambda a: 1.0 / (a - a), x)
        return cond, switch, finite

    check(fn, normal(3, 8), normal(8, 8, scale=0.3), jnp.int32(index))


def test_float_to_integer_conversions_saturate_as_xla_does():
    x = jnp.asarray([1.7, -1.7, 300.0, -300.0, 1e10, -1e10, np.nan, np.inf, -np.inf, 255.9],
                    jnp.float32)
    for dtype in (jnp.int32, jnp.uint32, jnp.int8, jnp.uint8, jnp.bool_):
        check(lambda x, dtype=dtype: (x * 1.0).astype(dtype), x)


def test_integer_division_and_remainder_at_xlas_edges():
    for a, b in division_operands():
        check(divisions, a, b)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.uint32, jnp.int8, jnp.uint8])
def test_shifts_as_xla_shifts(dtype):
    check(shifts, *shift_operands(dtype))


def test_a_linear_of_packed_int4_weights():
    def linear(x, packed, scale):  # two 4-bit weights a byte, low nibble first, offset 8
        nibbles = jnp.stack([packed & 15, packed >> 4], -1).reshape(packed.shape[0], -1)
        return x @ ((nibbles.astype(jnp.float32) - 8) * scale)

    packed = jnp.asarray(RNG.integers(0, 256, (64, 16)), jnp.uint8)
    check(linear, normal(3, 64), packed, normal(32, scale=0.05))


def test_a_dtype_the_tasks_lack_is_named_before_launch():
    with pytest.raises(UnsupportedError, match="argument arg0 is of dtype int16"):
        jax_mpk.jit(lambda x: x * 2, backend="reference")(jnp.ones(4, jnp.int16))
    with pytest.raises(UnsupportedError, match="`convert_element_type`: a result of dtype int16"):
        jax_mpk.jit(lambda x: x.astype(jnp.int16) * 2, backend="reference")(normal(4))


def test_iota_and_masks():
    def fn(x, pos):
        mask = jnp.arange(x.shape[1])[None, :] <= pos + jnp.arange(x.shape[0])[:, None]
        return jnp.where(mask, x, -1e9)

    check(fn, normal(3, 12), jnp.int32(4))


def test_embedding_gather_and_dynamic_slices():
    def fn(table, ids, cache, update, pos):
        rows = jnp.take(table, ids, axis=0)
        window = lax.dynamic_slice(cache, (0, pos, 0), (2, 3, 4))
        cache = lax.dynamic_update_slice(cache, update, (0, pos, 0))
        return rows, window, cache

    ids = jnp.asarray(RNG.integers(0, 20, (2, 3)), jnp.int32)
    for pos in (0, 5, 9, -2):  # a position past the end clamps; a negative one wraps
        check(fn, normal(20, 4), ids, normal(2, 10, 4), normal(2, 1, 4), jnp.int32(pos))


def test_negative_index_wrap_is_folded_into_the_task():
    def fn(cache, update, pos):
        return lax.dynamic_update_slice(cache, update, (pos, 0))

    compiled = check(fn, normal(8, 4), normal(1, 4), jnp.int32(3))
    graph = compiled.lower(normal(8, 4), normal(1, 4), jnp.int32(3)).compiled.program.graph
    ops = steps(graph)
    assert [op.kind for op in ops] == ["elementwise", "dynamic_update_slice"]
    assert ops[1].attrs["wrap_mask"] == 1


def test_nested_jaxprs_are_inlined():
    @jax.custom_jvp
    def softplus(x):
        return jnp.logaddexp(x, 0.0)

    softplus.defjvp(lambda primals, tangents: (softplus(primals[0]), tangents[0]))

    @jax.custom_vjp
    def double(x):
        return 2 * x

    double.defvjp(lambda x: (2 * x, None), lambda _, g: (2 * g,))

    @jax.jit
    def inner(x):
        return jax.checkpoint(lambda y: softplus(double(y)) * jax.nn.relu(y))(x)

    check(lambda x: inner(x) + 1, normal(4, 5))


@pytest.mark.parametrize("reverse", [False, True])
def test_scan_is_unrolled(reverse):
    def fn(carry, xs, w):
        def body(c, x):
            c = jnp.tanh(c @ w + x)
            return c, c.sum(-1)

        return lax.scan(body, carry, xs, reverse=reverse)

    check(fn, normal(2, 8), normal(5, 2, 8), normal(8, 8, scale=0.3))


def test_constants_are_uploaded_with_the_program():
    table = np.asarray(RNG.standard_normal((64, 16)), np.float32)
    compiled = check(lambda x: x * jnp.asarray(table)[3:5], normal(2, 16))
    assert compiled.lower(normal(2, 16)).program.constant_bytes >= table.nbytes


def test_pytrees_static_arguments_and_caching():
    def fn(params, x, activation):
        y = x @ params["w"] + params["b"]
        return {"y": getattr(jax.nn, activation)(y), "sum": [y.sum()]}

    params = {"w": normal(6, 3), "b": normal(3)}
    compiled = check(fn, params, normal(4, 6), "gelu", static_argnums=(2,))
    compiled(params, normal(4, 6), "gelu")
    compiled(params, normal(5, 6), "gelu")
    compiled(params, normal(5, 6), "silu")
    assert len(compiled._cache) == 3


def test_unsupported_primitive_names_primitive_source_and_alternatives():
    def fn(x):
        return jnp.cumsum(x, axis=0)

    with pytest.raises(UnsupportedError) as error:
        jax_mpk.jit(fn, backend="reference")(normal(4))
    message = str(error.value)
    assert "cumsum" in message
    assert f"test_frontend.py:{fn.__code__.co_firstlineno + 1} " in message
    assert "Supported primitives:" in message and "dot_general" in message


def test_unsupported_gather_form_is_an_error():
    def fn(x, idx):
        return x[idx, idx]

    with pytest.raises(UnsupportedError, match="gather"):
        jax_mpk.jit(fn, backend="reference")(normal(4, 4), jnp.asarray([1, 2], jnp.int32))


def test_matmul_tiles_follow_the_device():
    def fn(x, w):
        return x @ w

    x, w = normal(4, 512), normal(512, 64, scale=0.05)
    lowered = {}
    for name, device in {"many_sms": DeviceSpec(sm_count=64, min_split_k=64),
                         "few_sms": DeviceSpec(sm_count=5, min_split_k=64)}.items():
        compiled = jax_mpk.jit(fn, backend="reference", device=device)
        assert_close(compiled(x, w), x @ w, np.float32)
        lowered[name] = compiled.lower(x, w).compiled.task_kinds[TaskKind.MATMUL]
    # Tiles of whole columns, one per worker where N allows, at least 16 columns: four.
    # 64 workers: K split in eight chunks of 64 (min_split_k) too; 5 workers: no split.
    assert (lowered["many_sms"], lowered["few_sms"]) == (32, 4)


def test_tensor_cores_are_asked_for_from_the_row_threshold():
    from jax_mpk.task_kinds import MATMUL_TENSOR_CORES
    from tests.harness import matmul_descriptors

    def asked(m, dtype, rows, along_k=0, transposed=False):
        x, w = normal(m, 64).astype(dtype), normal(64, 32, scale=0.1).astype(dtype)
        device = DeviceSpec(sm_count=4, matmul_tensor_core_rows=rows,
                            matmul_tensor_core_rows_along_k=along_k)
        fn, w = ((lambda x, w: x @ w.T), w.T.copy()) if transposed else (jnp.matmul, w)
        program = jax_mpk.jit(fn, backend="reference", device=device).lower(x, w).program
        return {bool(words[8] & MATMUL_TENSOR_CORES) for words in matmul_descriptors(program)}

    assert asked(8, jnp.bfloat16, 8) == asked(9, jnp.float16, 8) == {True}
    assert asked(7, jnp.bfloat16, 8) == asked(8, jnp.float32, 8) == {False}
    assert asked(64, jnp.bfloat16, 0) == {False}
    # Weights contiguous along k have their own threshold.
    assert asked(8, jnp.bfloat16, 8, transposed=True) == {False}
    assert asked(1, jnp.bfloat16, 0, along_k=1, transposed=True) == {True}


def test_matmul_streams_the_bigger_operand():
    """Many rows of x against a few columns of w (attention scores over a cache): the
    tiles swap the operands and write the output transposed."""
    def fn(x, w, residual):
        return x @ w + residual

    x, w, residual = normal(256, 96), normal(96, 3, scale=0.1), normal(256, 3)
    device = DeviceSpec(sm_count=16)
    compiled = jax_mpk.jit(fn, backend="reference", device=device)
    assert_close(compiled(x, w, residual), x @ w + residual, np.float32)
    assert compiled.lower(x, w, residual).compiled.task_kinds[TaskKind.MATMUL] >= 8


def test_duplicate_lookups_are_computed_once():
    """RoPE looks its tables up once for q and once for k: the second lookup goes; a lookup
    after the table changed stays."""
    def fn(table, ids, x, y):
        a = jnp.take(table, ids, axis=0) * x
        b = jnp.take(table, ids, axis=0) + y
        table = lax.dynamic_update_slice(table, x[:1], (ids[1], 0))
        return a, b, jnp.take(table, ids, axis=0)

    table, x, y = normal(50, 8), normal(3, 8), normal(3, 8)
    ids = jnp.asarray([4, 0, 49], jnp.int32)
    compiled = check(fn, table, ids, x, y)
    ops = steps(compiled.lower(table, ids, x, y).compiled.program.graph)
    assert sum(op.kind == "gather_rows" for op in ops) == 2


@pytest.mark.parametrize("swap", [False, True], ids=["streams_w", "streams_x"])
def test_matmul_writes_into_the_layout_its_copy_wanted(swap):
    """A batched matmul whose result is transposed (attention's values, heads moved next to
    the sequence) writes the transposed layout itself: no copy op remains."""
    def fn(p, v):
        out = jnp.einsum("bkgst,btkd->bskgd", p, v)
        return out.reshape(out.shape[0], out.shape[1], -1) * 2.0

    d = 64 if swap else 8  # 64 rows of the cache against 4 heads: the tiles swap them
    p, v = normal(2, 3, 4, 1, 40), normal(2, 40, 3, d, scale=0.3)
    compiled = check(fn, p, v)
    ops = compiled.lower(p, v).compiled.program.graph.ops
    assert [op.kind for op in ops] == ["matmul", "elementwise"]
    assert "out_strides" in ops[0].attrs


def test_matmul_writes_its_transpose_into_a_concatenation_with_split_k():
    """The copy's destination spreads wider than the matmul's result (half of a
    concatenation): split-K's partials stay compact, the combine stores through the strides."""
    def fn(x, w, y):
        return jnp.concatenate([(x @ w).T, y], axis=1)

    x, w, y = normal(3, 256), normal(256, 8, scale=0.1), normal(8, 5)
    compiled = check(fn, x, w, y)
    ops = compiled.lower(x, w, y).compiled.program.graph.ops
    matmul = next(op for op in ops if op.kind == "matmul")
    assert matmul.attrs["out_strides"] == (0, 1, 8)
    assert compiled.lower(x, w, y).compiled.task_kinds[TaskKind.ELEMENTWISE] >= 1  # combine


def test_elementwise_fusion_copies_cheap_producers_and_reads_slices():
    """A convert read by two ops is computed inside both; halves of a result (a split)
    are read in place; an op reading a concatenation whole runs inside the ops writing its
    pieces; a long producer is copied into two readers of its size, not into three."""
    def norm_like(x, scale):
        xf = x.astype(jnp.float32)
        return (xf * lax.rsqrt(jnp.mean(xf * xf, -1, keepdims=True) + 1e-6) * scale).astype(x.dtype)

    def rope_like(x, cos, sin):
        x1, x2 = jnp.split(x.astype(jnp.float32) * 1.5, 2, axis=-1)
        return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

    def shared_long(x, readers):
        y = jnp.tanh(jnp.exp(x) * 0.5 + jnp.sin(x))
        return tuple(y * float(i + 2) for i in range(readers))

    x, scale = normal(3, 64, dtype=jnp.bfloat16), normal(64)
    compiled = check(norm_like, x, scale, dtype=jnp.bfloat16)
    ops = steps(compiled.lower(x, scale).compiled.program.graph)
    assert [op.kind for op in ops] == ["elementwise", "reduce", "elementwise"]
    q, cos, sin = normal(2, 4, 16), normal(1, 8), normal(1, 8)
    ops = steps(check(rope_like, q, cos, sin).lower(q, cos, sin).compiled.program.graph)
    assert [op.kind for op in ops] == ["elementwise"] * 2  # the halves; their concat
    # The cast after the concatenation happens inside the halves too.
    q16 = q.astype(jnp.bfloat16)
    cast = check(lambda *a: rope_like(*a).astype(jnp.bfloat16), q16, cos, sin,
                 dtype=jnp.bfloat16)
    ops = steps(cast.lower(q16, cos, sin).compiled.program.graph)
    assert [op.kind for op in ops] == ["elementwise"] * 2
    # A qk-norm's scaled heads, read twice by each RoPE half, are computed inside both
    # halves: the layer waits for the sums of squares, then the rotation.
    x16 = normal(2, 4, 16, dtype=jnp.bfloat16)
    qk_norm_rope = check(lambda x, s, c, n: rope_like(norm_like(x, s), c, n), x16, normal(16),
                         cos, sin, dtype=jnp.bfloat16)
    ops = steps(qk_norm_rope.lower(x16, normal(16), cos, sin).compiled.program.graph)
    assert [op.kind for op in ops] == ["elementwise", "reduce", "elementwise", "elementwise"]
    y = normal(5, 7)
    for readers, expected_ops in ((2, 2), (3, 4)):
        fn = functools.partial(shared_long, readers=readers)
        assert len(steps(check(fn, y).lower(y).compiled.program.graph)) == expected_ops


def test_only_weights_no_task_writes_are_prefetched():
    """A matmul may load its weights before its inputs are ready only when no task writes
    them: parameters yes; a donated buffer that the function updates (a KV cache) never."""
    from jax_mpk.program import TASK_PREFETCH

    def fn(x, weights, state):
        updated = lax.dynamic_update_slice(state, x[:1], (0, 0))
        return jnp.tanh(x) @ weights, jnp.tanh(x) @ state, updated

    x, weights, state = normal(2, 64), normal(64, 64, scale=0.1), normal(64, 64, scale=0.1)
    lowered = jax_mpk.jit(fn, backend="reference", device=SMALL_DEVICE,
                          donate_argnums=(2,)).lower(x, weights, state)
    compiled = lowered.compiled.program
    prefetched = {True: set(), False: set()}
    for flags, record in zip(lowered.program.tasks["flags"], compiled.tasks, strict=True):
        if record.kind == TaskKind.MATMUL:
            weight = compiled.graph.ops[record.op].inputs[1].buffer
            prefetched[bool(flags & TASK_PREFETCH)].add(weight.name)
    assert prefetched == {True: {"arg1"}, False: {"arg2"}}, prefetched
    unflagged = jax_mpk.jit(fn, backend="reference", donate_argnums=(2,),
                            device=dataclasses.replace(SMALL_DEVICE, prefetch=False))
    assert not any(unflagged.lower(x, weights, state).program.tasks["flags"] & TASK_PREFETCH)


@pytest.mark.parametrize("defer_errors", [False, True])
def test_defer_errors_reaches_the_program_header(defer_errors):
    from jax_mpk.program import PROGRAM_DEFER_ERRORS

    device = dataclasses.replace(SMALL_DEVICE, defer_errors=defer_errors)
    x = normal(4, 8)
    lowered = jax_mpk.jit(jnp.tanh, backend="reference", device=device).lower(x)
    assert bool(lowered.program.header["flags"] & PROGRAM_DEFER_ERRORS) == defer_errors
