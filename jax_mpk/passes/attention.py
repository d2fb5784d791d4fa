"""Attention over a KV cache reads only the live part of the cache.

A decode or prefill step masks its scores with `t <= pos + s` (built from iota and the
position) before the softmax. This pass finds that mask, proves that every score past
`extent = max_s(pos + s) + 1` is replaced by a huge negative constant and so becomes an
exact zero probability, and then bounds both cache matmuls by the runtime extent: the
scores matmul skips cache rows past it (writing zeros the mask discards) and the values
matmul contracts over live rows only. The graph stays fixed; extent is computed on the
device from the position each call.
"""

from __future__ import annotations

import enum

import numpy as np

from jax_mpk.ir import Buffer, Graph, Op, Role, Tensor
from jax_mpk.passes.dataflow import is_plain_copy
from jax_mpk.task_kinds import Instr, Opcode, Reducer, const_value

HUGE_NEGATIVE = -1e20  # exp(x - max) of anything below this is 0.0 in float32


class Masked(enum.Enum):
    """What a chain tensor holds where the mask is off."""

    HUGE_NEGATIVE = "huge negative"
    ZERO = "zero"
    ROW_STATISTIC = "row statistic"  # a max or sum over T: finite; a sum of exps is >= 1
    ANY = "any"


def bound_attention_to_live_cache(graph: Graph) -> None:
    for op in list(graph.ops):
        if op.kind == "elementwise":
            _bound_from_mask(graph, op)


def _bound_from_mask(graph: Graph, masked_op: Op) -> None:
    instrs = masked_op.attrs["instrs"]
    found = find_mask(masked_op)
    if found is None:
        return
    select_at, t_dim, rhs_at, inclusive = found
    scores_at = instrs[select_at].args[2]
    loads = [i for i in subtree(instrs, scores_at) if instrs[i].opcode == Opcode.LOAD]
    if len(loads) != 1:
        return
    scores = masked_op.inputs[instrs[loads[0]].imm]
    if sum(t.buffer is scores.buffer for t in masked_op.inputs) != 1:
        return
    # Follow the scores back through layout copies to the matmul that reads the K cache.
    t_stride = scores.strides[t_dim]
    chain = []
    tensor = scores
    while True:
        writer = _sole_writer(graph, tensor)
        if writer is None or _readers(graph, tensor.buffer) != 1:
            return
        if is_plain_copy(writer):
            t_stride = _map_stride(writer.outputs[0], writer.inputs[0], t_stride)
            if t_stride is None:
                return
            chain.append(writer)
            tensor = writer.inputs[0]
            continue
        break
    scores_matmul = writer
    if scores_matmul.kind != "matmul" or "extent_axis" in scores_matmul.attrs:
        return
    axis = _cache_axis(graph, scores_matmul, t_stride, masked_op.outputs[0].shape[t_dim])
    if axis is None:
        return
    values_matmul = _values_matmul(graph, masked_op, t_dim)
    if values_matmul is None:
        return
    values_matmul, k_axis = values_matmul
    position = min(graph.ops.index(scores_matmul), graph.ops.index(values_matmul))
    extent = _extent_op(graph, masked_op, rhs_at, inclusive, position)
    if extent is None:
        return
    for matmul, matmul_axis in ((scores_matmul, axis), (values_matmul, k_axis)):
        matmul.attrs["extent_axis"] = matmul_axis
        matmul.inputs.append(extent)
        matmul.label = "attention"


def find_mask(op: Op):
    """(select, t dim, rhs, inclusive) of `select(iota_t <= rhs, huge negative, scores)`."""
    instrs = op.attrs["instrs"]
    for at, ins in enumerate(instrs):
        if ins.opcode != Opcode.SELECT:
            continue
        pred, off, on = (instrs[a] for a in ins.args)
        if off.opcode != Opcode.CONST or float(const_value(off.imm, off.dtype)) > HUGE_NEGATIVE:
            continue
        if pred.opcode not in (Opcode.LE, Opcode.LT, Opcode.GE, Opcode.GT):
            continue
        a, b = pred.args
        if pred.opcode in (Opcode.GE, Opcode.GT):
            a, b = b, a
        if instrs[a].opcode != Opcode.IOTA:
            continue
        t_dim = instrs[a].imm
        if not _monotone_scalar(op, b, t_dim):
            continue
        return at, t_dim, b, pred.opcode in (Opcode.LE, Opcode.GE)
    return None


