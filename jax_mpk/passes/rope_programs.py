"""What the programs of a rotation's ops compute (passes/rope_attention.py): each half of a
half-split rotation is `convert(x * table -/+ x * table)`, x a float32 load or a normed one
(Qwen3's qk-norm, fused into the rotation by fuse_elementwise), and the norm's sums of
squares come from an op `f32(x) * f32(x)`. Read off the instructions, never evaluated."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jax_mpk.ir import Op, Tensor
from jax_mpk.task_kinds import Opcode, float32_input

F32 = np.dtype(np.float32)


class Norm(NamedTuple):
    """x's factor `round((x * 1 / sqrt(sums / n + eps)) * (c + scale))` (round: to dtype and
    back to float32, none for float32) in a rotation's program; c is -0 where the program
    multiplies by the scale itself."""

    sums: Tensor  # float32, one value along d
    scale: Tensor  # along d only
    n: np.float32
    eps: np.float32
    c: np.float32
    dtype: np.dtype


def norm_constants(norm: Norm) -> tuple:
    """n, eps and c by their bits (c may be -0), and the dtype."""
    return (*(np.float32(v).view(np.int32) for v in (norm.n, norm.eps, norm.c)), norm.dtype)


class Factor(NamedTuple):
    """A product's operand: a load converted to float32, normed or not."""

    tensor: Tensor
    norm: Norm | None = None


def products(op: Op):
    """(SUB or ADD, (x, table), (x, table)) of a program `convert(p0 -/+ p1)`, each product
    `x * table` (in either order) of x, a Factor, and a float32 table; else None. x is the
    factor whose buffer the other product's x shares."""
    instrs = op.attrs["instrs"]
    out = op.outputs[0]

    def read(i):
        return read_f32(op, i)

    def f32_load(i):
        ins = instrs[i]
        return op.inputs[ins.imm] if ins.opcode == Opcode.LOAD and ins.dtype == F32 else None

    def const(i):
        ins = instrs[i]
        if ins.opcode != Opcode.CONST or ins.dtype != F32:
            return None
        return np.int32(ins.imm).view(np.float32)

    def both(i, opcode, first, second, ordered=False):
        """(first(a), second(b)) of a float32 `a opcode b`, either order unless `ordered`."""
        ins = instrs[i]
        if ins.opcode != opcode or ins.dtype != F32 or len(ins.args) != 2:
            return None
        for a, b in (ins.args,) if ordered else (ins.args, ins.args[::-1]):
            x, y = first(a), second(b)
            if x is not None and y is not None:
                return x, y
        return None

    def inverse_rms(i):
        """(sums, n, eps) of `1 / sqrt(sums / n + eps)`: RSQRT, or INTEGER_POW -1 of SQRT."""
        ins = instrs[i]
        if ins.opcode == Opcode.INTEGER_POW and ins.imm == -1 and ins.dtype == F32:
            ins = instrs[ins.args[0]]
            if ins.opcode != Opcode.SQRT:
                return None
        elif ins.opcode != Opcode.RSQRT:
            return None
        if ins.dtype != F32:
            return None
        mean = lambda j: both(j, Opcode.DIV, f32_load, const, ordered=True)  # noqa: E731
        found = both(ins.args[0], Opcode.ADD, mean, const)
        return None if found is None else (*found[0], found[1])

    def factor(i):
        """x as a Factor: a load, or a normed load (Norm)."""
        x = read(i)
        if x is not None:
            return Factor(x)
        ins, dtype = instrs[i], F32
        if ins.opcode == Opcode.CONVERT and ins.dtype == F32:  # rounded to a narrower dtype
            rounded = instrs[ins.args[0]]
            if (rounded.opcode != Opcode.CONVERT
                    or rounded.dtype.name not in ("bfloat16", "float16")):
                return None
            i, dtype = rounded.args[0], rounded.dtype
        def gain(j):  # (c, scale) of c + scale, or (-0, gain): x + -0 is x, for x = +0 too
            plain = read(j)
            if plain is not None:
                return np.float32(-0.0), plain
            return both(j, Opcode.ADD, const, read)

        scaled = lambda j: both(j, Opcode.MUL, read, inverse_rms)  # noqa: E731  (x, rms)
        found = both(i, Opcode.MUL, scaled, gain)
        if found is None:
            return None
        (x, (sums, n, eps)), (c, scale) = found
        return Factor(x, Norm(sums, scale, n, eps, c, np.dtype(dtype)))

    def readings(i):
        """The (x, table) readings of a float32 product `x * table`, in either order."""
        ins = instrs[i]
        if ins.opcode != Opcode.MUL or ins.dtype != F32 or len(ins.args) != 2:
            return []
        found = [(factor(a), read(b)) for a, b in (ins.args, ins.args[::-1])]
        return [(x, t) for x, t in found if x is not None and t is not None
                and x.tensor.buffer is not t.buffer]

    top = len(instrs) - 1
    if instrs[top].opcode == Opcode.CONVERT and out.dtype != F32:
        if instrs[top].dtype != out.dtype:
            return None
        top = instrs[top].args[0]
    combine = instrs[top]
    if combine.opcode not in (Opcode.SUB, Opcode.ADD) or combine.dtype != F32:
        return None
    if len(instrs) - 1 != top and out.dtype == F32:
        return None
    pairs = [(first, second) for first in readings(combine.args[0])
             for second in readings(combine.args[1])
             if first[0].tensor.buffer is second[0].tensor.buffer]
    if len(pairs) != 1:
        return None
    return combine.opcode, *pairs[0]


def walk(t: Tensor) -> tuple[int, ...]:
    """t's strides, 0 along its dims of one element (whose strides mean nothing)."""
    return tuple(s if n > 1 else 0 for n, s in zip(t.shape, t.strides, strict=True))


def same_factor(x: Factor, y: Factor) -> bool:
    if not same(x.tensor, y.tensor) or (x.norm is None) != (y.norm is None):
        return False
    return x.norm is None or (same(x.norm.sums, y.norm.sums) and same(x.norm.scale, y.norm.scale)
                              and norm_constants(x.norm) == norm_constants(y.norm))


def same(x: Tensor, y: Tensor, last_only: bool = False) -> bool:
    if last_only:  # tables broadcast over different shapes: the same row of values
        return (x.buffer is y.buffer and x.offset == y.offset and x.dtype == y.dtype
                and x.shape[-1:] == y.shape[-1:] and x.strides[-1:] == y.strides[-1:])
    return (x.buffer is y.buffer and x.offset == y.offset and x.shape == y.shape
            and walk(x) == walk(y) and x.dtype == y.dtype)


def squared(op: Op) -> Tensor | None:
    """x of an elementwise op `f32(x) * f32(x)` (x float32, or converted to it), else None."""
    if op.kind != "elementwise" or len(op.outputs) != 1 or "dynamic_row" in op.attrs:
        return None
    top = op.attrs["instrs"][-1]
    if top.opcode != Opcode.MUL or top.dtype != F32 or op.outputs[0].dtype != F32:
        return None
    a, b = (read_f32(op, i) for i in top.args)
    return a if a is not None and b is not None and same(a, b) else None


def read_f32(op: Op, i: int) -> Tensor | None:
    """The tensor instruction i of op's program reads as float32 (task_kinds.float32_input)."""
    j = float32_input(op.attrs["instrs"], i)
    return None if j is None else op.inputs[j]
