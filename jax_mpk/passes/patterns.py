"""Pattern passes: linear epilogues folded into the matmul, and the layers of a decoder
(norms, rope, attention, gated MLPs) recognized and labelled on their ops."""

from __future__ import annotations

import numpy as np

from jax_mpk.ir import Graph, Op, Role, Tensor, contiguous_strides
from jax_mpk.passes.dataflow import Links, is_plain_copy
from jax_mpk.task_kinds import Opcode, Reducer
from jax_mpk.tiling import _stream_x, op_dependencies


def _readers(graph: Graph) -> dict[int, list[Op]]:
    readers: dict[int, list[Op]] = {}
    for op in graph.ops:
        for t in op.inputs:
            readers.setdefault(id(t.buffer), []).append(op)
    return readers


def _whole(t: Tensor) -> bool:
    return t.offset == 0 and t.is_contiguous and t.nbytes == t.buffer.nbytes


def _opcodes(op: Op) -> list[Opcode]:
    return [i.opcode for i in op.attrs.get("instrs", ())]


def fold_linear_epilogues(graph: Graph) -> None:
    """matmul then `+ residual` or `+ bias` becomes one matmul with that epilogue."""
    changed = True
    while changed:
        changed = False
        readers = _readers(graph)
        outputs = {id(t.buffer) for t in graph.outputs}
        for op in graph.ops:
            if op.kind != "matmul":
                continue
            out = op.outputs[0]
            users = readers.get(id(out.buffer), [])
            if (len(users) != 1 or users[0].kind != "elementwise" or id(out.buffer) in outputs
                    or out.buffer.role is not Role.INTERMEDIATE):
                continue
            add = users[0]
            other = _added_operand(add, out)
            if other is None or add.outputs[0].dtype != out.dtype:
                continue
            between = graph.ops[graph.ops.index(op) + 1:graph.ops.index(add)]
            if any(w.overlaps(other) or w.overlaps(add.outputs[0])
                   for o in between for w in o.outputs):
                continue
            kind = _epilogue_kind(other, op)
            if kind is None:
                continue
            op.attrs[kind] = True
            if kind == "bias":
                lo = other.span()[0] // other.dtype.itemsize
                operand = Tensor((op.attrs["N"],), other.dtype, other.buffer, lo)
            else:
                operand = other
            # Operand order: x, w, residual, bias.
            position = 2 if kind == "residual" else len(op.inputs)
            op.inputs.insert(position, operand)
            op.outputs = [add.outputs[0]]
            op.label = "residual_linear" if "residual" in op.attrs else "linear_bias"
            graph.ops.remove(add)
            changed = True
            break


def _added_operand(add: Op, out: Tensor) -> Tensor | None:
    """The other operand of an elementwise op that is exactly `out + other`."""
    if _opcodes(add) != [Opcode.LOAD, Opcode.LOAD, Opcode.ADD] or len(add.inputs) != 2:
        return None
    first, second = add.inputs
    for mine, other in ((first, second), (second, first)):
        if (mine.buffer is out.buffer and _whole(mine) and mine.shape == out.shape
                and other.buffer is not out.buffer and other.dtype == out.dtype):
            return other
    return None


def _epilogue_kind(other: Tensor, matmul: Op) -> str | None:
    """"bias" where other repeats one contiguous row of N, else "residual" where it is laid
    out like the matmul's result; None where neither is free or fits."""
    n = matmul.attrs["N"]
    dims = [(d, s) for d, s in zip(other.shape, other.strides, strict=True) if d != 1]
    while dims and dims[0][1] == 0:
        dims.pop(0)
    row = 1
    chained = True
    for d, s in reversed(dims):
        chained &= s == row
        row *= d
    kinds = []
    if chained and row == n and other.buffer.role in (Role.PARAM, Role.CONSTANT):
        kinds.append("bias")
    if other.is_contiguous and other.size == matmul.outputs[0].size:
        kinds.append("residual")
    return next((k for k in kinds if k not in matmul.attrs), None)


