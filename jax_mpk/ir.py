"""The op graph between the jaxpr and the program: buffers, tensor views of them, and ops.

A `Buffer` is storage with a role; a `Tensor` is a strided view of a buffer (offset and
strides in elements), so reshape, transpose, broadcast and slice cost nothing. Ops read
and write tensors; the order of `Graph.ops` is a valid execution order.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any

import numpy as np


class Role(enum.Enum):
    PARAM = "param"  # a floating-point argument that is not donated: weights
    INPUT = "input"  # any other argument that is not donated: tokens, positions
    STATE = "state"  # a donated argument: KV caches
    OUTPUT = "output"
    INTERMEDIATE = "intermediate"
    CONSTANT = "constant"  # closed-over arrays and literals, uploaded with the program


@dataclasses.dataclass(eq=False)
class Buffer:
    nbytes: int
    role: Role
    name: str = ""
    arg_index: int | None = None  # PARAM/INPUT/STATE: position among the flat arguments
    value: np.ndarray | None = None  # CONSTANT: its contents


@dataclasses.dataclass(eq=False)
class Tensor:
    shape: tuple[int, ...]
    dtype: np.dtype
    buffer: Buffer
    offset: int = 0  # elements
    strides: tuple[int, ...] | None = None  # elements; None means row-major contiguous

    def __post_init__(self):
        self.shape = tuple(int(d) for d in self.shape)
        self.dtype = np.dtype(self.dtype)
        if self.strides is None:
            self.strides = contiguous_strides(self.shape)
        self.strides = tuple(int(s) for s in self.strides)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def is_contiguous(self) -> bool:
        return all(s == c for s, c, d in zip(self.strides, contiguous_strides(self.shape),
                                              self.shape, strict=False) if d != 1)

    def span(self) -> tuple[int, int]:
        """Byte range [lo, hi) of the buffer this view touches."""
        if self.size == 0:
            return (0, 0)
        steps = zip(self.shape, self.strides, strict=True)
        last = self.offset + sum((d - 1) * s for d, s in steps)
        item = self.dtype.itemsize
        return self.offset * item, (last + 1) * item

    def overlaps(self, other: Tensor) -> bool:
        """Whether the two views share a byte: their spans meet and no period P separates
        them. A period separates views when every stride of each is either a multiple of P
        or stays inside one P-byte block, and the two blocks lie apart (the two halves of a
        RoPE rotation: columns 0-31 and 32-63 of the same rows). Negative strides count as
        overlapping."""
        if self.buffer is not other.buffer:
            return False
        (alo, ahi), (blo, bhi) = self.span(), other.span()
        if not (alo < bhi and blo < ahi):
            return False
        a, b = self._byte_dims(), other._byte_dims()
        if any(s < 0 for _, s in a + b):
            return True
        for period in sorted({s for _, s in a + b if s > 0}):
            ra, rb = self._residues(a, period), other._residues(b, period)
            if ra and rb and (ra[1] <= rb[0] or rb[1] <= ra[0]):
                return False
        return True

    def _byte_dims(self) -> list[tuple[int, int]]:
        item = self.dtype.itemsize
        return [(n, s * item) for n, s in zip(self.shape, self.strides, strict=True) if n > 1]

    def _residues(self, dims, period: int) -> tuple[int, int] | None:
        """[lo, hi) of the bytes this view touches, modulo period; None if that wraps."""
        lo = self.offset * self.dtype.itemsize % period
        hi = lo + sum((n - 1) * s for n, s in dims if s % period) + self.dtype.itemsize
        return (lo, hi) if hi <= period else None

    def view(self, shape, strides, offset=0) -> Tensor:
        return Tensor(tuple(shape), self.dtype, self.buffer, self.offset + offset,
                      tuple(strides))

    def __repr__(self) -> str:
        return f"Tensor({self.buffer.name}{list(self.shape)}:{self.dtype.name})"


def contiguous_strides(shape) -> tuple[int, ...]:
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= int(d)
    return tuple(reversed(strides))


@dataclasses.dataclass(eq=False)
class Op:
    kind: str
    inputs: list[Tensor]
    outputs: list[Tensor]
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)
    source: str = ""  # the user's source line of the eqn that made it
    label: str = ""  # the pattern a pass recognized it as (rms_norm, attention, ...)


@dataclasses.dataclass
class Graph:
    ops: list[Op]
    args: list[Buffer]  # one per flat argument, in order
    outputs: list[Tensor]  # one per flat result, each the whole of its own buffer
    aliases: dict[int, int]  # result index -> argument index it is written in place of