def subtree(instrs, at) -> list[int]:
    seen, stack = set(), [at]
    while stack:
        i = stack.pop()
        if i not in seen:
            seen.add(i)
            stack.extend(instrs[i].args)
    return sorted(seen)


def _monotone_scalar(op: Op, at: int, t_dim: int) -> bool:
    """Whether instruction `at` is a sum of positions, iotas off t_dim and constants."""
    instrs = op.attrs["instrs"]
    for i in subtree(instrs, at):
        ins = instrs[i]
        if ins.opcode == Opcode.IOTA and ins.imm == t_dim:
            return False
        if ins.opcode == Opcode.LOAD:
            t = op.inputs[ins.imm]
            if any(t.strides) or t.buffer.role is Role.CONSTANT:
                return False
        elif ins.opcode == Opcode.SUB:
            if instrs[ins.args[1]].opcode != Opcode.CONST:
                return False
        elif ins.opcode not in (Opcode.IOTA, Opcode.CONST, Opcode.ADD, Opcode.CONVERT):
            return False
        if np.dtype(ins.dtype).kind not in "iu":
            return False
    return True


def _extent_op(graph: Graph, op: Op, rhs_at: int, inclusive: bool, before: int):
    """An op computing max over the mask's rows of the rhs (+1 where t == rhs is live)."""
    instrs = op.attrs["instrs"]
    keep = subtree(instrs, rhs_at)
    new_index = {}
    program: list[Instr] = []
    inputs: list[Tensor] = []
    shape = op.outputs[0].shape
    i32 = np.dtype(np.int32)
    for i in keep:
        ins = instrs[i]
        if ins.opcode == Opcode.LOAD:
            t = op.inputs[ins.imm]
            scalar = t.view((), ())
            producer = next((k for k, o in enumerate(graph.ops)
                             if any(w.buffer is t.buffer for w in o.outputs)), None)
            if producer is not None and producer >= before:
                return None
            inputs.append(scalar)
            ins = ins._replace(imm=len(inputs) - 1)
        elif ins.opcode == Opcode.IOTA:
            ins = Instr(Opcode.CONST, ins.dtype, (), shape[ins.imm] - 1)
        else:
            ins = ins._replace(args=tuple(new_index[a] for a in ins.args))
        new_index[i] = len(program)
        program.append(ins)
    last = len(program) - 1
    if program[last].dtype != i32:
        program.append(Instr(Opcode.CONVERT, i32, (last,)))
        last += 1
    if inclusive:
        program += [Instr(Opcode.CONST, i32, (), 1), Instr(Opcode.ADD, i32, (last, last + 1))]
    extent = Tensor((), i32, Buffer(4, Role.INTERMEDIATE, "extent"))
    graph.ops.insert(before, Op("elementwise", inputs, [extent], {"instrs": program},
                                op.source, "attention_extent"))
    return extent


def _sole_writer(graph: Graph, t: Tensor) -> Op | None:
    writers = [op for op in graph.ops if any(o.buffer is t.buffer for o in op.outputs)]
    if len(writers) != 1 or any(t.buffer is o.buffer for o in graph.outputs):
        return None
    out = writers[0].outputs[0]
    if out.offset or not out.is_contiguous or out.nbytes != out.buffer.nbytes:
        return None
    return writers[0]


def _readers(graph: Graph, buffer) -> int:
    return sum(any(t.buffer is buffer for t in op.inputs) for op in graph.ops)


def _map_stride(out: Tensor, src: Tensor, stride: int) -> int | None:
    """The stride in src's buffer of the dim that has `stride` in out's buffer."""
    dims = [d for d in range(len(out.shape)) if out.strides[d] == stride and out.shape[d] > 1]
    return src.strides[dims[0]] if len(dims) == 1 else None


def _cache_axis(graph: Graph, matmul: Op, t_stride: int, t_size: int) -> str | None:
    """"M" or "N" where the matmul's rows or columns are the T rows of a KV cache."""
    a = matmul.attrs
    M, N = a["M"], a["N"]
    if t_stride == N and M == t_size and _is_cache_rows(graph, matmul.inputs[0],
                                                        a["x_strides"][2], t_size):
        return "M"
    if t_stride == 1 and N == t_size and _is_cache_rows(graph, matmul.inputs[1],
                                                        a["w_strides"][3], t_size):
        return "N"
    return None


