"""Emitting IR ops: fresh buffers, constants, elementwise ops and layout copies."""

from __future__ import annotations

import hashlib
import math

import numpy as np

from jax_mpk.ir import Buffer, Op, Role, Tensor, contiguous_strides
from jax_mpk.task_kinds import Instr, Opcode, const_bits


class UnsupportedError(NotImplementedError):
    """A primitive or shape the compiler does not handle; names the user's source line."""


class GraphBuilder:
    def __init__(self, tensor_parallel=None) -> None:
        self.ops: list[Op] = []
        self.tensor_parallel = tensor_parallel  # a TensorParallel, for the collective rules
        self.source = ""  # the user's source line of the eqn being lowered
        self._constants: dict[tuple, Tensor] = {}
        self._producers: dict[int, Op] = {}  # id(buffer) -> the op that wrote all of it
        self._buffers = 0

    # Tensors ----------------------------------------------------------------
    def new_tensor(self, shape, dtype, role: Role = Role.INTERMEDIATE) -> Tensor:
        shape = tuple(int(d) for d in shape)
        dtype = np.dtype(dtype)
        self._buffers += 1
        buffer = Buffer(math.prod(shape) * dtype.itemsize, role, f"t{self._buffers}")
        return Tensor(shape, dtype, buffer)

    def constant(self, value) -> Tensor:
        """A constant buffer; equal contents share one buffer."""
        value = np.array(value, order="C")
        key = (value.shape, value.dtype.str, hashlib.sha1(value.tobytes()).hexdigest())
        tensor = self._constants.get(key)
        if tensor is None:
            buffer = Buffer(value.nbytes, Role.CONSTANT, f"c{len(self._constants)}",
                            value=value)
            tensor = Tensor(value.shape, value.dtype, buffer)
            self._constants[key] = tensor
        return tensor

    # Ops ---------------------------------------------------------------------
    def emit(self, kind: str, inputs, outputs, **attrs) -> Op:
        op = Op(kind, list(inputs), list(outputs), attrs, self.source)
        self.ops.append(op)
        for out in outputs:
            whole = out.offset == 0 and out.is_contiguous and out.nbytes == out.buffer.nbytes
            self._producers[id(out.buffer)] = op if whole else None
        return op

    def producer(self, t: Tensor) -> Op | None:
        """The op that wrote all of t's buffer, where t views all of it in row-major order."""
        op = self._producers.get(id(t.buffer))
        whole = t.offset == 0 and t.is_contiguous and t.nbytes == t.buffer.nbytes
        return op if whole else None

    def elementwise(self, instrs: list[Instr], inputs: list[Tensor], shape,
                    out: Tensor | None = None) -> Tensor:
        """One elementwise op; inputs broadcast to shape; writes out (a fresh tensor if None)."""
        shape = tuple(shape)
        inputs = [broadcast_to(t, shape) for t in inputs]
        if out is None:
            out = self.new_tensor(shape, instrs[-1].dtype)
        self.emit("elementwise", inputs, [out], instrs=list(instrs))
        return out

    def copy(self, src: Tensor, out: Tensor | None = None) -> Tensor:
        return self.elementwise([Instr(Opcode.LOAD, src.dtype, (), 0)], [src], src.shape, out)

    def contiguous(self, t: Tensor) -> Tensor:
        return t if t.is_contiguous else self.copy(t)

    def index_scalar(self, t: Tensor) -> Tensor:
        """An int32 scalar in memory, for the start index operands of slicing tasks."""
        if t.shape != ():
            raise UnsupportedError(f"index of shape {t.shape} (a scalar is needed)")
        if t.buffer.role is Role.CONSTANT:
            return self.constant(np.int32(uniform_value(t)))
        if t.dtype != np.int32:
            return self.elementwise([Instr(Opcode.LOAD, t.dtype), Instr(Opcode.CONVERT,
                                                                       np.dtype(np.int32), (0,))],
                                    [t], ())
        return t


def broadcast_to(t: Tensor, shape) -> Tensor:
    """A view of t broadcast to shape (numpy rules, stride 0 for new and size-1 dims)."""
    shape = tuple(shape)
    if t.shape == shape:
        return t
    lead = len(shape) - len(t.shape)
    if lead < 0:
        raise UnsupportedError(f"broadcast of {t.shape} to {shape}")
    strides = [0] * lead
    for d, (size, stride) in enumerate(zip(t.shape, t.strides, strict=False)):
        if size == shape[lead + d]:
            strides.append(stride)
        elif size == 1:
            strides.append(0)
        else:
            raise UnsupportedError(f"broadcast of {t.shape} to {shape}")
    return t.view(shape, strides)


def uniform_value(t: Tensor):
    """The single value a constant view holds, or None when its elements differ."""
    if t.buffer.role is not Role.CONSTANT:
        return None
    values = np.lib.stride_tricks.as_strided(
        t.buffer.value.reshape(-1)[t.offset:], t.shape,
        [s * t.dtype.itemsize for s in t.strides])
    flat = np.asarray(values).reshape(-1)
    if flat.size and np.all(flat == flat[0]):
        return flat[0]
    return None


def const_instr(value, dtype) -> Instr:
    return Instr(Opcode.CONST, np.dtype(dtype), (), const_bits(value, dtype))


def reshape_view(t: Tensor, shape) -> Tensor | None:
    """t under a new shape without copying, or None where the strides do not allow it."""
    shape = tuple(int(d) for d in shape)
    if t.is_contiguous:
        return t.view(shape, contiguous_strides(shape))
    old = [(d, s) for d, s in zip(t.shape, t.strides, strict=False) if d != 1]
    new_strides = []
    i = 0
    for d in shape:
        if d == 1:
            new_strides.append(0)
            continue
        if i >= len(old):
            return None
        size, stride = old[i]
        if size == d:
            new_strides.append(stride)
            i += 1
        elif size % d == 0:  # split an old dim
            new_strides.append(stride * (size // d))
            old[i] = (size // d, stride)
        else:  # merge old dims when their strides chain
            acc, inner_stride = size, stride
            j = i + 1
            while acc < d and j < len(old) and old[j - 1][1] == old[j][0] * old[j][1]:
                acc *= old[j][0]
                inner_stride = old[j][1]
                j += 1
            if acc != d:
                return None
            new_strides.append(inner_stride)
            i = j
    if i != len(old):
        return None
    return t.view(shape, new_strides)
