"""Lowering rules: one function per jaxpr primitive, from input tensors to output tensors.

Shape primitives become views where the strides allow and copies where they do not;
elementwise primitives become one-instruction elementwise ops that the fusion pass merges.
"""

from __future__ import annotations

import functools
import math

import jax
import numpy as np
from jax import lax

from jax_mpk.frontend.builder import (
    GraphBuilder,
    UnsupportedError,
    const_instr,
    reshape_view,
    uniform_value,
)
from jax_mpk.ir import Tensor
from jax_mpk.task_kinds import MAX_SLICE_RANK, Instr, Opcode, Reducer

UNARY = {
    "neg": Opcode.NEG, "abs": Opcode.ABS, "sign": Opcode.SIGN, "exp": Opcode.EXP,
    "exp2": Opcode.EXP2, "log": Opcode.LOG, "log1p": Opcode.LOG1P, "expm1": Opcode.EXPM1,
    "tanh": Opcode.TANH, "logistic": Opcode.LOGISTIC, "erf": Opcode.ERF, "erfc": Opcode.ERFC,
    "rsqrt": Opcode.RSQRT, "sqrt": Opcode.SQRT, "sin": Opcode.SIN, "cos": Opcode.COS,
    "tan": Opcode.TAN, "cbrt": Opcode.CBRT, "floor": Opcode.FLOOR, "ceil": Opcode.CEIL,
    "not": Opcode.NOT, "is_finite": Opcode.IS_FINITE, "square": Opcode.SQUARE,
    "round": Opcode.ROUND,
}
BINARY = {
    "add": Opcode.ADD, "sub": Opcode.SUB, "mul": Opcode.MUL, "div": Opcode.DIV,
    "rem": Opcode.REM, "pow": Opcode.POW, "max": Opcode.MAX, "min": Opcode.MIN,
    "and": Opcode.AND, "or": Opcode.OR, "xor": Opcode.XOR, "eq": Opcode.EQ, "ne": Opcode.NE,
    "lt": Opcode.LT, "le": Opcode.LE, "gt": Opcode.GT, "ge": Opcode.GE,
    "add_any": Opcode.ADD, "shift_left": Opcode.SHIFT_LEFT,
    "shift_right_arithmetic": Opcode.SHIFT_RIGHT_ARITHMETIC,
    "shift_right_logical": Opcode.SHIFT_RIGHT_LOGICAL,
}
IDENTITY = {"copy", "copy_p", "stop_gradient", "optimization_barrier"}
# A PRNG key array is its key data here (jax_mpk.api passes keys in and out as key data):
# wrapping and unwrapping change nothing, and nothing else may touch a key.
KEY_IDENTITY = {"random_wrap", "random_unwrap"}
REDUCERS = {"reduce_sum": Reducer.SUM, "reduce_max": Reducer.MAX, "reduce_min": Reducer.MIN,
            "argmax": Reducer.ARGMAX, "argmin": Reducer.ARGMIN}


def is_key(aval) -> bool:
    """Whether aval is of a PRNG key dtype (jax.random.key's)."""
    return jax.dtypes.issubdtype(aval.dtype, jax.dtypes.extended)


def lower_eqn(b: GraphBuilder, eqn, inputs: list[Tensor]) -> list[Tensor]:
    name = eqn.primitive.name
    out_avals = [v.aval for v in eqn.outvars]
    if name in IDENTITY or name in KEY_IDENTITY:
        return list(inputs)
    if any(is_key(v.aval) for v in [*eqn.invars, *eqn.outvars]):
        raise UnsupportedError(f"{name} of PRNG keys (jax.random)")
    if name in UNARY or name in BINARY or name in ("select_n", "clamp", "integer_pow",
                                                    "convert_element_type"):
        return [_elementwise(b, eqn, inputs, out_avals[0])]
    rule = SHAPE_RULES.get(name)
    if rule is None:
        raise UnsupportedError(name)
    out = rule(b, eqn.params, inputs, out_avals)
    return out if isinstance(out, list) else [out]


