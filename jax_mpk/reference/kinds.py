"""Numpy semantics of every task kind, one function each, on a task's operands."""

from __future__ import annotations

import numpy as np
from scipy import special

from jax_mpk.program import TaskKind
from jax_mpk.reference.memory import RaceError, TaskAccess
from jax_mpk.task_kinds import (
    ATTENTION_MERGE,
    ATTENTION_PARTIAL,
    ATTENTION_WHOLE,
    MATMUL_GATE,
    MATMUL_NORM,
    MATMUL_ROUND_BF16,
    MATMUL_ROUND_F16,
    SEQUENCE_STEP_WORDS,
    SHIFTS,
    DType,
    ElementwiseProgram,
    Opcode,
    Reducer,
    const_value,
    is_float,
    numpy_dtype,
)

F32 = np.dtype(np.float32)
I32 = np.dtype(np.int32)


def _words(ctx: TaskAccess, i: int) -> np.ndarray:
    n = ctx.operands[i][2] // 4
    return ctx.load(i, I32, np.arange(n))


def _bytes(nbytes: int) -> np.ndarray:
    return np.arange(nbytes)


def noop(ctx, dims):
    pass


def copy(ctx, dims):
    n = int(dims[0]) | int(dims[1]) << 31
    ctx.store(0, np.uint8, _bytes(n), ctx.load(1, np.uint8, _bytes(n)))


def combine_u32(ctx, dims):
    n, mul, add = (int(d) for d in dims[:3])
    total = np.zeros(n, np.uint64)
    for i in range(1, ctx.num_operands):
        total += ctx.load(i, np.uint32, np.arange(n)).astype(np.uint64)
    ctx.store(0, np.uint32, np.arange(n), (total * np.uint64(mul & 0xFFFFFFFF)
                                           + np.uint64(add & 0xFFFFFFFF)) & 0xFFFFFFFF)


def wait_value(ctx, dims):
    value = (int(dims[0]) & 0xFFFFFFFF) | (int(dims[1]) & 0xFFFFFFFF) << 32
    flag = int(ctx.load(0, np.uint64, [0])[0])
    if flag < value:
        raise RaceError(f"{ctx.label} waits for a flag of {value} that holds {flag}: "
                        "on a device it would spin until the watchdog fires")


# NVSHMEM ----------------------------------------------------------------------------------
def put(ctx, dims):
    """dst (a symmetric buffer) in PE dims[2]'s copy = src."""
    n = (int(dims[0]) & 0xFFFFFFFF) | (int(dims[1]) & 0xFFFFFFFF) << 32
    data = ctx.load(1, np.uint8, _bytes(n))
    ctx.on_pe(0, int(dims[2])).store(0, np.uint8, _bytes(n), data)


def signal_wait(ctx, dims):
    """Nothing to compute: the executor runs it only once its signal word counted
    dims[1] signals, and orders it after the tasks that signalled."""


# Elementwise -----------------------------------------------------------------------------
_FLOAT_UNARY = {
    Opcode.EXP: np.exp, Opcode.EXP2: np.exp2, Opcode.LOG: np.log, Opcode.LOG1P: np.log1p,
    Opcode.EXPM1: np.expm1, Opcode.TANH: np.tanh, Opcode.ERF: special.erf,
    Opcode.ERFC: special.erfc, Opcode.SQRT: np.sqrt, Opcode.SIN: np.sin, Opcode.COS: np.cos,
    Opcode.TAN: np.tan, Opcode.CBRT: np.cbrt, Opcode.FLOOR: np.floor, Opcode.CEIL: np.ceil,
    Opcode.RSQRT: lambda x: 1 / np.sqrt(x), Opcode.LOGISTIC: lambda x: 1 / (1 + np.exp(-x)),
}
_ANY_UNARY = {Opcode.NEG: np.negative, Opcode.ABS: np.abs, Opcode.SIGN: np.sign,
              Opcode.SQUARE: np.square, Opcode.IS_FINITE: np.isfinite}
