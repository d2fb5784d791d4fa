"""From a closed jaxpr to the op graph."""

from __future__ import annotations

from jax_mpk.frontend.builder import GraphBuilder, UnsupportedError
from jax_mpk.frontend.interpreter import interpret
from jax_mpk.ir import Graph, Role
from jax_mpk.task_kinds import SUPPORTED_DTYPE_NAMES, is_float, is_supported_dtype

__all__ = ["build_graph", "UnsupportedError", "arg_role"]


def arg_role(aval, donated: bool) -> Role:
    if donated:
        return Role.STATE
    return Role.PARAM if is_float(aval.dtype) and aval.shape else Role.INPUT


def build_graph(closed_jaxpr, donated: list[bool], names: list[str],
                tensor_parallel=None) -> Graph:
    """The op graph of closed_jaxpr; donated[i] marks flat argument i as state;
    tensor_parallel (a jax_mpk.TensorParallel) binds the axis collectives run over."""
    b = GraphBuilder(tensor_parallel)
    args, arg_tensors = [], []
    for i, (var, is_donated) in enumerate(zip(closed_jaxpr.jaxpr.invars, donated, strict=True)):
        aval = var.aval
        if not is_supported_dtype(aval.dtype):
            raise UnsupportedError(f"argument {names[i]} is of dtype {aval.dtype}: jax_mpk's "
                                   f"tasks take {SUPPORTED_DTYPE_NAMES}")
        tensor = b.new_tensor(aval.shape, aval.dtype, arg_role(aval, is_donated))
        tensor.buffer.arg_index = i
        tensor.buffer.name = names[i]
        args.append(tensor.buffer)
        arg_tensors.append(tensor)
    outputs = interpret(b, closed_jaxpr.jaxpr, closed_jaxpr.consts, arg_tensors)
    return Graph(b.ops, args, outputs, aliases={})