def _elementwise(b: GraphBuilder, eqn, inputs, aval) -> Tensor:
    name = eqn.primitive.name
    out_dtype = np.dtype(aval.dtype)
    if name == "convert_element_type" and inputs[0].dtype == out_dtype:
        return inputs[0]
    instrs, loads = [], []
    for t in inputs:
        value = uniform_value(t)
        if value is not None:
            instrs.append(const_instr(value, t.dtype))
        else:
            instrs.append(Instr(Opcode.LOAD, t.dtype, (), len(loads)))
            loads.append(t)
    args = tuple(range(len(inputs)))
    if name == "convert_element_type":
        instrs.append(Instr(Opcode.CONVERT, out_dtype, args))
    elif name == "integer_pow":
        instrs.append(Instr(Opcode.INTEGER_POW, out_dtype, args, eqn.params["y"]))
    elif name == "round":
        instrs.append(Instr(Opcode.ROUND, out_dtype, args, int(eqn.params["rounding_method"])))
    elif name == "select_n":
        if len(inputs) != 3:
            raise UnsupportedError("select_n with more than two cases")
        if inputs[0].dtype != np.bool_:  # an int32 case index: case 1 where it is nonzero
            instrs.append(const_instr(0, inputs[0].dtype))
            instrs.append(Instr(Opcode.NE, np.dtype(np.bool_), (0, len(instrs) - 1)))
            args = (len(instrs) - 1, 1, 2)
        instrs.append(Instr(Opcode.SELECT, out_dtype, args))
    elif name == "clamp":
        instrs.append(Instr(Opcode.CLAMP, out_dtype, args))
    else:
        instrs.append(Instr(UNARY.get(name) or BINARY[name], out_dtype, args))
    return b.elementwise(instrs, loads, aval.shape)


# Shapes -------------------------------------------------------------------------------
def _reshape(b, params, inputs, avals):
    if params.get("dimensions") is not None:
        raise UnsupportedError("reshape with dimensions")
    return _reshaped(b, inputs[0], avals[0].shape)


def _reshaped(b: GraphBuilder, t: Tensor, shape) -> Tensor:
    view = reshape_view(t, shape)
    return view if view is not None else reshape_view(b.copy(t), shape)


def _squeeze(b, params, inputs, avals):
    return _reshaped(b, inputs[0], avals[0].shape)


def _expand_dims(b, params, inputs, avals):
    return _reshaped(b, inputs[0], avals[0].shape)


def _broadcast_in_dim(b, params, inputs, avals):
    t = inputs[0]
    shape = tuple(params["shape"])
    strides = [0] * len(shape)
    for src, dst in enumerate(params["broadcast_dimensions"]):
        if t.shape[src] == shape[dst]:
            strides[dst] = t.strides[src]
    return t.view(shape, strides)


def _transpose(b, params, inputs, avals):
    t = inputs[0]
    perm = params["permutation"]
    return t.view([t.shape[p] for p in perm], [t.strides[p] for p in perm])


def _slice(b, params, inputs, avals):
    t = inputs[0]
    steps = params["strides"] or (1,) * len(t.shape)
    offset = sum(s * st for s, st in zip(params["start_indices"], t.strides, strict=False))
    shape = [-(-(hi - lo) // k) for lo, hi, k in zip(params["start_indices"],
                                                    params["limit_indices"], steps, strict=False)]
    return t.view(shape, [st * k for st, k in zip(t.strides, steps, strict=False)], offset)


def _split(b, params, inputs, avals):
    t = inputs[0]
    axis = params["axis"]
    outs, start = [], 0
    for size in params["sizes"]:
        shape = list(t.shape)
        shape[axis] = int(size)
        outs.append(t.view(shape, t.strides, start * t.strides[axis]))
        start += int(size)
    return outs


def _concatenate(b, params, inputs, avals):
    axis = params["dimension"]
    out = b.new_tensor(avals[0].shape, avals[0].dtype)
    start = 0
    for t in inputs:
        piece = out.view(t.shape, out.strides, start * out.strides[axis])
        b.copy(t, piece)
        start += t.shape[axis]
    return out


def _stack(b, params, inputs, avals):
    axis = params["axis"]
    out = b.new_tensor(avals[0].shape, avals[0].dtype)
    strides = out.strides[:axis] + out.strides[axis + 1:]
    for i, t in enumerate(inputs):
        b.copy(t, out.view(t.shape, strides, i * out.strides[axis]))
    return out


