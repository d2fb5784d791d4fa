"""Elementwise fusion: an elementwise op whose only reader is another elementwise op is
computed inside that reader, so its result never reaches memory."""

from __future__ import annotations

from jax_mpk.ir import Graph, Op, Role, Tensor, contiguous_strides
from jax_mpk.passes.dataflow import overlaps
from jax_mpk.task_kinds import Instr, Opcode


def fuse_elementwise(graph: Graph) -> None:
    ops = list(graph.ops)
    position = {id(op): i for i, op in enumerate(ops)}
    readers: dict[int, dict[int, Op]] = {}
    writers: dict[int, int] = {}
    for op in ops:
        for t in op.inputs:
            readers.setdefault(id(t.buffer), {})[id(op)] = op
        for t in op.outputs:
            writers[id(t.buffer)] = writers.get(id(t.buffer), 0) + 1
    output_buffers = {id(t.buffer) for t in graph.outputs}
    removed: set[int] = set()
    changed = True
    while changed:  # one pass fuses whole chains; repeat until nothing changes
        changed = False
        for producer in ops:
            if id(producer) in removed or producer.kind != "elementwise":
                continue
            out = producer.outputs[0]
            key = id(out.buffer)
            consumers = list(readers.get(key, {}).values())
            if (len(consumers) != 1 or writers[key] != 1 or key in output_buffers
                    or out.buffer.role is not Role.INTERMEDIATE
                    or out.offset != 0 or out.nbytes != out.buffer.nbytes):
                continue
            (consumer,) = consumers
            if consumer.kind != "elementwise":
                continue
            between = ops[position[id(producer)] + 1:position[id(consumer)]]
            if any(overlaps(w, r) for op in between if id(op) not in removed
                   for w in op.outputs for r in producer.inputs):
                continue
            if _fuse(producer, consumer):
                removed.add(id(producer))
                del readers[key]
                for t in producer.inputs:
                    users = readers[id(t.buffer)]
                    users.pop(id(producer), None)
                    users[id(consumer)] = consumer
                changed = True
    graph.ops = [op for op in ops if id(op) not in removed]


def _fuse(producer: Op, consumer: Op) -> bool:
    """Inline producer into consumer where every read of its result composes; else False."""
    out = producer.outputs[0]
    dims_of_reads = {}
    for j, t in enumerate(consumer.inputs):
        if t.buffer is out.buffer:
            dim_map = _dim_map(t, out)
            if dim_map is None:
                return False
            dims_of_reads[j] = dim_map
    inputs = [t for t in consumer.inputs if t.buffer is not out.buffer]
    new_index = {}
    instrs: list[Instr] = []
    for j, t in enumerate(consumer.inputs):
        if t.buffer is not out.buffer:
            new_index[j] = inputs.index(t)
    inlined_result = {}
    for j, dim_map in dims_of_reads.items():
        base = len(instrs)
        for ins in producer.attrs["instrs"]:
            if ins.opcode == Opcode.LOAD:
                view = _compose(producer.inputs[ins.imm], dim_map, consumer.outputs[0].shape)
                inputs.append(view)
                instrs.append(ins._replace(imm=len(inputs) - 1))
            elif ins.opcode == Opcode.IOTA:
                dim = dim_map[ins.imm]
                instrs.append(ins._replace(imm=dim) if dim is not None else
                              Instr(Opcode.CONST, ins.dtype, (), 0))
            else:
                instrs.append(ins._replace(args=tuple(a + base for a in ins.args)))
        inlined_result[j] = len(instrs) - 1
    remap = {}
    for i, ins in enumerate(consumer.attrs["instrs"]):
        if ins.opcode == Opcode.LOAD and ins.imm in inlined_result:
            remap[i] = inlined_result[ins.imm]
            continue
        if ins.opcode == Opcode.LOAD:
            ins = ins._replace(imm=new_index[ins.imm])
        else:
            ins = ins._replace(args=tuple(remap[a] for a in ins.args))
        remap[i] = len(instrs)
        instrs.append(ins)
    consumer.inputs = inputs
    consumer.attrs["instrs"] = instrs
    return True


def _dim_map(view: Tensor, out: Tensor) -> list[int | None] | None:
    """For each dim of out, the dim of view that walks it (None for size 1), or None where
    view is not out broadcast into the consumer's shape."""
    contiguous = contiguous_strides(out.shape)
    dim_map: list[int | None] = []
    used = set()
    at = 0
    for size, stride in zip(out.shape, contiguous, strict=False):
        if size == 1:
            dim_map.append(None)
            continue
        while at < len(view.shape) and not (view.shape[at] == size
                                            and view.strides[at] == stride):
            if view.strides[at] != 0 and view.shape[at] != 1:
                return None
            at += 1
        if at == len(view.shape):
            return None
        dim_map.append(at)
        used.add(at)
        at += 1
    if view.offset != 0 or any(view.strides[d] != 0 and view.shape[d] != 1
                               for d in range(len(view.shape)) if d not in used):
        return None
    return dim_map


def _compose(t: Tensor, dim_map, shape) -> Tensor:
    """The producer's input t, indexed in the consumer's shape."""
    strides = [0] * len(shape)
    for src_dim, dst_dim in enumerate(dim_map):
        if dst_dim is not None:
            strides[dst_dim] = t.strides[src_dim]
    return t.view(shape, strides)