def _is_cache_rows(graph: Graph, t: Tensor, row_stride: int, t_size: int) -> bool:
    """Whether row_stride walks the sequence dim of a KV cache (t or a copy of it)."""
    while True:
        updates = [op for op in graph.ops if op.kind == "dynamic_update_slice"
                   and op.inputs[-1].buffer is t.buffer]
        if updates:
            a = updates[0].attrs
            shape = a["dst_shape"]
            for d in range(len(shape)):
                if shape[d] == t_size and int(np.prod(shape[d + 1:])) == row_stride:
                    return True
            return False
        writer = _sole_writer(graph, t)
        if writer is None or not is_plain_copy(writer):
            return False
        row_stride = _map_stride(writer.outputs[0], writer.inputs[0], row_stride)
        if row_stride is None:
            return False
        t = writer.inputs[0]


def _values_matmul(graph: Graph, masked_op: Op, t_dim: int):
    """(matmul, "K") contracting the probabilities over T, where the masked scores provably
    become exact zeros on the way there."""
    out = masked_op.outputs[0]
    masked = {id(out.buffer): (Masked.HUGE_NEGATIVE, out.strides[t_dim])}
    reduced = set()  # buffers of reductions over T
    at = graph.ops.index(masked_op)
    for op in graph.ops[at + 1:]:
        chain_inputs = [t for t in op.inputs if id(t.buffer) in masked]
        if not chain_inputs:
            continue
        if op.kind == "reduce":
            (src,) = op.inputs
            _, stride = masked[id(src.buffer)]
            if not (stride == 1 and op.attrs["inner"] == 1
                    and op.attrs["reducer"] in (Reducer.MAX, Reducer.SUM)):
                return None
            reduced.add(id(op.outputs[0].buffer))
        elif op.kind == "elementwise":
            result = _masked_value(op, masked, reduced)
            if result is None:
                return None
            masked[id(op.outputs[0].buffer)] = result
        elif op.kind == "matmul":
            return _contracting(op, chain_inputs, masked)
        else:
            return None
    return None


def _contracting(op: Op, chain_inputs, masked):
    (p,) = chain_inputs
    value, stride = masked[id(p.buffer)]
    a = op.attrs
    if value is not Masked.ZERO or "extent_axis" in a or len(op.inputs) != 2:
        return None
    k_stride = a["x_strides"][3] if p is op.inputs[0] else a["w_strides"][2]
    return (op, "K") if k_stride == stride else None


def _masked_value(op: Op, masked, reduced):
    """(what op's result holds where masked, its T stride), or None where unknown."""
    out = op.outputs[0]
    t_dims = set()
    for t in op.inputs:
        if id(t.buffer) in masked:
            _, stride = masked[id(t.buffer)]
            dims = [d for d in range(len(t.shape)) if t.strides[d] == stride and t.shape[d] > 1]
            if len(dims) != 1:
                return None
            t_dims.add(dims[0])
    if len(t_dims) != 1:
        return None
    (t_dim,) = t_dims
    values = []
    for ins in op.attrs["instrs"]:
        values.append(_abstract(ins, values, op, masked, reduced, t_dim))
    return values[-1], out.strides[t_dim]


def _abstract(ins, values, op, masked, reduced, t_dim) -> Masked:
    code = ins.opcode
    args = [values[a] for a in ins.args]
    if code == Opcode.LOAD:
        t = op.inputs[ins.imm]
        if id(t.buffer) in masked:
            return masked[id(t.buffer)][0]
        if id(t.buffer) in reduced and t.strides[t_dim] == 0:
            return Masked.ROW_STATISTIC
        return Masked.ANY
    if code == Opcode.CONST:
        v = float(const_value(ins.imm, ins.dtype))
        return Masked.ZERO if v == 0 else (Masked.HUGE_NEGATIVE if v <= HUGE_NEGATIVE
                                           else Masked.ANY)
    if code == Opcode.MAX and Masked.ROW_STATISTIC in args:
        return Masked.ROW_STATISTIC  # max(-inf, row max) of jax.nn.softmax
    if code == Opcode.EXP and args[0] is Masked.HUGE_NEGATIVE:
        return Masked.ZERO
    if code == Opcode.SUB and args == [Masked.HUGE_NEGATIVE, Masked.ROW_STATISTIC]:
        return Masked.HUGE_NEGATIVE
    if code == Opcode.DIV and args == [Masked.ZERO, Masked.ROW_STATISTIC]:
        return Masked.ZERO
    if code == Opcode.CONVERT and args[0] in (Masked.ZERO, Masked.HUGE_NEGATIVE):
        return args[0]
    return Masked.ANY