def _iota(b, params, inputs, avals):
    if params.get("sharding") is not None:
        raise UnsupportedError("iota with a sharding")
    instr = Instr(Opcode.IOTA, np.dtype(params["dtype"]), (), params["dimension"])
    return b.elementwise([instr], [], params["shape"])


def _pad(b, params, inputs, avals):
    t, fill = inputs
    if any(lo < 0 or hi < 0 or mid for lo, hi, mid in params["padding_config"]):
        raise UnsupportedError("pad with negative or interior padding")
    value = uniform_value(fill)
    if value is not None:
        out = b.elementwise([const_instr(value, t.dtype)], [], avals[0].shape)
    else:
        out = b.elementwise([Instr(Opcode.LOAD, t.dtype, (), 0)], [fill], avals[0].shape)
    lows = [lo for lo, _, _ in params["padding_config"]]
    offset = sum(lo * s for lo, s in zip(lows, out.strides, strict=True))
    b.copy(t, out.view(t.shape, out.strides, offset))
    return out


# Reductions and contractions ----------------------------------------------------------
def _reduce(b, params, inputs, avals, reducer: Reducer):
    t = inputs[0]
    axes = sorted(params["axes"])
    kept = [d for d in range(len(t.shape)) if d not in axes]
    outer = math.prod(t.shape[d] for d in kept if d < axes[0])
    length = math.prod(t.shape[d] for d in axes)
    inner = math.prod(t.shape[d] for d in kept if d > axes[0])
    if axes != list(range(axes[0], axes[0] + len(axes))) or not t.is_contiguous:
        t = b.copy(t.view([t.shape[d] for d in kept + axes],
                          [t.strides[d] for d in kept + axes]))
        outer, inner = math.prod(t.shape[:len(kept)]), 1
    out_dtype = np.dtype(params["index_dtype"]) if reducer >= Reducer.ARGMAX else t.dtype
    out = b.new_tensor(avals[0].shape, out_dtype)
    b.emit("reduce", [t], [out], reducer=reducer, outer=outer, length=length, inner=inner)
    return out


def _merge(t: Tensor, dims) -> tuple[int, int] | None:
    """(size, stride) of dims taken as one, or None where their strides do not chain."""
    dims = [d for d in dims if t.shape[d] != 1]
    if not dims:
        return 1, 0
    for outer, inner in zip(dims, dims[1:], strict=False):
        if t.strides[outer] != t.strides[inner] * t.shape[inner]:
            return None
    return math.prod(t.shape[d] for d in dims), t.strides[dims[-1]]


def _matrix(b: GraphBuilder, t: Tensor, groups) -> tuple[Tensor, list[tuple[int, int]]]:
    """t as merged dim groups (size, stride), copying it into that order if needed."""
    merged = [_merge(t, g) for g in groups]
    if all(m is not None for m in merged):
        return t, merged
    order = [d for g in groups for d in g]
    t = b.copy(t.view([t.shape[d] for d in order], [t.strides[d] for d in order]))
    starts = np.cumsum([0] + [len(g) for g in groups])
    return t, [_merge(t, range(lo, hi)) for lo, hi in zip(starts, starts[1:], strict=False)]


def _batch_split(x: Tensor, x_batch, w: Tensor, w_batch) -> int:
    """Where to cut the batch dims into two groups so that both operands keep their layout
    (attention over a [B, T, H, D] cache batches over B and H, which do not merge)."""
    def fits(t, dims, p):
        return _merge(t, dims[:p]) is not None and _merge(t, dims[p:]) is not None

    cuts = range(len(x_batch) + 1)
    for need in ((True, True), (True, False), (False, True)):
        for p in cuts:
            if (not need[0] or fits(x, x_batch, p)) and (not need[1] or fits(w, w_batch, p)):
                return p
    return 0