def fold_output_copies(graph: Graph) -> None:
    """A matmul whose result only a plain copy reads (a transpose into the layout the next
    op wants, as attention's values take) writes straight into the copy's destination."""
    links = Links(graph)
    for copy in list(graph.ops):
        if not is_plain_copy(copy):
            continue
        (src,), (dst,) = copy.inputs, copy.outputs
        matmul = links.sole_writer(src, [copy])
        if (matmul is None or matmul.kind != "matmul" or "residual" in matmul.attrs
                or "out_strides" in matmul.attrs or src.size != matmul.outputs[0].size):
            continue
        strides = _copied_strides(matmul.attrs, src, dst)
        at, end = graph.ops.index(matmul), graph.ops.index(copy)
        if strides is None or any(t.overlaps(dst) for op in graph.ops[at + 1:end]
                                  for t in op.inputs + op.outputs):
            continue
        links.swap([matmul, copy], [])
        matmul.outputs = [dst]
        matmul.attrs["out_strides"] = strides
        links.swap([], [matmul])
        graph.ops.remove(copy)


def fold_output_casts(graph: Graph) -> None:
    """A matmul whose 16-bit float result only a cast to float32 reads (an LM head's
    `logits.astype(float32)`) writes the cast's destination itself, rounding each element to
    its own dtype first (MATMUL_ROUND_BF16, MATMUL_ROUND_F16): one stage fewer."""
    links = Links(graph)
    for cast in list(graph.ops):
        if not _widening_cast(cast):
            continue
        (src,), (dst,) = cast.inputs, cast.outputs
        matmul = links.sole_writer(src, [cast])  # an intermediate, written whole
        if (matmul is None or matmul.kind != "matmul" or "residual" in matmul.attrs
                or "bias" in matmul.attrs or "out_strides" in matmul.attrs
                or not _whole(src) or src.shape != dst.shape or not dst.is_contiguous):
            continue
        out = matmul.outputs[0]
        at, end = graph.ops.index(matmul), graph.ops.index(cast)
        touched = [t for op in graph.ops[at + 1:end] for t in op.inputs + op.outputs]
        if any(t.overlaps(dst) for t in touched + matmul.inputs):  # e.g. dst donated by x
            continue
        links.swap([matmul, cast], [])
        matmul.outputs = [dst.view(out.shape, contiguous_strides(out.shape))]
        matmul.attrs["round"] = out.dtype
        graph.ops.remove(cast)
        links.swap([], [matmul])


def _widening_cast(op: Op) -> bool:
    """An elementwise op of one bf16 or f16 input that only converts it to float32."""
    instrs = op.attrs.get("instrs", ())
    return (op.kind == "elementwise" and len(op.inputs) == 1 and len(instrs) == 2
            and instrs[0].opcode == Opcode.LOAD and instrs[0].imm == 0
            and instrs[0].dtype == op.inputs[0].dtype
            and op.inputs[0].dtype.name in ("bfloat16", "float16")
            and instrs[1].opcode == Opcode.CONVERT and instrs[1].args == (0,)
            and instrs[1].dtype == np.float32 and op.outputs[0].dtype == np.float32)


def _copied_strides(attrs: dict, src: Tensor, dst: Tensor) -> tuple[int, int, int] | None:
    """Strides in dst of the matmul result's (b, m, n), where `src` reads that contiguous
    [B, M, N] result once over and the copy stores it at `dst`; None where an axis does not
    land on one stride of dst."""
    dims = [(n, s, d) for n, s, d in zip(src.shape, src.strides, dst.strides, strict=True)
            if n > 1]
    if src.offset or any(d < 0 for _, _, d in dims):
        return None
    strides, used = [], 0
    for extent, stride in ((attrs["B"], attrs["M"] * attrs["N"]), (attrs["M"], attrs["N"]),
                           (attrs["N"], 1)):
        if extent == 1:
            strides.append(0)
            continue
        group = sorted((dim for dim in dims if stride <= dim[1] < stride * extent),
                       key=lambda dim: -dim[1])
        span = 1
        for n, s, _ in reversed(group):
            if s != stride * span:
                return None
            span *= n
        if span != extent or any(d0 != d1 * n1 for (_, _, d0), (n1, _, d1)
                                 in zip(group, group[1:], strict=False)):
            return None
        strides.append(group[-1][2])
        used += len(group)
    return tuple(strides) if used == len(dims) else None


