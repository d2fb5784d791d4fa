"""Decode attention as one op: the scores matmul, the masked softmax between and the values
matmul that `bound_attention_to_live_cache` bounded become a `decode_attention` op, whose
tasks stream the live cache once (split along the cache, then a merge per head group).

Taken only where the chain is exactly what a scaled, causally masked `jax.nn.softmax` makes
at one query position per head row: scores -> f32, times a constant, masked by `t <= rhs`
with rhs the same for every row -> row max (with `max(-inf, m)` or without) -> exp of the
difference -> row sum -> quotient, cast; every intermediate read by the chain alone; and
the rows of the probabilities provably the rows of the scores (traced through every view).
Anything else keeps the three ops. The softmax runs online in float32 (the merge rescales
each split's sums), so the probabilities are not rounded to their dtype as the chain does:
a difference of bf16 rounding, inside the tolerance table.
"""

from __future__ import annotations

import numpy as np

from jax_mpk.ir import Graph, Op, Tensor, contiguous_strides
from jax_mpk.passes.attention import HUGE_NEGATIVE, find_mask, subtree
from jax_mpk.passes.dataflow import Links
from jax_mpk.task_kinds import Opcode, Reducer, const_value, is_float

# kernels/tasks/decode_attention.cuh: its limits, and the task arena in float32 words.
MAX_HEAD_DIM = 256
MAX_ROWS = 64
SHARED_FLOATS = (112 - 32) * 1024 // 4  # the last 32 KiB: the value pass's sums (kReduceFloats)
STAGED_WORDS = 40  # descriptor words the kernel stages (kDescWords); more are read where used
MIN_POSITIONS = 64  # positions of the cache a split holds at least


def fuse_decode_attention(graph: Graph) -> None:
    for values in [op for op in graph.ops if op.kind == "matmul"
                   and op.attrs.get("extent_axis") == "K"]:
        fused = _fused(graph, values)
        if fused is None:
            continue
        op, chain = fused
        first, last = graph.ops.index(chain[0]), graph.ops.index(values)
        others = [o for o in graph.ops[first + 1:last] if all(o is not c for c in chain)]
        # The op runs where the values matmul ran: nothing in between may change what the
        # scores read, or touch what the values write.
        if any(w.overlaps(t) for o in others for w in o.outputs for t in op.inputs) or any(
                t.overlaps(op.outputs[0]) for o in others for t in o.inputs + o.outputs):
            continue
        graph.ops[last] = op
        for o in chain[:-1]:
            graph.ops.remove(o)


def _fused(graph: Graph, values: Op):
    links = Links(graph)
    probs_at = next((i for i in (0, 1) if _writer_kind(links, values.inputs[i]) == "elementwise"),
                    None)
    if probs_at is None or len(values.inputs) != 3:
        return None
    quotient = links.sole_writer(values.inputs[probs_at], [values])
    if quotient is None:
        return None
    e_in, s_in = _quotient(quotient)
    if e_in is None:
        return None
    sums = links.sole_writer(s_in, [quotient])
    exps = None if sums is None else links.sole_writer(e_in, [sums, quotient])
    if exps is None or not _row_reduce(sums, Reducer.SUM, exps.outputs[0]):
        return None
    x_in, m_in = _exp_of_difference(exps)
    if x_in is None:
        return None
    maxes = links.sole_writer(m_in, [exps])
    masked = None if maxes is None else links.sole_writer(x_in, [maxes, exps])
    if masked is None or not _row_reduce(maxes, Reducer.MAX, masked.outputs[0]):
        return None
    scores_in, scale, t_dim = _masked_scores(masked)
    if scores_in is None:
        return None
    scores = links.sole_writer(scores_in, [masked])
    if (scores is None or scores.kind != "matmul" or len(scores.inputs) != 3
            or scores.attrs.get("extent_axis") not in ("M", "N")):
        return None
    rows, length = maxes.attrs["outer"], maxes.attrs["length"]
    # Each step of the softmax reads its inputs at its own (row, t) or its row's statistic.
    for op, whole, stats in ((exps, masked, maxes), (quotient, exps, sums)):
        if not _row_wise(op, whole.outputs[0], stats.outputs[0], rows, length):
            return None
    if masked.outputs[0].shape[-1] != length or t_dim != len(masked.outputs[0].shape) - 1:
        return None
    layout = _layout(scores, values, probs_at, masked, rows, length)
    if layout is None:
        return None
    q, k, v, out, attrs = layout
    attrs["scale"] = scale
    attrs["scores_dtype"] = scores.outputs[0].dtype
    extent = values.inputs[-1]
    op = Op("decode_attention", [q, k, v, extent], [out], attrs, values.source, "attention")
    return op, [scores, masked, maxes, exps, sums, quotient, values]


def _writer_kind(links: Links, t: Tensor) -> str | None:
    writers = links.writers.get(id(t.buffer), [])
    return writers[0].kind if len(writers) == 1 else None