def _dot_general(b, params, inputs, avals):
    x, w = inputs
    (x_contract, w_contract), (x_batch, w_batch) = params["dimension_numbers"]
    x_batch, w_batch = list(x_batch), list(w_batch)
    x_free = [d for d in range(len(x.shape)) if d not in x_contract and d not in x_batch]
    w_free = [d for d in range(len(w.shape)) if d not in w_contract and d not in w_batch]
    p = _batch_split(x, x_batch, w, w_batch)
    x, (xb0, xb1, xm, xk) = _matrix(b, x, [x_batch[:p], x_batch[p:], x_free, list(x_contract)])
    w, (wb0, wb1, wk, wn) = _matrix(b, w, [w_batch[:p], w_batch[p:], list(w_contract), w_free])
    out = b.new_tensor(avals[0].shape, avals[0].dtype)
    b.emit("matmul", [x, w], [out], B=xb0[0] * xb1[0], B1=xb1[0], M=xm[0], N=wn[0], K=xk[0],
           x_strides=(xb0[1], xb1[1], xm[1], xk[1]), w_strides=(wb0[1], wb1[1], wk[1], wn[1]))
    return out


# Indexing -------------------------------------------------------------------------------
def _unwrap_index(b: GraphBuilder, t: Tensor, size: int) -> tuple[Tensor, bool]:
    """Fold `select_n(x < 0, x, x + size)`, JAX's negative-index wrap, into a task flag."""
    select = b.producer(t)
    if select is None or _form(select)[0] != (Opcode.SELECT,) or len(select.inputs) != 3:
        return t, False
    pred, keep, wrapped = select.inputs
    lt, add = b.producer(pred), b.producer(wrapped)
    if lt is None or add is None:
        return t, False
    lt_ops, lt_ins, lt_consts = _form(lt)
    add_ops, add_ins, add_consts = _form(add)
    if not (lt_ops == (Opcode.LT,) and lt_consts == [0] and add_ops == (Opcode.ADD,)
            and add_consts == [size] and _same(lt_ins[0], keep) and _same(add_ins[0], keep)):
        return t, False
    unwrapped = reshape_view(keep, t.shape)
    return (t, False) if unwrapped is None else (unwrapped, True)


def _form(op):
    """(non-leaf opcodes, loaded inputs, constants) of a small elementwise op."""
    if op.kind != "elementwise":
        return (), [], []
    ops = tuple(i.opcode for i in op.attrs["instrs"] if i.opcode not in (Opcode.LOAD,
                                                                         Opcode.CONST))
    consts = [int(i.imm) for i in op.attrs["instrs"] if i.opcode == Opcode.CONST]
    return ops, op.inputs, consts


def _same(a: Tensor, c: Tensor) -> bool:
    return (a.buffer is c.buffer and a.offset == c.offset and a.shape == c.shape
            and a.strides == c.strides)


def _slice_dims(src_shape, starts, sizes):
    """Merge trailing dims that are taken whole so that at most MAX_SLICE_RANK remain."""
    shape, starts, sizes = list(src_shape), list(starts), list(sizes)
    while len(shape) > MAX_SLICE_RANK:
        d = next((d for d in range(len(shape) - 1, 0, -1)
                  if sizes[d] == shape[d] and starts[d] is None and starts[d - 1] is None), None)
        if d is None:
            raise UnsupportedError(f"dynamic slicing of rank {len(src_shape)} beyond "
                                   f"{MAX_SLICE_RANK} dims that are not taken whole")
        shape[d - 1] *= shape[d]
        sizes[d - 1] *= sizes[d]
        del shape[d], sizes[d], starts[d]
    return shape, starts, sizes


def _slice_operands(b: GraphBuilder, src: Tensor, indices, sizes):
    """Rank-merged shapes, int32 start tensors and the wrap mask of a dynamic slice."""
    starts = []
    for t, _size in zip(indices, src.shape, strict=False):
        value = uniform_value(t)
        starts.append(None if value is not None and value == 0 else t)
    shape, starts, merged_sizes = _slice_dims(src.shape, starts, sizes)
    start_tensors, wrap_mask = [], 0
    for d, t in enumerate(starts):
        if t is None:
            t = b.constant(np.int32(0))
        else:
            t, wrapped = _unwrap_index(b, t, shape[d])
            wrap_mask |= int(wrapped) << d
        start_tensors.append(b.index_scalar(t))
    return shape, merged_sizes, start_tensors, wrap_mask


def _dynamic_slice(b, params, inputs, avals):
    src = b.contiguous(inputs[0])
    shape, sizes, starts, wrap = _slice_operands(b, src, inputs[1:], params["slice_sizes"])
    out = b.new_tensor(avals[0].shape, src.dtype)
    b.emit("dynamic_slice", [src, *starts], [out], src_shape=shape, sizes=sizes,
           wrap_mask=wrap)
    return out


