"""An RMS norm folded into the linears that read it.

A norm is three ops and three dependent stages: the squares of x, their sum over each row,
and the scaled rows. Where only matmuls read the scaled rows, each of those matmuls reads x
instead and normalizes the rows it stages (MATMUL_NORM in jax_mpk/task_kinds.py): every
matmul task sums its rows' squares itself (x is a few KiB a row), and the three stages go.

Matched strictly on the programs, with either association of the product:
- squares: `f32(x) * f32(x)`, `square(f32(x))` or `integer_pow(f32(x), 2)`;
- sums: a SUM over the last axis of the squares, read only by the scaled rows;
- scaled rows: a product of `f32(x)` (or `f32(x) - 0`), `1 / sqrt(sum / K + eps)` (as
  RSQRT, `integer_pow(sqrt, -1)` or `1 / sqrt`) and one of `f32(scale)` or
  `offset + f32(scale)` (scale a [K] vector), cast to its dtype.
The kernel computes `x * inv * gain` left to right; a norm whose product associates
otherwise (Flax's `x * (inv * scale)`) may differ in the last float32 bit before the cast,
inside the tolerance table. Layer norms (a mean subtracted) stay as they are.
"""

from __future__ import annotations

import numpy as np

from jax_mpk.ir import Graph, Op, Tensor, contiguous_strides
from jax_mpk.passes.dataflow import Links, fold_into_matmuls, same_view, walks
from jax_mpk.task_kinds import Opcode, Reducer, const_value, float32_input, is_float

# kernels/tasks/matmul.cuh: a task normalizes x where it stages all of x before its loops
# (MatmulTask::stages_whole): at most kStagedRows rows, kStagedX floats, rows of whole
# 16-byte vectors (buffers are 256-byte aligned), all of K (the tiler splits no K then).
# On tensor cores (tiling.tensor_cores_normalize) up to MMA_MAX_ROWS rows, 16-bit pairs.
MAX_NORM_ROWS = 4
STAGED_FLOATS = 16384


def fold_norms_into_linears(graph: Graph, device=None) -> None:
    """device: the DeviceSpec the graph is tiled for (None: no tensor cores)."""
    fold_into_matmuls(graph, lambda links, op, users: _fold_norm(links, op, users, device))


def _fold_norm(links: Links, scaled: Op, users: list[Op], device):
    norm = _rms_norm(links, scaled, users)
    if norm is None:
        return None
    x, scale, attrs, chain = norm
    folded = [_normed_matmul(u, scaled.outputs[0], x, scale, attrs, device) for u in users]
    return chain, folded, (x, scale)


def _rms_norm(links: Links, scaled: Op, users: list[Op]):
    """(x, scale, attrs, [squares, sums, scaled]) when `scaled` ends an RMS norm; else None."""
    from jax_mpk.tiling import MMA_MAX_ROWS

    if links.sole_writer(scaled.outputs[0], users) is not scaled:
        return None
    out = scaled.outputs[0]
    K = out.shape[-1] if out.shape else 0
    if not K or out.size // K > MMA_MAX_ROWS or out.strides != contiguous_strides(out.shape):
        return None
    instrs = scaled.attrs["instrs"]
    top = len(instrs) - 1
    if instrs[top].opcode == Opcode.CONVERT and instrs[top].dtype == out.dtype:
        top = instrs[top].args[0]
    elif out.dtype != np.float32:
        return None
    leaves = _product_leaves(instrs, top)
    inverse = [(r, _inverse_rms(instrs, r, K)) for r in leaves]
    inverse = [(r, found) for r, found in inverse if found is not None]
    if len(inverse) != 1:
        return None
    (inv_reg, (sums_at, eps)), = inverse
    rowwise = contiguous_strides(out.shape)
    sums = links.sole_writer(scaled.inputs[sums_at], [scaled])
    if (sums is None or sums.kind != "reduce" or sums.attrs["reducer"] != Reducer.SUM
            or sums.attrs["inner"] != 1 or sums.attrs["length"] != K
            or not walks(scaled.inputs[sums_at], contiguous_strides(out.shape[:-1]) + (0,))):
        return None
    squares = links.sole_writer(sums.inputs[0], [sums])
    x = None if squares is None or squares.kind != "elementwise" else _squared(squares)
    if x is None or x.shape != out.shape or not walks(x, rowwise) or not is_float(x.dtype):
        return None
    rest = [r for r in leaves if r != inv_reg]
    x_leaves = [r for r in rest if _x_leaf(instrs, r) is not None
                and same_view(scaled.inputs[_x_leaf(instrs, r)], x)]
    gains = [_gain(instrs, r) for r in rest if r not in x_leaves]
    if len(x_leaves) != 1 or len(gains) != 1 or gains[0] is None:
        return None  # a norm without a scale (or with more factors) stays
    scale_at, offset = gains[0]
    scale = scaled.inputs[scale_at]
    if not walks(scale, (0,) * (len(out.shape) - 1) + (1,)) or not is_float(scale.dtype):
        return None
    attrs = (float(eps), float(offset or 0.0), out.dtype)
    return x, scale.view((K,), (1,)), attrs, [squares, sums, scaled]


def _product_leaves(instrs, r: int) -> list[int]:
    """The registers a tree of float32 MULs at r multiplies together."""
    ins = instrs[r]
    if ins.opcode == Opcode.MUL and ins.dtype == np.float32:
        return _product_leaves(instrs, ins.args[0]) + _product_leaves(instrs, ins.args[1])
    return [r]