def label_layers(graph: Graph) -> None:
    """Name the decoder layer each op belongs to, for the report and for fused task kinds."""
    producer = {}
    for op in graph.ops:
        for t in op.outputs:
            producer[id(t.buffer)] = op
    readers = _readers(graph)
    cache_buffers = set()  # KV caches and their relayouts
    for op in graph.ops:
        if op.kind == "dynamic_update_slice" or (
                is_plain_copy(op) and id(op.inputs[0].buffer) in cache_buffers):
            cache_buffers.add(id(op.outputs[0].buffer))
    for op in graph.ops:
        sources = [producer.get(id(t.buffer)) for t in op.inputs]
        codes = _opcodes(op)
        if op.kind == "reduce" and op.attrs["reducer"] == Reducer.SUM and op.attrs["inner"] == 1:
            users = readers.get(id(op.outputs[0].buffer), [])
            if any(Opcode.RSQRT in _opcodes(u) or Opcode.SQRT in _opcodes(u) for u in users):
                sums = {id(s) for u in users for s in
                        (producer.get(id(t.buffer)) for t in u.inputs)
                        if s is not None and s.kind == "reduce"}
                label = "layer_norm" if len(sums) > 1 else "rms_norm"
                for o in [op, *users]:
                    o.label = o.label or label
        elif op.kind == "reduce" and op.attrs["reducer"] == Reducer.MAX:
            users = readers.get(id(op.outputs[0].buffer), [])
            if any(Opcode.EXP in _opcodes(u) for u in users):
                for o in [op, *users]:
                    o.label = o.label or "attention_softmax"
        elif op.kind == "matmul" and any(id(t.buffer) in cache_buffers for t in op.inputs):
            op.label = op.label or "attention"
        elif op.kind == "elementwise" and any(
                s is not None and s.kind == "gather_rows"
                and s.inputs[0].buffer.role is Role.CONSTANT for s in sources):
            op.label = op.label or "rope"
        elif (op.kind == "elementwise" and Opcode.MUL in codes
              and any(c in codes for c in (Opcode.LOGISTIC, Opcode.ERF, Opcode.TANH))
              and len({id(s) for s in sources if s is not None and s.kind == "matmul"}) == 2):
            op.label = op.label or "gated_mlp"


def group_sibling_matmuls(graph: Graph) -> None:
    """Matmuls that read the same x and do not depend on one another (a layer's q, k and v
    projections; an MLP's gate and up) share the device's workers: each member records the
    N of every member, in graph order, as attrs["group_columns"], from which the tiler
    (jax_mpk.tiling._matmul_tasks) sizes their column tiles and decides split-K together.
    The ops stay separate and read their weights in place; their descriptors are unchanged.
    Only ops tiled by whole columns qualify (weights contiguous along n, w not swapped in
    as x, no live extent). Runs last: a later pass that removed a member would leave the
    others counting its columns."""
    candidates: dict[tuple, list[int]] = {}
    for i, op in enumerate(graph.ops):
        a = op.attrs
        if (op.kind != "matmul" or a["w_strides"][3] != 1 or "extent_axis" in a
                or _stream_x(a, "bias" in a)):
            continue
        x = op.inputs[0]
        key = (id(x.buffer), x.offset, x.shape, x.strides, a["B"], a["B1"], a["M"], a["K"],
               a["x_strides"])
        candidates.setdefault(key, []).append(i)
    for members in candidates.values():
        if len(members) < 2:
            continue
        # Any chain of dependencies between two members runs through the ops between them.
        lo = members[0]
        _, ancestors = op_dependencies(graph.ops[lo:members[-1] + 1])
        groups: list[list[int]] = []
        for i in members:
            group = next((g for g in groups
                          if not any(ancestors[i - lo] >> (j - lo) & 1 for j in g)), None)
            if group is None:
                groups.append([i])
            else:
                group.append(i)
        for group in groups:
            if len(group) > 1:
                columns = tuple(graph.ops[i].attrs["N"] for i in group)
                for i in group:
                    graph.ops[i].attrs["group_columns"] = columns