def _dynamic_update_slice(b, params, inputs, avals):
    dst, update = inputs[0], b.contiguous(inputs[1])
    out = b.copy(dst)  # the in-place pass drops this copy where dst is dead afterwards
    shape, sizes, starts, wrap = _slice_operands(b, out, inputs[2:], update.shape)
    b.emit("dynamic_update_slice", [update, *starts, out], [out], dst_shape=shape,
           sizes=sizes, wrap_mask=wrap)
    return out


def _scatter(b, params, inputs, avals, add: bool = False):
    """x.at[i, j].set(v) (or .add(v)): one window of x, at scalar indices, as a
    dynamic_update_slice. jax drops an update whose window leaves x (FILL_OR_DROP) where
    dynamic_update_slice would clamp it, so the window read at the clamped place is written
    back unchanged then."""
    x, indices, updates = inputs
    dn = params["dimension_numbers"]
    scattered = tuple(dn.scatter_dims_to_operand_dims)
    mode = str(params["mode"])
    if (len(indices.shape) != 1 or indices.shape[0] != len(scattered)
            or tuple(dn.update_window_dims) != tuple(range(len(updates.shape)))
            or tuple(sorted(dn.inserted_window_dims)) != tuple(sorted(scattered))
            or dn.operand_batching_dims or ("FILL_OR_DROP" not in mode and "CLIP" not in mode
                                            and "PROMISE_IN_BOUNDS" not in mode)):
        raise UnsupportedError("scatter other than at one place (x.at[i].set(v) or .add(v))")
    window, sizes = list(updates.shape), []
    for d in range(len(x.shape)):
        sizes.append(1 if d in scattered else window.pop(0))
    at_index = [indices.view((), (), k * indices.strides[0]) for k in range(len(scattered))]
    starts = [b.constant(np.int32(0)) for _ in x.shape]
    for k, d in enumerate(scattered):
        starts[d] = at_index[k]
    read = _dynamic_slice(b, {"slice_sizes": sizes}, [x, *starts],
                          [jax.ShapeDtypeStruct(sizes, x.dtype)])
    update = _reshaped(b, updates, sizes)
    i32, boolean, dtype = np.dtype(np.int32), np.dtype(np.bool_), x.dtype
    instrs = [Instr(Opcode.LOAD, dtype, (), 0), Instr(Opcode.LOAD, dtype, (), 1)]  # read, update
    if add:
        instrs.append(Instr(Opcode.ADD, dtype, (0, 1)))
    value = len(instrs) - 1
    if "FILL_OR_DROP" in mode:  # the window read back where the update falls outside x
        ok = None
        for k, d in enumerate(scattered):
            at = len(instrs)
            instrs += [Instr(Opcode.LOAD, indices.dtype, (), 2 + k),
                       Instr(Opcode.CONVERT, i32, (at,)), const_instr(0, i32),
                       Instr(Opcode.GE, boolean, (at + 1, at + 2)),
                       const_instr(x.shape[d] - sizes[d], i32),
                       Instr(Opcode.LE, boolean, (at + 1, at + 4))]
            instrs.append(Instr(Opcode.AND, boolean, (at + 3, at + 5)))
            if ok is not None:
                instrs.append(Instr(Opcode.AND, boolean, (ok, len(instrs) - 1)))
            ok = len(instrs) - 1
        instrs.append(Instr(Opcode.SELECT, dtype, (ok, 0, value)))
    written = b.elementwise(instrs, [read, update, *at_index], sizes)
    return _dynamic_update_slice(b, {}, [x, written, *starts], avals)


