"""A cache append folded into the ops that compute what it appends.

`dynamic_update_slice(cache, update, (0, pos, 0, 0))` copies `update` into row `pos` of a
KV cache once the ops computing it are done: in a decoder, the two elementwise ops of k's
RoPE (one per half of the rotation). Where elementwise ops alone write `update` and only the
append reads it, each of them writes its part straight into the cache at the dynamic row
(ElementwiseProgram's dynamic row, clamped as the append clamps its start) and the append
goes: one task and one hop fewer between RoPE and attention. Such a write names the whole
cache's rows as the place it may land (`writes_within`: its own part of the row, at every row
the clamped start allows), so every reader of the cache waits for it while the writers of
one update's disjoint parts (the two halves of a RoPE rotation) stay independent.
"""

from __future__ import annotations

import math

import numpy as np

from jax_mpk.ir import Graph, Op, Role, Tensor, contiguous_strides
from jax_mpk.passes.dataflow import Links


def fold_cache_appends(graph: Graph) -> None:
    for append in [op for op in graph.ops if op.kind == "dynamic_update_slice"]:
        writers = _foldable(graph, Links(graph), append)
        if writers is None:
            continue
        update, *starts, cache = append.inputs
        a = append.attrs
        axis = next(d for d, s in enumerate(starts) if s.buffer.role is not Role.CONSTANT)
        dst_strides = contiguous_strides(a["dst_shape"])
        starts_possible = a["dst_shape"][axis] - a["sizes"][axis] + 1
        for w in writers:
            place = _place_in(w.outputs[0], a["sizes"], dst_strides)
            out = w.outputs[0]
            w.outputs = [Tensor(out.shape, out.dtype, cache.buffer, cache.offset + place[0],
                                place[1])]
            w.attrs["writes_within"] = [w.outputs[0].view((starts_possible, *out.shape),
                                                          (dst_strides[axis], *place[1]))]
            pos = starts[axis]
            w.inputs = w.inputs + [Tensor(out.shape, pos.dtype, pos.buffer, pos.offset,
                                          (0,) * len(out.shape))]
            w.attrs["dynamic_row"] = (len(w.inputs) - 1, dst_strides[axis], a["dst_shape"][axis],
                                      a["sizes"][axis], (a["wrap_mask"] >> axis) & 1)
        moved = {id(w) for w in writers}
        ordered = [op for op in graph.ops if id(op) in moved]
        graph.ops = [op for op in graph.ops if id(op) not in moved]
        at = graph.ops.index(append)
        graph.ops[at:at + 1] = ordered


def _foldable(graph: Graph, links: Links, append: Op) -> list[Op] | None:
    """The elementwise ops that write the whole of the append's update, if it may fold."""
    update, *starts, cache = append.inputs
    a = append.attrs
    dynamic = [d for d, s in enumerate(starts) if s.buffer.role is not Role.CONSTANT]
    # Every other axis is appended whole, so its start clamps to 0 whatever it holds.
    if (len(dynamic) != 1 or any(a["sizes"][d] != a["dst_shape"][d]
                                 for d in range(len(starts)) if d != dynamic[0])
            or starts[dynamic[0]].dtype != np.int32 or starts[dynamic[0]].size != 1
            or not cache.is_contiguous or cache.dtype != update.dtype
            or update.buffer.role is not Role.INTERMEDIATE or id(update.buffer) in links.results
            or not update.is_contiguous or update.offset or update.size != math.prod(a["sizes"])
            or len(links.readers.get(id(update.buffer), [])) != 1):
        return None
    writers = links.writers.get(id(update.buffer), [])
    if not writers or any(w.kind != "elementwise" or len(w.outputs) != 1
                          or "dynamic_row" in w.attrs or w.outputs[0].dtype != update.dtype
                          for w in writers):
        return None
    if sum(w.outputs[0].size for w in writers) != update.size or any(
            x.outputs[0].overlaps(y.outputs[0])
            for i, x in enumerate(writers) for y in writers[i + 1:]):
        return None
    if any(_place_in(w.outputs[0], a["sizes"], contiguous_strides(a["dst_shape"])) is None
           for w in writers):
        return None
    # The writers move to where the append was (what comes between may touch the cache, as
    # the copy that starts an undonated one does): nothing between may write what they read.
    end = graph.ops.index(append)
    for w in writers:
        read = {id(t.buffer) for t in w.inputs}
        if any(id(t.buffer) in read for op in graph.ops[graph.ops.index(w) + 1:end]
               for t in op.outputs):
            return None
    return writers


def _place_in(view: Tensor, sizes, dst_strides) -> tuple[int, tuple[int, ...]] | None:
    """(offset, strides) in the cache, at row 0, of a view of the contiguous update of shape
    `sizes`; None if its elements do not land on one strided view there."""
    grid = np.indices(view.shape).reshape(len(view.shape), -1)
    element = view.offset + np.asarray(view.strides, np.int64) @ grid
    if element.size and (element.min() < 0 or element.max() >= math.prod(sizes)):
        return None
    index = np.unravel_index(element, sizes)
    placed = sum(np.asarray(i, np.int64) * s for i, s in zip(index, dst_strides, strict=True))
    offset = int(placed[0]) if placed.size else 0
    strides = []
    for d, n in enumerate(view.shape):
        step = np.zeros(len(view.shape), np.int64)
        step[d] = 1
        at = int(np.ravel_multi_index(step, view.shape)) if n > 1 else 0
        strides.append(int(placed[at]) - offset if n > 1 else 0)
    if not np.array_equal(placed, offset + np.asarray(strides, np.int64) @ grid):
        return None
    return offset, tuple(strides)
