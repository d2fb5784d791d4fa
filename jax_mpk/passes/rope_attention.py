"""RoPE and the cache appends folded into decode attention.

Between a layer's projections and its attention, a decoder rotates q and k (two elementwise
ops each, one per half of a half-split rotation), appends the rotated k and v to the caches
at `pos` (dynamic_update_slice) and only then attends: a stage of small tasks a layer. Here
the decode_attention op takes the unrotated q, k and v, the rotation's two tables and
`pos`: its tasks rotate q as they load it, and the task of a head group whose positions
hold the appended row (the first split where none does) rotates k and writes both rows
before it reads the cache (DECODE_ATTENTION's rope operands, jax_mpk/task_kinds.py).

Taken only where each rotation is exactly `lo = x_lo * c - x_hi * s`, `hi = x_hi * c +
x_lo * s` in float32 (x converted from its dtype, the result to the rotated dtype), its
halves the two halves of the head dim along the attention's d, the tables the same for
every row; the appends write one row along the attention's positions at one scalar `pos`;
and nothing between the folded ops and the attention touches the caches or rewrites what
the attention now reads. Anything else (an interleaved rotation, a per-row position, a
rotation with more in its ops) keeps the ops. The arithmetic is the ops' own, in their
order, so the result is bit for bit the unfolded one.

Qwen3 normalizes each head of q and k (its qk-norm) before the rotation, and the elementwise
fusion puts that scaling into the rotation's ops: each x there is `round((x * inv) * (c +
w))` with `inv = 1 / sqrt(sums / n + eps)`, sums the head row's sum of squares (two ops
before: the squares, their sum), w the norm's scale along d. Such rotations fold too, with
those two ops, where q's and k's norms share n, eps, c and their dtypes and the sums are
of the very rows the attention reads: the attention takes both scales and sums each row
itself. In its own order: the folded step is then within rounding of the unfolded one, not
bit for bit.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from jax_mpk.ir import Graph, Op, Role, Tensor, contiguous_strides
from jax_mpk.passes.dataflow import Links
from jax_mpk.passes.rope_programs import (F32, Norm, norm_constants, products, same, same_factor,
                                          squared, walk)
from jax_mpk.task_kinds import Opcode, Reducer


class Rotation(NamedTuple):
    """The two elementwise ops rotating a buffer, and what they read."""

    ops: tuple[Op, Op]  # lo, hi
    out_lo: Tensor
    out_hi: Tensor
    x_lo: Tensor  # the unrotated halves
    x_hi: Tensor
    cos: Tensor
    sin: Tensor
    norm: Norm | None  # x_lo's (x_hi's: its scale half * step further)

    @property
    def shift(self) -> int:
        """An unrotated element's offset less its rotated one's."""
        return self.x_lo.offset - self.out_lo.offset


def fold_rope_into_attention(graph: Graph) -> None:
    for attention in [op for op in graph.ops if op.kind == "decode_attention"]:
        folded = _folded(graph, Links(graph), attention)
        if folded is None:
            continue
        removed, inputs, wrap, norm = folded
        q, k, v, extent = attention.inputs
        attention.inputs = inputs
        attention.attrs["rope"] = {"wrap": wrap, "q_dtype": q.dtype}  # q's rotated dtype
        if norm is not None:
            attention.attrs["rope"]["norm"] = {"n": norm.n, "eps": norm.eps, "c": norm.c,
                                               "dtype": norm.dtype}
        attention.attrs["writes_within"] = [k, v]  # the appended rows, somewhere in the caches
        attention.label = "rope_attention"
        graph.ops = [op for op in graph.ops if all(op is not r for r in removed)]


def _folded(graph: Graph, links: Links, attention: Op):
    """(ops to remove, the attention's new inputs, whether pos wraps, q's Norm or None), or
    None."""
    q, k, v, extent = attention.inputs
    a = attention.attrs
    B, B1, G, D, Dv = a["B"], a["B1"], a["G"], a["D"], a["Dv"]
    if D % 2 or "rope" in a:
        return None
    q_rotation = _rotation(links, q, attention)
    k_append, v_append = _append(graph, links, k, attention), _append(graph, links, v, attention)
    if q_rotation is None or k_append is None or v_append is None:
        return None
    k_parts, v_parts = _append_parts(k_append), _append_parts(v_append)
    if k_parts is None or v_parts is None:
        return None
    (k_update, k_pos, k_axis, k_wrap), (v_update, v_pos, v_axis, v_wrap) = k_parts, v_parts
    if (k_pos.buffer is not v_pos.buffer or k_pos.offset != v_pos.offset or k_wrap != v_wrap
            or a["k_strides"][2] != contiguous_strides(k_append.attrs["dst_shape"])[k_axis]
            or a["v_strides"][2] != contiguous_strides(v_append.attrs["dst_shape"])[v_axis]
            or k_append.attrs["dst_shape"][k_axis] != a["T"]
            or v_append.attrs["dst_shape"][v_axis] != a["T"]):
        return None
    b = np.arange(B)
    for strides in (a["k_strides"], a["v_strides"]):  # each b's task appends its own row
        if len(set(((b // B1) * strides[0] + (b % B1) * strides[1]).tolist())) != B:
            return None
    k_rotation = _rotation(links, k_update, k_append)
    if k_rotation is None or k_update.offset or not k_update.is_contiguous:
        return None
    if not all(same(getattr(q_rotation, t), getattr(k_rotation, t), last_only=True)
               for t in ("cos", "sin")):
        return None
    if q_rotation.cos.strides[-1] != q_rotation.sin.strides[-1]:
        return None
    outer, inner = (b // B1)[:, None, None], (b % B1)[:, None, None]
    # q: the attention's (b, g, d), rotated in place of where it read the rotated q.
    q_at = (q.offset + outer * a["q_strides"][0] + inner * a["q_strides"][1]
            + np.arange(G)[None, :, None] * a["q_strides"][2]
            + np.arange(D)[None, None, :] * a["q_strides"][3])
    q_rows = _rotated_along_d(q_rotation, q_at)
    if q_rows is None:
        return None
    raw_q = Tensor(q.shape, q_rotation.x_lo.dtype, q_rotation.x_lo.buffer,
                   q.offset + q_rotation.shift, q.strides)
    # k: the appended row of each (b, d), found in the update, rotated from the unrotated k.
    k_row = _update_offsets(k_append, k, a["k_strides"], B, B1, D, k_axis)
    k_rows = None if k_row is None else _rotated_along_d(k_rotation, k_row[:, None, :])
    if k_rows is None:
        return None
    k_x = k_row + k_rotation.shift  # [B, D] in the unrotated k
    new_k = _affine(k_x, B, B1, k_rotation.x_lo)
    v_row = _update_offsets(v_append, v, a["v_strides"], B, B1, Dv, v_axis)
    new_v = None if v_row is None else _affine(v_row, B, B1, v_update)
    if new_k is None or new_v is None or v_update.dtype != v.dtype:
        return None
    cos, sin = (Tensor((D // 2,), t.dtype, t.buffer, t.offset, (t.strides[-1],))
                for t in (q_rotation.cos, q_rotation.sin))
    norms = _norms(links, q_rotation, q_at + q_rotation.shift, q_rows, k_rotation,
                   k_x[:, None, :], k_rows, D)
    if norms is None:
        return None
    inputs = [raw_q, k, v, extent, new_k, new_v, cos, sin, k_pos, *norms[0]]
    removed = [*q_rotation.ops, *k_rotation.ops, k_append, v_append]
    if not _nothing_between(graph, removed, attention, [raw_q, *inputs[4:]],
                            [(k_append, k), (v_append, v)]):
        return None
    # The sums were taken before the rotations: the rows they summed stay as they were.
    if norms[1] and not _nothing_between(graph, norms[1], attention, [raw_q, new_k], []):
        return None
    return removed + norms[1], inputs, k_wrap, q_rotation.norm


def _norms(links: Links, q_rotation: Rotation, q_x: np.ndarray, q_rows: np.ndarray,
           k_rotation: Rotation, k_x: np.ndarray, k_rows: np.ndarray, D: int):
    """([], []) for rotations without norms. For normed ones: ([q_scale, k_scale] along d,
    the ops computing both sums), where each sums is the sum of squares of the very row the
    attention reads (x [B, G or 1, D]: the unrotated elements' offsets), computed only for
    the rotation, and both norms share their constants and dtypes; else None."""
    qn, kn = q_rotation.norm, k_rotation.norm
    if qn is None or kn is None:
        return ([], []) if qn is kn else None
    if norm_constants(qn) != norm_constants(kn) or qn.scale.dtype != kn.scale.dtype:
        return None
    scales, ops = [], []
    for norm, rotation, x, rows in ((qn, q_rotation, q_x, q_rows), (kn, k_rotation, k_x, k_rows)):
        sums = norm.sums.offset + rows[..., 0, :] @ np.asarray(norm.sums.strides, np.int64)
        found = _sums_of_squares(links, norm.sums, rotation)
        if found is None:
            return None
        square, reduce_op, rows_summed = found
        if any(sorted(rows_summed.get(o, ())) != sorted(row.tolist())
               for o, row in zip(sums.reshape(-1).tolist(), x.reshape(-1, D), strict=True)):
            return None
        scale = norm.scale
        scales.append(Tensor((D,), scale.dtype, scale.buffer, scale.offset, (scale.strides[-1],)))
        ops += [square, reduce_op]
    return scales, ops


def _sums_of_squares(links: Links, sums: Tensor, rotation: Rotation):
    """(square op, reduce op, {sums offset: offsets in the unrotated buffer of the elements
    it sums}) where `sums` is written only by a sum over the last axis of the squares
    (float32) of that buffer's elements, and read by the rotation only; else None."""
    writers = links.writers.get(id(sums.buffer), [])
    reduce_op = writers[0] if len(writers) == 1 else None
    if (reduce_op is None or reduce_op.kind != "reduce"
            or reduce_op.attrs["reducer"] != Reducer.SUM or reduce_op.attrs["inner"] != 1
            or sums.buffer.role is not Role.INTERMEDIATE or id(sums.buffer) in links.results
            or ({id(r) for r in links.readers.get(id(sums.buffer), [])}
                != {id(o) for o in rotation.ops})):
        return None
    (squares,), (total,) = reduce_op.inputs, reduce_op.outputs
    writers = links.writers.get(id(squares.buffer), [])
    if (len(writers) != 1 or squares.buffer.role is not Role.INTERMEDIATE or squares.dtype != F32
            or id(squares.buffer) in links.results
            or [id(r) for r in links.readers.get(id(squares.buffer), [])] != [id(reduce_op)]):
        return None
    square = writers[0]
    x_read = squared(square)
    if (x_read is None or x_read.buffer is not rotation.x_lo.buffer
            or x_read.shape != square.outputs[0].shape):
        return None
    # Elementwise: output element i from x's element i; the reduce: row o of [outer, length].
    x_of = dict(zip(_offsets(square.outputs[0]).tolist(), _offsets(x_read).tolist(), strict=True))
    summed = _offsets(squares).reshape(reduce_op.attrs["outer"], reduce_op.attrs["length"])
    rows = {}
    for o, row in zip(_offsets(total).tolist(), summed.tolist(), strict=True):
        if any(e not in x_of for e in row):
            return None
        rows[o] = [x_of[e] for e in row]
    return square, reduce_op, rows


def _offsets(t: Tensor) -> np.ndarray:
    """The offsets of t's elements, in row-major order of its shape."""
    index = np.indices(t.shape).reshape(len(t.shape), t.size)
    return t.offset + np.asarray(t.strides, np.int64) @ index


def _rotation(links: Links, rotated: Tensor, reader: Op) -> Rotation | None:
    """The two ops writing `rotated`'s buffer as a half-split rotation read only by `reader`."""
    buffer = rotated.buffer
    writers = links.writers.get(id(buffer), [])
    if (len(writers) != 2 or buffer.role is not Role.INTERMEDIATE or id(buffer) in links.results
            or [id(o) for o in links.readers.get(id(buffer), [])] != [id(reader)]):
        return None
    halves = {}
    for op in writers:
        if (op.kind != "elementwise" or len(op.outputs) != 1 or "dynamic_row" in op.attrs
                or "writes_within" in op.attrs):
            return None
        form = products(op)
        if form is None or form[0] in halves:
            return None
        halves[form[0]] = (op, form[1], form[2])
    if set(halves) != {Opcode.SUB, Opcode.ADD}:
        return None
    lo_op, (x_lo, cos), (x_hi, sin) = halves[Opcode.SUB]
    hi_op, first, second = halves[Opcode.ADD]
    # hi = x_hi * cos + x_lo * sin, its two products in either order.
    if not any(same_factor(a[0], x_hi) and same(a[1], cos) and same_factor(b[0], x_lo)
               and same(b[1], sin) for a, b in ((first, second), (second, first))):
        return None
    out_lo, out_hi = lo_op.outputs[0], hi_op.outputs[0]
    half = out_lo.shape[-1] if out_lo.shape else 0
    step = out_lo.strides[-1] if out_lo.shape else 0
    if (not half or out_hi.shape != out_lo.shape or out_hi.strides != out_lo.strides
            or out_hi.offset - out_lo.offset != half * step or out_lo.dtype != out_hi.dtype
            or 2 * out_lo.nbytes != buffer.nbytes or out_lo.overlaps(out_hi)
            or not _halves(x_lo.tensor, x_hi.tensor, out_lo) or x_lo.tensor.buffer is buffer
            or not _same_halves(x_lo.norm, x_hi.norm, out_lo)):
        return None
    for table in (cos, sin):
        if table.shape != out_lo.shape or any(walk(table)[:-1]) or table.dtype != F32:
            return None
    return Rotation((lo_op, hi_op), out_lo, out_hi, x_lo.tensor, x_hi.tensor, cos, sin, x_lo.norm)


def _halves(lo: Tensor, hi: Tensor, like: Tensor) -> bool:
    """Whether lo and hi are the two halves of one buffer's rows, walked as `like`."""
    half, step = like.shape[-1], like.strides[-1]
    return (lo.buffer is hi.buffer and walk(lo) == walk(like) and walk(hi) == walk(like)
            and hi.offset - lo.offset == half * step and lo.shape == like.shape)


def _same_halves(lo: Norm | None, hi: Norm | None, like: Tensor) -> bool:
    """Whether x_lo's and x_hi's norms are one norm of their whole rows: the same sums (one
    value along d) and constants, the scale's two halves (along d only)."""
    if lo is None or hi is None:
        return lo is hi
    scale = lo.scale
    return (same(lo.sums, hi.sums) and walk(lo.sums)[-1] == 0
            and norm_constants(lo) == norm_constants(hi)
            and not any(walk(scale)[:-1]) and scale.shape == like.shape
            and hi.scale.buffer is scale.buffer and hi.scale.dtype == scale.dtype
            and hi.scale.strides[-1] == scale.strides[-1]
            and hi.scale.offset - scale.offset == like.shape[-1] * scale.strides[-1])


def _rotated_along_d(rotation: Rotation, at: np.ndarray) -> np.ndarray | None:
    """Where offsets `at` [..., D] of the rotated buffer hold, along their last axis, the lo
    half's elements at d < D / 2 and the hi half's at d - D / 2, each pair at one index of
    the halves and at the tables' d: those indices [..., D / 2, rank]; else None."""
    half = at.shape[-1] // 2
    lo, hi = rotation.out_lo, rotation.out_hi
    if lo.shape[-1] != half:
        return None
    index = np.indices(lo.shape).reshape(len(lo.shape), -1).T
    offsets = lo.offset + index @ np.asarray(lo.strides, np.int64)
    where = dict(zip(offsets.tolist(), range(len(offsets)), strict=True))
    lows = [where.get(o, -1) for o in at[..., :half].reshape(-1).tolist()]
    shifted = at[..., half:] - (hi.offset - lo.offset)
    highs = [where.get(o, -1) for o in shifted.reshape(-1).tolist()]
    want = np.broadcast_to(np.arange(half), at[..., :half].shape).reshape(-1)
    if lows != highs or -1 in lows or (index[lows, -1] != want).any():
        return None
    return index[lows].reshape(*at.shape[:-1], half, len(lo.shape))


def _append(graph: Graph, links: Links, cache: Tensor, attention: Op) -> Op | None:
    """The dynamic_update_slice writing `cache` last before the attention, in place, over
    the very elements the attention reads (a layer's slice of stacked caches, or the whole
    buffer; an earlier writer is the copy an undonated cache starts with; the attention may
    read each element for several heads, along a stride 0)."""
    end = graph.ops.index(attention)
    writers = [w for w in links.writers.get(id(cache.buffer), [])
               if graph.ops.index(w) < end and any(t.overlaps(cache) for t in w.outputs)]
    if not writers or writers[-1].kind != "dynamic_update_slice":
        return None
    append = writers[-1]
    update, *starts, dst = append.inputs
    out = append.outputs[0]
    if (dst.buffer is not cache.buffer or out.buffer is not cache.buffer
            or out.offset != dst.offset or not dst.is_contiguous or dst.dtype != update.dtype
            or cache.dtype != dst.dtype or cache.offset != dst.offset
            or math.prod(n for n, s in zip(cache.shape, walk(cache), strict=True) if s) != dst.size
            or cache.span() != dst.span()):
        return None
    return append


def _append_parts(append: Op):
    """(update, pos, axis, whether pos wraps) of an append of one row at a scalar pos, every
    other axis whole; else None."""
    update, *starts, _ = append.inputs
    a = append.attrs
    dynamic = [d for d, s in enumerate(starts) if s.buffer.role is not Role.CONSTANT]
    if (len(dynamic) != 1 or a["sizes"][dynamic[0]] != 1
            or any(a["sizes"][d] != a["dst_shape"][d] for d in range(len(starts))
                   if d != dynamic[0])
            or starts[dynamic[0]].dtype != np.int32 or starts[dynamic[0]].size != 1):
        return None
    axis = dynamic[0]
    return update, starts[axis], axis, bool((a["wrap_mask"] >> axis) & 1)


def _update_offsets(append: Op, cache: Tensor, strides, B: int, B1: int, width: int,
                    axis: int):
    """[B, width] offsets in the append's update of the element the attention reads at
    (b, row pos, d), or None."""
    update, dst = append.inputs[0], append.inputs[-1]
    dst_shape = append.attrs["dst_shape"]
    b = np.arange(B)[:, None]
    at = (cache.offset - dst.offset + (b // B1) * strides[0] + (b % B1) * strides[1]
          + np.arange(width) * strides[3])
    if at.min() < 0 or at.max() >= int(np.prod(dst_shape)):
        return None
    index = np.unravel_index(at, dst_shape)
    if (index[axis] != 0).any():
        return None
    return update.offset + sum(np.asarray(i, np.int64) * s
                               for i, s in zip(index, update.strides, strict=True))


def _affine(offsets: np.ndarray, B: int, B1: int, like: Tensor) -> Tensor | None:
    """offsets [B, width] as a view [B // B1, B1, width] of `like`'s buffer, if affine."""
    grid = offsets.reshape(B // B1, B1, -1)
    base = int(grid[0, 0, 0])
    strides = tuple(int(grid[tuple(1 if a == d else 0 for a in range(3))]) - base
                    if grid.shape[d] > 1 else 0 for d in range(3))
    expected = base + sum(np.arange(n).reshape([-1 if a == d else 1 for a in range(3)]) * s
                          for d, (n, s) in enumerate(zip(grid.shape, strides, strict=True)))
    if base < 0 or min(strides) < 0 or not np.array_equal(grid, expected):
        return None
    return Tensor(grid.shape, like.dtype, like.buffer, base, strides)


def _nothing_between(graph: Graph, removed: list[Op], attention: Op, reads: list[Tensor],
                     appends: list[tuple[Op, Tensor]]) -> bool:
    """Whether the ops left between the first folded op and the attention leave alone what
    the attention now reads, and those after each append its cache (before it, the copy
    that starts an undonated cache still comes first)."""
    end = graph.ops.index(attention)
    gone = {id(op) for op in removed}

    def left(first: int) -> list[Op]:
        return [op for op in graph.ops[first:end] if id(op) not in gone]

    for op in left(min(graph.ops.index(op) for op in removed)):
        if any(w.overlaps(t) for w in op.outputs + op.attrs.get("writes_within", [])
               for t in reads):
            return False
    for append, cache in appends:
        for op in left(graph.ops.index(append)):
            touched = op.inputs + op.outputs + op.attrs.get("writes_within", [])
            if any(t.overlaps(cache) for t in touched):
                return False
    return True