def _const(instrs, r: int) -> float | None:
    ins = instrs[r]
    return float(const_value(ins.imm, ins.dtype)) if ins.opcode == Opcode.CONST else None


def _x_leaf(instrs, r: int) -> int | None:
    ins = instrs[r]
    if ins.opcode == Opcode.SUB and _const(instrs, ins.args[1]) == 0.0:
        r = ins.args[0]
    return float32_input(instrs, r)


def _inverse_rms(instrs, r: int, K: int):
    """(input index of the sums, eps) when r is 1 / sqrt(sums / K + eps)."""
    ins = instrs[r]
    if ins.opcode == Opcode.RSQRT:
        inner = ins.args[0]
    elif (ins.opcode == Opcode.INTEGER_POW and ins.imm == -1
          and instrs[ins.args[0]].opcode == Opcode.SQRT):
        inner = instrs[ins.args[0]].args[0]
    elif (ins.opcode == Opcode.DIV and _const(instrs, ins.args[0]) == 1.0
          and instrs[ins.args[1]].opcode == Opcode.SQRT):
        inner = instrs[ins.args[1]].args[0]
    else:
        return None
    add = instrs[inner]
    if add.opcode != Opcode.ADD or add.dtype != np.float32:
        return None
    for mean, eps in (add.args, add.args[::-1]):
        div, eps_value = instrs[mean], _const(instrs, eps)
        if (eps_value is not None and div.opcode == Opcode.DIV
                and _const(instrs, div.args[1]) == float(K)
                and instrs[div.args[0]].opcode == Opcode.LOAD
                and instrs[div.args[0]].dtype == np.float32):
            return instrs[div.args[0]].imm, eps_value
    return None


def _gain(instrs, r: int):
    """(input index of the scale, offset or None) when r is f32(scale) or offset + f32(scale)."""
    ins = instrs[r]
    if ins.opcode == Opcode.ADD and ins.dtype == np.float32:
        for c, s in (ins.args, ins.args[::-1]):
            if _const(instrs, c) is not None and float32_input(instrs, s) is not None:
                return float32_input(instrs, s), _const(instrs, c)
        return None
    at = float32_input(instrs, r)
    return None if at is None else (at, None)


def _squared(op: Op) -> Tensor | None:
    """x when op writes f32(x)^2 (both factors the same view), else None."""
    instrs = op.attrs["instrs"]
    last = instrs[-1]
    if op.outputs[0].dtype != np.float32:
        return None
    if last.opcode == Opcode.MUL:
        a, b = (float32_input(instrs, r) for r in last.args)
    elif last.opcode == Opcode.SQUARE or (last.opcode == Opcode.INTEGER_POW and last.imm == 2):
        a = b = float32_input(instrs, last.args[0])
    else:
        return None
    if a is None or b is None or not same_view(op.inputs[a], op.inputs[b]):
        return None
    return op.inputs[a] if op.inputs[a].shape == op.outputs[0].shape else None


def _normed_matmul(matmul: Op, normed: Tensor, x: Tensor, scale: Tensor, attrs,
                   device) -> Op | None:
    """The matmul reading x and the norm's scale, normalizing as it stages; None when its
    rows are not the norm's rows in order (batched, offset, strided or swapped), or when its
    tasks would not stage all of x at once (more rows than the CUDA core paths take where it
    would not run on tensor cores, rows not of whole 16-byte vectors, or weights contiguous
    along neither n nor, at one row (a tied LM head), k)."""
    from jax_mpk.tiling import _stream_x, on_tensor_cores, tensor_cores_normalize

    a = matmul.attrs
    view = matmul.inputs[0]
    K = normed.shape[-1]
    w_dtype = matmul.inputs[1].dtype
    if device is not None and on_tensor_cores(device, a["M"], x.dtype, w_dtype, a["w_strides"],
                                              normed.dtype):
        fits = tensor_cores_normalize(device, a["M"], K, a["N"], x.dtype, a["w_strides"])
    else:
        fits = a["M"] <= MAX_NORM_ROWS and a["M"] * -(-K // 4) * 4 <= STAGED_FLOATS
    if (view.buffer is not normed.buffer or view.offset != normed.offset or a["B"] != 1
            or a["K"] != K or a["x_strides"][3] != 1 or (a["M"] > 1 and a["x_strides"][2] != K)
            or not fits
            or (K * x.dtype.itemsize) % 16 or (x.offset * x.dtype.itemsize) % 16
            or x.dtype.itemsize not in (2, 4)
            or not _stages_whole_weights(a["w_strides"], a["M"]) or "extent_axis" in a
            or "norm" in a or _stream_x(a, "bias" in a)
            or any(t.buffer is normed.buffer for t in matmul.inputs[1:])):
        return None
    epilogue = int("residual" in a) + int("bias" in a)
    inputs = [x.view(view.shape, view.strides, view.offset - normed.offset), *matmul.inputs[1:]]
    inputs.insert(2 + epilogue, scale)
    return Op("matmul", inputs, matmul.outputs, {**a, "norm": attrs}, matmul.source,
              matmul.label or "rms_norm")


def _stages_whole_weights(w_strides, M: int) -> bool:
    """MatmulTask::stages_whole's weight layouts: contiguous along n, or along k at one row."""
    along_n = w_strides[3] == 1 and w_strides[2] != 1
    return along_n or (w_strides[2] == 1 and M == 1)