def _gather(b, params, inputs, avals):
    table, ids = inputs
    dn = params["dimension_numbers"]
    rows = table.shape[0]
    width = math.prod(table.shape[1:])
    if (tuple(dn.collapsed_slice_dims) != (0,) or tuple(dn.start_index_map) != (0,)
            or dn.operand_batching_dims or tuple(params["slice_sizes"]) != (1, *table.shape[1:])
            or ids.shape[-1:] != (1,)
            or tuple(dn.offset_dims) != tuple(range(len(ids.shape) - 1, len(avals[0].shape)))):
        raise UnsupportedError("gather other than taking rows of a table (jnp.take(x, ids, 0))")
    mode = params["mode"]
    fill = mode == lax.GatherScatterMode.FILL_OR_DROP
    if fill and not (params["fill_value"] is None or np.isnan(params["fill_value"])):
        raise UnsupportedError("gather with a fill value other than NaN")
    flat_ids, wrapped = _unwrap_index(b, _reshaped(b, ids, (math.prod(ids.shape),)), rows)
    flat_ids = b.contiguous(flat_ids)
    if flat_ids.dtype != np.int32:
        raise UnsupportedError(f"gather indices of dtype {flat_ids.dtype}")
    table = b.contiguous(_reshaped(b, table, (rows, width)))
    out = b.new_tensor(avals[0].shape, table.dtype)
    b.emit("gather_rows", [table, flat_ids], [out], rows=rows, width=width,
           mode=int(fill) | int(wrapped) << 1)
    return out


# Collectives over the tensor-parallel axis (jax_mpk/tensor_parallel.py) -----------------
def _tp_axis(b: GraphBuilder, name: str, axes) -> None:
    """Checks that a collective runs over exactly the tensor-parallel axis."""
    axes = tuple(axes) if isinstance(axes, (tuple, list)) else (axes,)
    tp = b.tensor_parallel
    if tp is None:
        raise UnsupportedError(f"{name} over {axes} outside jax_mpk.jit(..., tensor_parallel=...)")
    if axes != (tp.axis,):
        raise UnsupportedError(f"{name} over axes {axes} (only the tensor-parallel axis "
                               f"{tp.axis!r} is)")


def _psum(b, params, inputs, avals):
    _tp_axis(b, "psum", params["axes"])
    if params.get("axis_index_groups") is not None:
        raise UnsupportedError("psum with axis_index_groups")
    outs = []
    for t, aval in zip(inputs, avals, strict=True):
        out = b.new_tensor(aval.shape, aval.dtype)
        b.emit("allreduce", [b.contiguous(t)], [out])
        outs.append(out)
    return outs


def _all_gather(b, params, inputs, avals):
    _tp_axis(b, "all_gather", params["axis_name"])
    if params.get("axis_index_groups") is not None:
        raise UnsupportedError("all_gather with axis_index_groups")
    t = b.contiguous(inputs[0])
    size, axis = params["axis_size"], params["all_gather_dimension"]
    stacked = b.new_tensor((size, *t.shape), t.dtype)  # [rank, *x]: rank r's x in row r
    b.emit("allgather", [t], [stacked])
    perm = [*range(1, axis + 1), 0, *range(axis + 1, len(stacked.shape))]
    moved = _transpose(b, {"permutation": perm}, [stacked], avals)
    return _reshaped(b, moved, avals[0].shape) if params["tiled"] else moved


def _axis_index(b, params, inputs, avals):
    _tp_axis(b, "axis_index", params["axis_name"])
    return b.constant(np.asarray(b.tensor_parallel.rank, avals[0].dtype))


SHAPE_RULES = {
    "reshape": _reshape,
    "squeeze": _squeeze,
    "expand_dims": _expand_dims,
    "broadcast_in_dim": _broadcast_in_dim,
    "transpose": _transpose,
    "slice": _slice,
    "split": _split,
    "concatenate": _concatenate,
    "stack": _stack,
    "iota": _iota,
    "pad": _pad,
    "dot_general": _dot_general,
    "dynamic_slice": _dynamic_slice,
    "dynamic_update_slice": _dynamic_update_slice,
    "gather": _gather,
    "scatter": _scatter,
    "scatter-add": functools.partial(_scatter, add=True),
    "psum": _psum,
    "all_gather": _all_gather,
    "axis_index": _axis_index,
}
for _name, _reducer in REDUCERS.items():
    SHAPE_RULES[_name] = (lambda r: lambda b, p, i, a: _reduce(b, p, i, a, r))(_reducer)

SUPPORTED = sorted(set(UNARY) | set(BINARY) | IDENTITY | KEY_IDENTITY | set(SHAPE_RULES)
                   | {"select_n", "clamp", "integer_pow", "convert_element_type"})