_BINARY = {
    Opcode.ADD: np.add, Opcode.SUB: np.subtract, Opcode.MUL: np.multiply,
    Opcode.POW: np.power, Opcode.MAX: np.maximum, Opcode.MIN: np.minimum,
    Opcode.EQ: np.equal, Opcode.NE: np.not_equal, Opcode.LT: np.less, Opcode.LE: np.less_equal,
    Opcode.GT: np.greater, Opcode.GE: np.greater_equal,
}
_BITWISE = {Opcode.AND: (np.logical_and, np.bitwise_and), Opcode.OR: (np.logical_or,
            np.bitwise_or), Opcode.XOR: (np.logical_xor, np.bitwise_xor)}


def shift(op: Opcode, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a shifted by b as XLA shifts (task_kinds.Opcode.SHIFT_*), in a's integer dtype."""
    dtype, bits = a.dtype, 8 * a.dtype.itemsize
    unsigned, signed = np.dtype(f"u{a.dtype.itemsize}"), np.dtype(f"i{a.dtype.itemsize}")
    amount = b.astype(np.int64)
    past = (amount < 0) | (amount >= bits)
    n = np.where(past, 0, b).astype(np.uint64)
    if op == Opcode.SHIFT_RIGHT_ARITHMETIC:
        value = a.view(signed).astype(np.int64)
        return np.where(past, np.where(value < 0, -1, 0), value >> n.astype(np.int64)) \
            .astype(signed).view(dtype)
    value = a.view(unsigned).astype(np.uint64)
    moved = value << n if op == Opcode.SHIFT_LEFT else value >> n
    return np.where(past, 0, moved).astype(unsigned).view(dtype)


def cast(values: np.ndarray, dtype) -> np.ndarray:
    """values as dtype, as XLA's convert (CONVERT): a float becomes an integer toward zero,
    saturated at the integer dtype's range, NaN as 0 (numpy's astype wraps or is undefined
    there). Stores of integer arithmetic wrap, as astype does."""
    dtype = np.dtype(dtype)
    if is_float(values.dtype) and dtype.kind in "iu":
        info = np.iinfo(dtype)
        wide = np.nan_to_num(np.trunc(values.astype(np.float64)), nan=0.0)
        return np.clip(wide, info.min, info.max).astype(dtype)
    return values.astype(dtype)


def evaluate(instr, regs: list[np.ndarray], loaded: list[np.ndarray],
             index: list[np.ndarray]) -> np.ndarray:
    """One instruction. Float registers hold float32 whatever their dtype, as on the device:
    only CONVERT and the final store round to a narrower float."""
    op, dtype = instr.opcode, instr.dtype
    held = F32 if is_float(dtype) else dtype
    args = [regs[a] for a in instr.args]
    if op == Opcode.LOAD:
        return loaded[instr.imm].astype(held)
    if op == Opcode.CONST:
        return np.full(index[0].shape if index else (), const_value(instr.imm, dtype), held)
    if op == Opcode.IOTA:
        return index[instr.imm].astype(held)
    if op == Opcode.CONVERT:
        return cast(args[0], dtype).astype(held)
    if op == Opcode.SELECT:
        return np.where(args[0], args[2], args[1]).astype(held)
    if op == Opcode.CLAMP:
        return np.minimum(np.maximum(args[1], args[0]), args[2]).astype(held)
    if op == Opcode.NOT:
        return np.logical_not(args[0]) if dtype == np.bool_ else np.invert(args[0])
    if op in _BITWISE:
        logical, bitwise = _BITWISE[op]
        return (logical if dtype == np.bool_ else bitwise)(*args).astype(held)
    with np.errstate(all="ignore"):
        if op in _FLOAT_UNARY:
            return _FLOAT_UNARY[op](args[0]).astype(held)
        if op in _ANY_UNARY:
            return _ANY_UNARY[op](args[0]).astype(held)
        if op == Opcode.ROUND:
            x = args[0]
            rounded = np.rint(x) if instr.imm else np.sign(x) * np.floor(np.abs(x) + 0.5)
            return rounded.astype(held)
        if op == Opcode.INTEGER_POW:
            base = args[0]
            result = np.power(base, abs(instr.imm)) if instr.imm else np.ones_like(base)
            return (1 / result if instr.imm < 0 else result).astype(held)
        if op in SHIFTS:
            return shift(op, *args).astype(held)
        if op in (Opcode.DIV, Opcode.REM) and not is_float(dtype):
            # XLA's integer division: by zero, a quotient of all ones and a remainder of a.
            a, b = args
            divisor = np.where(b == 0, 1, b)
            if op == Opcode.REM:
                return np.where(b == 0, a, np.fmod(a, divisor)).astype(held)
            quotient = np.sign(a) * np.sign(divisor) * (np.abs(a) // np.abs(divisor))
            return np.where(b == 0, -1, quotient).astype(held)
        if op == Opcode.DIV:
            return (args[0] / args[1]).astype(held)
        if op == Opcode.REM:
            return np.fmod(*args).astype(held)
        return _BINARY[op](*args).astype(held)


def elementwise(ctx, dims):
    start, count = int(dims[0]), int(dims[1])
    out_shape, out_strides, out_dtype, inputs, instrs, dynamic_row = ElementwiseProgram.decode(
        _words(ctx, 1))
    index = list(np.unravel_index(np.arange(start, start + count), out_shape)) \
        if out_shape else []

    def offsets(strides):
        total = np.zeros(count, np.int64)
        for idx, stride in zip(index, strides, strict=False):
            total += idx * stride
        return total

    loaded = [ctx.load(2 + i, dtype, offsets(strides)) for i, (dtype, strides)
              in enumerate(inputs)]
    regs: list[np.ndarray] = []
    for instr in instrs:
        regs.append(np.broadcast_to(evaluate(instr, regs, loaded, index), (count,)))
    base = 0
    if dynamic_row:  # a folded cache append: the output's row comes from an input
        j, per_row, rows, written, wrap = dynamic_row
        base = _clamped_start(int(ctx.load(2 + j, I32, [0])[0]), rows, written, wrap) * per_row
    ctx.store(0, out_dtype, base + offsets(out_strides), regs[-1].astype(out_dtype))


# Reductions and contractions -----------------------------------------------------------
def reduce(ctx, dims):
    outer, length, inner, reducer, in_dtype, out_dtype, first, count = (int(d) for d in dims[:8])
    j = np.arange(first, first + count)
    offsets = (j // inner * length * inner + j % inner)[:, None] + np.arange(length) * inner
    x = ctx.load(1, numpy_dtype(in_dtype), offsets)
    x = x.astype(F32) if is_float(x.dtype) else x
    reducer = Reducer(reducer)
    if reducer == Reducer.SUM:
        y = x.sum(axis=1)
    elif reducer == Reducer.MAX:
        y = x.max(axis=1)
    elif reducer == Reducer.MIN:
        y = x.min(axis=1)
    elif reducer == Reducer.ARGMAX:
        y = np.argmax(x, axis=1)
    else:
        y = np.argmin(x, axis=1)
    ctx.store(0, numpy_dtype(out_dtype), j, y.astype(numpy_dtype(out_dtype)))


def matmul(ctx, dims):
    b0, bn, n0, nn, k0, kn = (int(d) for d in dims[:6])
    desc = _words(ctx, 1)
    B, B1, M, N, K, x_dtype, w_dtype, out_dtype, flags = (int(d) for d in desc[:9])
    xs, ws, os_ = desc[9:13], desc[13:17], desc[17:20]
    extent_axis = int(desc[20])
    rows, cols = M, n0 + nn
    if extent_axis:
        extent = int(ctx.load(ctx.num_operands - 1, I32, [0])[0])
        limit = min(max(extent, 0), (M, N, K)[extent_axis - 1])
        rows = limit if extent_axis == 1 else M
        cols = min(cols, limit) if extent_axis == 2 else cols
        kn = max(0, min(k0 + kn, limit) - k0) if extent_axis == 3 else kn
    b = np.arange(b0, b0 + bn)[:, None, None]
    outer, inner = b // B1, b % B1
    m = np.arange(rows)[None, :, None]
    n = np.arange(n0, max(n0, cols))[None, None, :]
    k = np.arange(k0, k0 + kn)
    x_at = outer * xs[0] + inner * xs[1] + m * xs[2] + k[None, None, :] * xs[3]
    x = ctx.load(2, numpy_dtype(x_dtype), x_at)
    after_epilogue = 4 + bool(flags & 1) + bool(flags & 2)  # the norm's scale or the gate's up
    if flags & MATMUL_NORM:
        x = _rms_normed(ctx, after_epilogue, desc, x_dtype, xs, M, K, rows, k)
    if flags & MATMUL_GATE:  # silu(g) * up as the elementwise program computes it
        g = x.astype(F32)
        up = ctx.load(after_epilogue, numpy_dtype(x_dtype), x_at).astype(F32)
        with np.errstate(over="ignore"):
            x = (g * _FLOAT_UNARY[Opcode.LOGISTIC](g) * up).astype(x.dtype)
    w = ctx.load(3, numpy_dtype(w_dtype), outer * ws[0] + inner * ws[1]
                 + k[None, :, None] * ws[2] + n * ws[3])
    live = np.matmul(x.astype(F32), w.astype(F32))
    acc = np.zeros((bn, M, nn), F32)
    acc[:, :rows, :live.shape[2]] = live
    m, n = np.arange(M)[None, :, None], np.arange(n0, n0 + nn)[None, None, :]
    out_offsets = b * os_[0] + m * os_[1] + n * os_[2]
    extra = 4
    if flags & 1:
        acc = acc + ctx.load(extra, numpy_dtype(out_dtype), out_offsets).astype(F32)
        extra += 1
    if flags & 2:
        acc = acc + ctx.load(extra, numpy_dtype(out_dtype), n).astype(F32)
    if flags & MATMUL_ROUND_BF16:
        acc = acc.astype(numpy_dtype(DType.BF16)).astype(F32)
    elif flags & MATMUL_ROUND_F16:
        acc = acc.astype(np.float16).astype(F32)
    ctx.store(0, numpy_dtype(out_dtype), out_offsets, acc)


def _rms_normed(ctx, scale_at, desc, x_dtype, xs, M, K, rows, k):
    """Rows [0, rows) of x over k, RMS-normalized over all K as the kernel does (B is 1)."""
    eps, offset = np.array(desc[21:23], np.int32).view(F32)
    norm_dtype, scale_dtype = numpy_dtype(int(desc[23])), numpy_dtype(int(desc[24]))
    whole = ctx.load(2, numpy_dtype(x_dtype), np.arange(M)[:, None] * xs[2]
                     + np.arange(K)[None, :] * xs[3]).astype(F32)
    inv = np.float32(1) / np.sqrt((whole * whole).sum(-1, dtype=F32) / np.float32(K) + eps)
    gain = offset + ctx.load(scale_at, scale_dtype, k).astype(F32)
    normed = whole[:rows, k] * inv[:rows, None] * gain
    return normed.astype(norm_dtype)[None]


# Indexing ---------------------------------------------------------------------------------
def gather_rows(ctx, dims):
    n, width, rows, dtype, mode, first, count = (int(d) for d in dims[:7])
    dtype = numpy_dtype(dtype)
    ids = ctx.load(2, I32, np.arange(first, first + count)).astype(np.int64)
    if mode & 2:
        ids = np.where(ids < 0, ids + rows, ids)
    valid = (ids >= 0) & (ids < rows)
    safe = np.clip(ids, 0, rows - 1)
    values = ctx.load(1, dtype, safe[:, None] * width + np.arange(width))
    if mode & 1:
        fill = np.nan if is_float(dtype) else 0
        values = np.where(valid[:, None], values, np.array(fill).astype(dtype))
    ctx.store(0, dtype, np.arange(first, first + count)[:, None] * width + np.arange(width),
              values)


def _clamped_start(s: int, big: int, small: int, wrap: int) -> int:
    """A start clamped so that `small` elements from it fit in `big` (a negative start first
    counts from the end where `wrap`), as JAX's dynamic slices clamp."""
    if wrap and s < 0:
        s += big
    return min(max(s, 0), big - small)


def _box(ctx, dims):
    """(offsets into the big tensor, offsets into the small one) of a dynamic slice."""
    rank = int(dims[0])
    big = [int(d) for d in dims[1:1 + rank]]
    small = [int(d) for d in dims[5:5 + rank]]
    wrap = int(dims[9])
    starts = [_clamped_start(int(ctx.load(2 + d, I32, [0])[0]), big[d], small[d], (wrap >> d) & 1)
              for d in range(rank)]
    grids = np.meshgrid(*[np.arange(n) for n in small], indexing="ij")
    big_offsets = np.zeros(small, np.int64)
    small_offsets = np.zeros(small, np.int64)
    big_stride = small_stride = 1
    for d in reversed(range(rank)):
        big_offsets += (grids[d] + starts[d]) * big_stride
        small_offsets += grids[d] * small_stride
        big_stride *= big[d]
        small_stride *= small[d]
    return big_offsets, small_offsets, np.dtype(f"u{int(dims[10])}")


def dynamic_slice(ctx, dims):
    src, out, dtype = _box(ctx, dims)
    ctx.store(0, dtype, out, ctx.load(1, dtype, src))


def dynamic_update_slice(ctx, dims):
    dst, update, dtype = _box(ctx, dims)
    ctx.store(0, dtype, dst, ctx.load(1, dtype, update))


def sequence(ctx, dims):
    first, count = int(dims[0]), int(dims[1])
    words = _words(ctx, 0)
    operand = 1
    for s in range(int(words[0])):
        at = 1 + s * SEQUENCE_STEP_WORDS
        kind, num_operands, range_dim, per_row = (int(w) for w in words[at:at + 4])
        step_dims = words[at + 4:at + SEQUENCE_STEP_WORDS].copy()
        if range_dim >= 0:
            step_dims[range_dim:range_dim + 2] = [first * per_row, count * per_row]
        SEMANTICS[kind](ctx.subset(operand, num_operands), step_dims)
        operand += num_operands


def _merged_splits(load, first, splits, G, Dv):
    """out [G, Dv] from the partials records first .. first + splits - 1 (operand 6)."""
    record = G * (2 + Dv)
    at = (first + np.arange(splits))[:, None] * record
    m = load(6, F32, at + np.arange(G))  # [splits, G]
    s = load(6, F32, at + G + np.arange(G))
    acc = load(6, F32, (at + 2 * G)[:, :, None] + np.arange(G * Dv).reshape(G, Dv))
    with np.errstate(invalid="ignore"):
        weight = np.exp(m - m.max(axis=0))  # a split past the extent: exp(-inf) = 0
    total = (s * weight).sum(axis=0)
    return (acc * weight[:, :, None]).sum(axis=0) / total[:, None]


ROPE_OPERANDS = 5  # DECODE_ATTENTION's new_k, new_v, cos, sin, pos; then the norms' scales:
Q_SCALE, K_SCALE = 5, 6  # their indices among those operands


def _attention_rope(ctx, w, T: int, D: int, extra: int):
    """(rotate, first rope operand, the appended row) of DECODE_ATTENTION's `extra` rope
    operands: rotate(x [..., D] float32, scale) is the half-split rotation by the tables in
    float32, of x's rows normed first where the norms' scales follow (scale: q's or k's
    operand)."""
    at = ctx.num_operands - extra
    half = D // 2
    table_dt, stride = numpy_dtype(w[32]), int(w[33])
    cos, sin = (ctx.load(at + i, table_dt, np.arange(half) * stride).astype(F32) for i in (2, 3))
    row = _clamped_start(int(ctx.load(at + 4, I32, [0])[0]), T, 1, int(w[28]) & 1)

    def norm(x, scale):
        n, eps, c = (np.int32(word).view(np.float32) for word in w[42:45])
        scales = ctx.load(at + scale, numpy_dtype(w[41]), np.arange(D) * w[40 + scale])
        gain = c + scales.astype(F32)
        inv = (1 / np.sqrt((x * x).sum(axis=-1, keepdims=True, dtype=F32) / n + eps)).astype(F32)
        return ((x * inv) * gain).astype(numpy_dtype(w[40])).astype(F32)

    def rotate(x, scale):
        if extra > ROPE_OPERANDS:
            x = norm(x, scale)
        lo, hi = x[..., :half], x[..., half:]
        return np.concatenate([lo * cos - hi * sin, hi * cos + lo * sin], axis=-1).astype(F32)

    return rotate, at, row


def decode_attention(ctx, dims):
    b0, bn, t0, tn, mode, split = (int(d) for d in dims[:6])
    w = _words(ctx, 1)
    B, B1, G, T, D, Dv = (int(x) for x in w[:6])
    q_dt, k_dt, v_dt, out_dt, scores_dt = (numpy_dtype(x) for x in w[6:11])
    qs, ks, vs, os_ = w[11:15], w[15:19], w[19:23], w[23:26]
    scale = np.float32(np.int32(w[26]).view(np.float32))
    splits = int(w[27])
    extent = min(max(int(ctx.load(5, I32, [0])[0]), 0), T)
    g, d, dv = np.arange(G)[:, None], np.arange(D)[None, :], np.arange(Dv)[None, :]
    record = G * (2 + Dv)
    extra = int(dims[6])  # the rope's operands, and the norms'
    rope = _attention_rope(ctx, w, T, D, extra) if extra else None
    for b in range(b0, b0 + bn):
        outer, inner = b // B1, b % B1
        out_at = b * os_[0] + g * os_[1] + dv * os_[2]
        if mode == ATTENTION_MERGE:
            out = _merged_splits(ctx.load, b * splits, splits, G, Dv)
            ctx.store(0, out_dt, out_at, out.astype(out_dt))
            continue
        if mode == ATTENTION_PARTIAL:  # the live positions, shared evenly
            per = -(-extent // splits)
            first = min(split * per, extent)
            t = np.arange(first, min(first + per, extent))[:, None]
        else:
            t = np.arange(t0, max(t0, min(t0 + tn, extent)))[:, None]
        q = ctx.load(2, q_dt, outer * qs[0] + inner * qs[1] + g * qs[2] + d * qs[3]).astype(F32)
        if rope is not None:
            rotate, at, row = rope
            q = rotate(q, Q_SCALE).astype(numpy_dtype(w[29])).astype(F32)
            start = first if mode == ATTENTION_PARTIAL else t0
            leads = split == 0 if mode == ATTENTION_PARTIAL else t0 == 0
            if start <= row < start + t.size or (leads and row >= extent):
                kn, vn = w[34:37], w[37:40]
                new_k = ctx.load(at, numpy_dtype(w[30]),
                                 outer * kn[0] + inner * kn[1] + d[0] * kn[2]).astype(F32)
                new_v = ctx.load(at + 1, numpy_dtype(w[31]),
                                 outer * vn[0] + inner * vn[1] + dv[0] * vn[2])
                ctx.store(3, k_dt, outer * ks[0] + inner * ks[1] + row * ks[2] + d[0] * ks[3],
                          rotate(new_k, K_SCALE).astype(k_dt))
                ctx.store(4, v_dt, outer * vs[0] + inner * vs[1] + row * vs[2] + dv[0] * vs[3],
                          new_v.astype(v_dt))
        k = ctx.load(3, k_dt, outer * ks[0] + inner * ks[1] + t * ks[2] + d * ks[3]).astype(F32)
        v = ctx.load(4, v_dt, outer * vs[0] + inner * vs[1] + t * vs[2] + dv * vs[3]).astype(F32)
        scores = (q @ k.T).astype(scores_dt).astype(F32) * scale  # [G, live]
        m = scores.max(axis=1) if t.size else np.full(G, -np.inf, F32)
        e = np.exp(scores - m[:, None])
        s, acc = e.sum(axis=1, dtype=F32), (e @ v).astype(F32)
        if mode == ATTENTION_WHOLE:
            ctx.store(0, out_dt, out_at, (acc / s[:, None]).astype(out_dt))
            continue
        at = (b * splits + split) * record
        ctx.store(6, F32, at + np.arange(G), m.astype(F32))
        ctx.store(6, F32, at + G + np.arange(G), s)
        ctx.store(6, F32, at + 2 * G + np.arange(G * Dv), acc.reshape(-1))
        counters = ctx.num_operands - extra == 8
        if counters and ctx.arrive(7, b) % splits == 0:  # the last split of b
            out = _merged_splits(ctx.load_after_arrivals, b * splits, splits, G, Dv)
            ctx.store(0, out_dt, out_at, out.astype(out_dt))


SEMANTICS = {
    TaskKind.NOOP: noop,
    TaskKind.COPY: copy,
    TaskKind.COMBINE_U32: combine_u32,
    TaskKind.WAIT_VALUE: wait_value,
    TaskKind.PUT: put,
    TaskKind.SIGNAL_WAIT: signal_wait,
    TaskKind.ELEMENTWISE: elementwise,
    TaskKind.REDUCE: reduce,
    TaskKind.MATMUL: matmul,
    TaskKind.GATHER_ROWS: gather_rows,
    TaskKind.DYNAMIC_SLICE: dynamic_slice,
    TaskKind.DYNAMIC_UPDATE_SLICE: dynamic_update_slice,
    TaskKind.SEQUENCE: sequence,
    TaskKind.DECODE_ATTENTION: decode_attention,
}
