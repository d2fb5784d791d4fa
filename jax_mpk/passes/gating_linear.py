"""A gating silu(g) * up folded into the linears that read it.

In a gated MLP the gating is an elementwise stage between the gate/up projections and the
down projection: a dependent stage of small tasks in every layer. Where only matmuls read
its result, each of those matmuls reads g and up instead and computes the gating on the
rows of x it stages (MATMUL_GATE in jax_mpk/task_kinds.py), and the stage goes.

Matched strictly on the program, in one float dtype (the registers hold float32, as in
the elementwise interpreter, and the result rounds once): the product of `up` and
`g * logistic(g)`, either order in each product, with g loaded twice or once. g and up
are laid out as the result, so a matmul's view of the result is the same view of each.
"""

from __future__ import annotations

from jax_mpk.ir import Graph, Op, Tensor
from jax_mpk.passes.dataflow import Links, fold_into_matmuls, same_view, walks
from jax_mpk.task_kinds import Opcode, is_float


def fold_gating_into_linears(graph: Graph, max_rows: int | None = None) -> None:
    """max_rows: fold only into matmuls of fewer rows of x (None: any). Every task of a
    matmul recomputes the gating of all its rows (a logistic and a division an element):
    at 8 rows on tensor cores that was 6 µs of each of the batch-8 down projection's tasks,
    against one elementwise stage when the gating stays (session 19)."""
    fold_into_matmuls(graph, lambda links, op, users: _fold_gating(links, op, users, max_rows))


def _fold_gating(links: Links, gating: Op, users: list[Op], max_rows: int | None):
    out = gating.outputs[0]
    factors = _silu_times_up(gating) if links.sole_writer(out, users) is gating else None
    if factors is None:
        return None
    g, up = factors
    return [gating], [_gated_matmul(u, out, g, up, max_rows) for u in users], (g, up)


def _silu_times_up(op: Op) -> tuple[Tensor, Tensor] | None:
    """(g, up) when op writes silu(g) * up, all of one float dtype and layout; else None."""
    instrs, out = op.attrs["instrs"], op.outputs[0]
    dtype = out.dtype
    if not is_float(dtype) or any(i.dtype != dtype for i in instrs):
        return None
    for t in op.inputs:
        if t.dtype != dtype or t.shape != out.shape or not walks(t, out.strides):
            return None
    last = instrs[-1]
    if last.opcode != Opcode.MUL:
        return None
    for silu, up in (last.args, last.args[::-1]):
        g, u = _silu_of(instrs, op.inputs, silu), _load(instrs, up)
        if g is not None and u is not None and not same_view(op.inputs[g], op.inputs[u]):
            return op.inputs[g], op.inputs[u]
    return None


def _load(instrs, r: int) -> int | None:
    ins = instrs[r]
    return ins.imm if ins.opcode == Opcode.LOAD else None


def _silu_of(instrs, inputs: list[Tensor], r: int) -> int | None:
    """The input index of g when register r is g * logistic(g), either order."""
    ins = instrs[r]
    if ins.opcode != Opcode.MUL:
        return None
    for g, sigmoid in (ins.args, ins.args[::-1]):
        at, s = _load(instrs, g), instrs[sigmoid]
        if at is None or s.opcode != Opcode.LOGISTIC:
            continue
        inner = _load(instrs, s.args[0])
        if inner is not None and same_view(inputs[inner], inputs[at]):
            return at
    return None


def _gated_matmul(matmul: Op, gated: Tensor, g: Tensor, up: Tensor,
                  max_rows: int | None) -> Op | None:
    """The matmul reading g and up in place of their gating, or None where its kernel paths
    would not stage x (x streamed as the weights), it already folds something in, or it has
    max_rows rows or more."""
    from jax_mpk.tiling import _stream_x

    a = matmul.attrs
    view = matmul.inputs[0]
    if (view.buffer is not gated.buffer or "norm" in a or "gate" in a or "extent_axis" in a
            or (max_rows is not None and a["M"] >= max_rows)
            or _stream_x(a, "bias" in a)
            or any(t.buffer is gated.buffer for t in matmul.inputs[1:])):
        return None
    shift = view.offset - gated.offset
    inputs = [g.view(view.shape, view.strides, shift), *matmul.inputs[1:]]
    epilogue = int("residual" in a) + int("bias" in a)
    inputs.insert(2 + epilogue, up.view(view.shape, view.strides, shift))
    # Named for the gating it now computes (a down projection was a residual_linear).
    return Op("matmul", inputs, matmul.outputs, {**a, "gate": True}, matmul.source, "gated_mlp")