def _loads(op: Op) -> dict[int, Tensor]:
    return {i: op.inputs[ins.imm] for i, ins in enumerate(op.attrs["instrs"])
            if ins.opcode == Opcode.LOAD}


def _quotient(op: Op):
    """(e, s) of a program `e / s` with an optional cast, else (None, None)."""
    instrs = op.attrs["instrs"]
    codes = [ins.opcode for ins in instrs]
    if op.kind != "elementwise" or len(op.inputs) != 2 or codes[:3] != [
            Opcode.LOAD, Opcode.LOAD, Opcode.DIV] or codes[3:] not in ([], [Opcode.CONVERT]):
        return None, None
    loads = _loads(op)
    a, b = instrs[2].args
    if {a, b} != {0, 1} or any(not is_float(instrs[i].dtype) for i in range(3)):
        return None, None
    return loads[a], loads[b]


def _exp_of_difference(op: Op):
    """(x, m) of `exp(x - m)` or `exp(x - max(-inf, m))`, else (None, None)."""
    if op.kind != "elementwise" or len(op.inputs) != 2:
        return None, None
    instrs = op.attrs["instrs"]
    last = instrs[-1]
    if last.opcode != Opcode.EXP or instrs[last.args[0]].opcode != Opcode.SUB:
        return None, None
    x_at, m_at = instrs[last.args[0]].args
    if instrs[m_at].opcode == Opcode.MAX:  # jnp.max's initial=-inf
        low, m_at = instrs[m_at].args
        if not _is_minus_infinity(instrs[low]):
            low, m_at = m_at, low
            if not _is_minus_infinity(instrs[low]):
                return None, None
    used = set(subtree(instrs, len(instrs) - 1))
    if used != set(range(len(instrs))) or len(instrs) > 6:
        return None, None
    if instrs[x_at].opcode != Opcode.LOAD or instrs[m_at].opcode != Opcode.LOAD:
        return None, None
    if any(not is_float(ins.dtype) for ins in instrs):
        return None, None
    return op.inputs[instrs[x_at].imm], op.inputs[instrs[m_at].imm]


def _is_minus_infinity(ins) -> bool:
    return ins.opcode == Opcode.CONST and const_value(ins.imm, np.float32) == -np.inf


def _masked_scores(op: Op):
    """(scores, scale, t dim) of `where(t <= rhs, scores * scale, huge negative)` with rhs
    the same for every row (decode), else Nones."""
    found = find_mask(op)
    if found is None:
        return None, None, None
    select_at, t_dim, rhs_at, _ = found
    instrs = op.attrs["instrs"]
    if select_at != len(instrs) - 1 or any(instrs[i].opcode == Opcode.IOTA
                                           for i in subtree(instrs, rhs_at)):
        return None, None, None
    # The live branch: LOAD scores [-> CONVERT f32] [-> MUL/DIV by a constant].
    at, scale = instrs[select_at].args[2], 1.0
    if instrs[at].opcode in (Opcode.MUL, Opcode.DIV):
        a, b = instrs[at].args
        if instrs[b].opcode != Opcode.CONST and instrs[at].opcode == Opcode.MUL:
            a, b = b, a
        if instrs[b].opcode != Opcode.CONST:
            return None, None, None
        c = float(const_value(instrs[b].imm, np.float32))
        scale = 1.0 / c if instrs[at].opcode == Opcode.DIV else c
        at = a
    if instrs[at].opcode == Opcode.CONVERT:
        at = instrs[at].args[0]
    if instrs[at].opcode != Opcode.LOAD or not is_float(instrs[-1].dtype):
        return None, None, None
    if float(const_value(instrs[instrs[select_at].args[1]].imm, np.float32)) > HUGE_NEGATIVE:
        return None, None, None
    scores = op.inputs[instrs[at].imm]
    if sum(t.buffer is scores.buffer for t in op.inputs) != 1:
        return None, None, None
    return scores, scale, t_dim


def _row_reduce(op: Op, reducer: Reducer, src: Tensor) -> bool:
    a = op.attrs
    return (op.kind == "reduce" and a["reducer"] == reducer and a["inner"] == 1
            and op.inputs[0].buffer is src.buffer and op.inputs[0].offset == 0
            and a["outer"] * a["length"] == src.size)


def _row_wise(op: Op, whole: Tensor, stats: Tensor, rows: int, length: int) -> bool:
    """Whether op reads `whole` at its own (row, t) and `stats` at its row, its own output
    laid out [rows, length] like `whole`."""
    out = op.outputs[0]

    def walks(t: Tensor, expected) -> bool:  # size-1 dims may have any stride
        return t.offset == 0 and all(s == e for s, e, n in zip(t.strides, expected, out.shape,
                                                               strict=True) if n > 1)

    own = contiguous_strides(out.shape)
    if out.shape != whole.shape or not walks(out, own):
        return False
    for t in op.inputs:
        if not (walks(t, own) if t.buffer is whole.buffer else t.buffer is stats.buffer
                and walks(t, contiguous_strides(out.shape[:-1]) + (0,))):
            return False
    return out.size == rows * length


