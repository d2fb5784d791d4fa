"""Walks a jaxpr and lowers each equation; inlines nested jaxprs and unrolls scans."""

from __future__ import annotations

import numpy as np
from jax._src import source_info_util
from jax.extend import core as jcore

from jax_mpk.frontend.builder import GraphBuilder, UnsupportedError, const_instr
from jax_mpk.frontend.rules import SUPPORTED, is_key, lower_eqn
from jax_mpk.ir import Tensor
from jax_mpk.task_kinds import SUPPORTED_DTYPE_NAMES, Instr, Opcode, is_supported_dtype

# Primitives whose body runs once, in place: their jaxpr is inlined.
INLINED = {
    "pjit": ("jaxpr",),
    "jit": ("jaxpr",),
    "closed_call": ("call_jaxpr",),
    "core_call": ("call_jaxpr",),
    "remat": ("jaxpr",),
    "remat2": ("jaxpr",),
    "checkpoint": ("jaxpr",),
    "custom_jvp_call": ("call_jaxpr", "fun_jaxpr"),
    "custom_vjp_call": ("call_jaxpr", "fun_jaxpr"),
    "custom_vjp_call_jaxpr": ("fun_jaxpr", "call_jaxpr"),
}


def interpret(b: GraphBuilder, jaxpr, consts, args: list[Tensor]) -> list[Tensor]:
    """Lower jaxpr (open) with its consts bound to constant tensors and its invars to args."""
    env: dict = {}

    def read(atom) -> Tensor:
        if isinstance(atom, jcore.Literal):
            return b.constant(np.asarray(atom.val, dtype=atom.aval.dtype))
        return env[atom]

    for var, value in zip(jaxpr.constvars, consts, strict=False):
        env[var] = b.constant(np.asarray(value))
    for var, value in zip(jaxpr.invars, args, strict=True):
        env[var] = value
    for eqn in jaxpr.eqns:
        inputs = [read(v) for v in eqn.invars]
        outputs = _lower(b, eqn, inputs)
        for var, value in zip(eqn.outvars, outputs, strict=True):
            if not isinstance(var, jcore.DropVar):
                env[var] = value
    return [read(v) for v in jaxpr.outvars]


def _lower(b: GraphBuilder, eqn, inputs: list[Tensor]) -> list[Tensor]:
    name = eqn.primitive.name
    outer_source = b.source
    # Eqns inside jax's own helpers (jnp.take, ...) report the user's call that made them.
    b.source = source_line(eqn) or outer_source or "unknown source line"
    try:
        if name in INLINED:
            return _inline(b, eqn, inputs)
        if name == "scan":
            return _unroll_scan(b, eqn, inputs)
        if name == "cond":
            return _select_branch(b, eqn, inputs)
        return _lower_primitive(b, eqn, inputs)
    finally:
        b.source = outer_source


def _lower_primitive(b: GraphBuilder, eqn, inputs: list[Tensor]) -> list[Tensor]:
    try:
        unsupported = [v.aval.dtype for v in eqn.outvars
                       if not is_key(v.aval) and not is_supported_dtype(v.aval.dtype)]
        if unsupported:
            raise UnsupportedError(f"a result of dtype {unsupported[0]} (the tasks take "
                                   f"{SUPPORTED_DTYPE_NAMES})")
        return lower_eqn(b, eqn, inputs)
    except UnsupportedError as e:
        raise UnsupportedError(
            f"jax_mpk cannot compile `{eqn.primitive.name}`: {e} is not supported "
            f"(at {b.source}).\nSupported primitives: {', '.join(SUPPORTED)}; plus "
            f"{', '.join(sorted(INLINED))} (inlined), scan (unrolled) and cond (every branch "
            "computed, one selected)."
        ) from None


def _inline(b: GraphBuilder, eqn, inputs):
    for key in INLINED[eqn.primitive.name]:
        sub = eqn.params.get(key)
        if sub is not None:
            break
    else:
        raise UnsupportedError(f"`{eqn.primitive.name}` without a jaxpr (at {source_line(eqn)})")
    if isinstance(sub, jcore.ClosedJaxpr):
        return interpret(b, sub.jaxpr, sub.consts, inputs[-len(sub.jaxpr.invars):])
    return interpret(b, sub, [], inputs[-len(sub.invars):])


def _unroll_scan(b: GraphBuilder, eqn, inputs):
    params = eqn.params
    body, length = params["jaxpr"], params["length"]
    if "ft_in" in params:  # jax >= 0.11: a flat tree packs (consts, carry, xs)
        consts, carry, xs = (list(part) for part in params["ft_in"].update(inputs).unpack())
        num_carry = len(carry)
    else:
        num_consts, num_carry = params["num_consts"], params["num_carry"]
        consts = inputs[:num_consts]
        carry = inputs[num_consts:num_consts + num_carry]
        xs = inputs[num_consts + num_carry:]
    ys_per_step = []
    steps = range(length - 1, -1, -1) if params["reverse"] else range(length)
    for i in steps:
        x_i = [x.view(x.shape[1:], x.strides[1:], i * x.strides[0]) for x in xs]
        outs = interpret(b, body.jaxpr, body.consts, [*consts, *carry, *x_i])
        carry = outs[:num_carry]
        ys_per_step.append((i, outs[num_carry:]))
    ys = []
    for j, var in enumerate(eqn.outvars[num_carry:]):
        if is_key(var.aval):
            raise UnsupportedError(f"scan stacking PRNG keys (at {b.source})")
        stacked = b.new_tensor(var.aval.shape, var.aval.dtype)
        for i, step_ys in ys_per_step:
            y = step_ys[j]
            b.copy(y, stacked.view(y.shape, stacked.strides[1:], i * stacked.strides[0]))
        ys.append(stacked)
    return [*carry, *ys]


def _select_branch(b: GraphBuilder, eqn, inputs):
    """lax.cond and lax.switch: every branch computed, each result selected by the index
    (in range: jax clamps it before the cond). The untaken branches' work is wasted, their
    values never read."""
    index, operands = inputs[0], inputs[1:]
    branches = [interpret(b, br.jaxpr, br.consts, operands) for br in eqn.params["branches"]]
    results, i32 = [], np.dtype(np.int32)
    for j, var in enumerate(eqn.outvars):
        if is_key(var.aval):
            raise UnsupportedError(f"cond choosing PRNG keys (at {b.source})")
        dtype, value = np.dtype(var.aval.dtype), branches[0][j]
        for k, outs in enumerate(branches[1:], start=1):
            value = b.elementwise([Instr(Opcode.LOAD, i32, (), 0), const_instr(k, i32),
                                   Instr(Opcode.GE, np.dtype(np.bool_), (0, 1)),
                                   Instr(Opcode.LOAD, dtype, (), 1),
                                   Instr(Opcode.LOAD, dtype, (), 2),
                                   Instr(Opcode.SELECT, dtype, (2, 3, 4))],
                                  [index, value, outs[j]], var.aval.shape)
        results.append(value)
    return results


def source_line(eqn) -> str:
    """file:line (function) of the user's code that made eqn, or "" where jax's own is."""
    frames = list(source_info_util.user_frames(eqn.source_info.traceback))
    if not frames:
        return ""
    # jax hides its own frames; those of installed libraries (flax) it hides only
    # when they share the interpreter's prefix, which a virtualenv does not.
    frame = next((f for f in frames if not _installed(f.file_name)), frames[0])
    return f"{frame.file_name}:{frame.start_line} ({frame.function_name})"


def _installed(file_name: str) -> bool:
    return "site-packages" in file_name or "dist-packages" in file_name
