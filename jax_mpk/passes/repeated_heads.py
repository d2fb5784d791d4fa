"""Repeated key and value heads read in place by the matmuls that read their repeat.

Grouped-query attention written with `jnp.repeat(cache, group, axis=heads)` (Hugging Face's
repeat_kv; the Qwen3 example model) copies the whole cache into one head per query head
every step: an elementwise copy whose source view does not move along the group axis. Each
matmul reading the copy with its batch over the heads reads the source instead: the batch
splits into (kv head, group), and the group, along which the source does not move, becomes
the rows of the other operand where it has one row (or its columns where it has one
column), as the grouped form (`bskgd,btkd->bkgst`) computes it. The copy then has no readers
and goes, and the attention's matmuls are the ones `fuse_decode_attention` takes.
"""

from __future__ import annotations

from jax_mpk.ir import Graph, Op, Tensor
from jax_mpk.passes.dataflow import Links, fold_into_matmuls, is_plain_copy


def read_repeated_heads_in_place(graph: Graph) -> None:
    fold_into_matmuls(graph, _fold_repeat)


def _fold_repeat(links: Links, copy: Op, readers: list[Op]):
    if not is_plain_copy(copy) or links.sole_writer(copy.outputs[0], readers) is not copy:
        return None
    src, dst = copy.inputs[0], copy.outputs[0]
    repeated = [d for d, (n, s) in enumerate(zip(src.shape, src.strides, strict=True))
                if s == 0 and n > 1]
    if len(repeated) != 1 or repeated[0] == 0 or src.shape != dst.shape:
        return None
    return [copy], [_grouped(m, src, dst, repeated[0]) for m in readers], [src]


def _grouped(matmul: Op, src: Tensor, dst: Tensor, g_axis: int) -> Op | None:
    """The matmul reading src where it read dst, the group axis g_axis moved from its batch
    into the other operand's single row or column; None where that does not apply."""
    a = matmul.attrs
    at = 0 if matmul.inputs[0].buffer is dst.buffer else 1
    # x and w alone: an epilogue's operands are laid out as the batch and rows it had.
    if len(matmul.inputs) != 2 or matmul.inputs[1 - at].buffer is dst.buffer:
        return None
    kv_axis = g_axis - 1
    G, kv_heads = dst.shape[g_axis], dst.shape[kv_axis]
    B, B1 = a["B"], a["B1"]
    key, other_key = ("x_strides", "w_strides") if at == 0 else ("w_strides", "x_strides")
    strides, other = list(a[key]), list(a[other_key])
    # The batch's inner index walks the heads: kv head, then its group.
    if (B1 != kv_heads * G or strides[1] != dst.strides[g_axis]
            or dst.strides[kv_axis] != G * dst.strides[g_axis]):
        return None
    # The other operand has one row (x) or one column (w): the group becomes that axis.
    free = 2 if at == 1 else 3
    if (a["M"] if at == 1 else a["N"]) != 1:
        return None
    if matmul.inputs[at].offset != dst.offset:
        return None
    sizes = [B // B1, None, *((a["M"], a["K"]) if at == 0 else (a["K"], a["N"]))]
    mapped = [0, src.strides[kv_axis], 0, 0]
    for i in (0, 2, 3):
        mapped[i] = _source_stride(strides[i], sizes[i], src, dst, (kv_axis, g_axis))
        if mapped[i] is None:
            return None
    head = other[1]
    other[1], other[free] = G * head, head
    out = list(a.get("out_strides", (a["M"] * a["N"], a["N"], 1)))
    out[0], out[free - 1] = G * out[0], out[0]
    attrs = {**a, "B": B // G, "B1": kv_heads, key: tuple(mapped), other_key: tuple(other),
             "out_strides": tuple(out), ("M" if at == 1 else "N"): G}
    inputs = list(matmul.inputs)
    inputs[at] = src
    return Op("matmul", inputs, matmul.outputs, attrs, matmul.source, matmul.label)


def _source_stride(stride: int, size: int, src: Tensor, dst: Tensor, heads) -> int | None:
    """src's stride for a dim of `size` elements that walks one axis of dst (not the heads)
    with `stride`; 0 for a dim of one element; None where it walks no axis of dst whole."""
    if size == 1:
        return 0
    for d, (n, s) in enumerate(zip(dst.shape, dst.strides, strict=True)):
        if d not in heads and s == stride and size <= n:
            return src.strides[d]
    return None