def _layout(scores: Op, values: Op, probs_at: int, masked: Op, rows: int, length: int):
    """(q, k, v, out tensors, attrs) where the probabilities' row of every (b, g) is the
    scores' row of the same (b, g), traced element by element; else None."""
    a, av = scores.attrs, values.attrs
    B, B1, T = a["B"], a["B1"], length
    if av["B"] != B or av["B1"] != B1:
        return None
    xs, ws = a["x_strides"], a["w_strides"]
    if a["extent_axis"] == "M":  # the cache rows are x's rows; q is w, [d, g]
        G, kq, kk = a["N"], scores.inputs[1], scores.inputs[0]
        q_strides, k_strides = (ws[0], ws[1], ws[3], ws[2]), xs
        s_of = (a["N"] * a["M"], 1, a["N"])  # out[b, t, g]: strides of b, g, t
    else:  # the cache rows are w's columns; q is x, [g, d]
        G, kq, kk = a["M"], scores.inputs[0], scores.inputs[1]
        q_strides, k_strides = xs, (ws[0], ws[1], ws[3], ws[2])
        s_of = (a["M"] * a["N"], a["N"], 1)  # out[b, g, t]
    os_ = a.get("out_strides")
    if os_ is not None:
        s_of = (os_[0], os_[2], os_[1]) if a["extent_axis"] == "M" else tuple(os_)
    if (a["M"] if a["extent_axis"] == "M" else a["N"]) != T or rows != B * G:
        return None
    D = a["K"]
    vx, vw = av["x_strides"], av["w_strides"]
    os_v = av.get("out_strides") or (av["M"] * av["N"], av["N"], 1)  # of out[b, m, n]
    if probs_at == 0:  # probs x[b, g, t], cache w[b, t, d], out[b, g, d]
        p_strides, v_strides, v = (vx[0], vx[1], vx[2], vx[3]), vw, values.inputs[1]
        Gv, Dv, o_strides = av["M"], av["N"], os_v
    else:  # probs w[b, t, g], cache x[b, d, t], out[b, d, g]
        p_strides, v = (vw[0], vw[1], vw[3], vw[2]), values.inputs[0]
        v_strides = (vx[0], vx[1], vx[3], vx[2])
        Gv, Dv, o_strides = av["N"], av["M"], (os_v[0], os_v[2], os_v[1])
    if (Gv != G or av["K"] != T or D > MAX_HEAD_DIM or Dv > MAX_HEAD_DIM or G > MAX_ROWS
            or G * (D + Dv + MIN_POSITIONS) > SHARED_FLOATS):
        return None
    # Element by element: the masked op's (row, t) reads scores[b, g, t] of one (b, g) per row,
    # and the values matmul reads probabilities (b, g, t) from that same row.
    b = np.arange(B)[:, None, None]
    g = np.arange(G)[None, :, None]
    t = np.arange(T)[None, None, :]
    written = b * s_of[0] + g * s_of[1] + t * s_of[2]  # scores out offsets of (b, g, t)
    where = np.full(scores.outputs[0].buffer.nbytes // scores.outputs[0].dtype.itemsize, -1)
    flat = written.reshape(-1)
    if flat.min() < 0 or flat.max() >= where.size:
        return None
    where[flat] = np.arange(flat.size)  # offset -> index of (b, g, t)
    if not np.array_equal(where[flat], np.arange(flat.size)):  # two (b, g, t) at one offset
        return None
    read = _offsets(masked.inputs[[t.buffer is scores.outputs[0].buffer
                                   for t in masked.inputs].index(True)])  # [rows * T]
    if read.min() < 0 or read.max() >= where.size or (where[read] < 0).any():
        return None
    source = where[read].reshape(rows, T)  # index of (b, g, t) each (row, t) reads
    if not (source % T == np.arange(T)).all() or not (source // T == source[:, :1] // T).all():
        return None
    row_of = np.full(B * G, -1)
    row_of[source[:, 0] // T] = np.arange(rows)  # (b, g) -> its row
    probs = values.inputs[probs_at]
    p_off = (probs.offset + (b // B1) * p_strides[0] + (b % B1) * p_strides[1]
             + g * p_strides[2] + t * p_strides[3])
    expected = row_of.reshape(B, G, 1) * T + t
    if (row_of < 0).any() or not np.array_equal(p_off, expected):
        return None
    attrs = {"B": B, "B1": B1, "G": G, "T": T, "D": D, "Dv": Dv,
             "q_strides": tuple(q_strides), "k_strides": tuple(k_strides),
             "v_strides": tuple(v_strides), "out_strides": tuple(o_strides)}
    return kq, kk, v, values.outputs[0], attrs


def _offsets(t: Tensor) -> np.ndarray:
    """Element offsets a view reads, in row-major order of its shape."""
    total = np.full(t.shape, t.offset, np.int64)
    for d, (n, s) in enumerate(zip(t.shape, t.strides, strict=True)):
        shape = [1] * len(t.shape)
        shape[d] = n
        total = total + (np.arange(n) * s).reshape(shape)
    return total.reshape(-1)
