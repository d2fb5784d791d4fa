"""Elementwise fusion: an elementwise op whose readers are all elementwise ops is computed
inside them, so its result never reaches memory and its readers wait for one op less.
A producer with one reader moves into it; one with several is copied into each where that
stays cheap: a short program (a convert, a scale), or readers that together recompute at
most RECOMPUTED_ELEMENTS times its elements (the two halves of a RoPE reading a qk-norm's
scaled heads twice each: the copies cost a few instructions an element, the op they remove a
stage of the layer)."""

from __future__ import annotations

from typing import NamedTuple

from jax_mpk.ir import Graph, Op, Role, Tensor, contiguous_strides
from jax_mpk.task_kinds import MAX_ELEMENTWISE_INSTRS, Instr, Opcode, const_bits

CHEAP_INSTRS = 4  # a producer this short is recomputed by each of its readers
RECOMPUTED_ELEMENTS = 2  # ... and a longer one where its readers recompute at most this many times its elements


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
            if (not consumers or writers[key] != 1 or key in output_buffers
                    or out.buffer.role is not Role.INTERMEDIATE
                    or out.offset != 0 or out.nbytes != out.buffer.nbytes):
                continue
            plans = [_plan(producer, c) for c in consumers]
            if any(plan is None for plan in plans):
                continue
            if len(consumers) > 1 and len(producer.attrs["instrs"]) > CHEAP_INSTRS and sum(
                    len(plan) * c.outputs[0].size for c, plan in zip(consumers, plans, strict=True)
            ) > RECOMPUTED_ELEMENTS * out.size:
                continue
            if any(w.overlaps(r) for consumer in consumers
                   for op in ops[position[id(producer)] + 1:position[id(consumer)]]
                   if id(op) not in removed for w in op.outputs for r in producer.inputs):
                continue
            for consumer, plan in zip(consumers, plans, strict=True):
                _inline(producer, consumer, plan)
            removed.add(id(producer))
            del readers[key]
            for t in producer.inputs:
                users = readers[id(t.buffer)]
                users.pop(id(producer), None)
                for consumer in consumers:
                    users[id(consumer)] = consumer
            changed = True
    graph.ops = [op for op in ops if id(op) not in removed]


def fuse_into_writers(graph: Graph) -> None:
    """An elementwise op that reads, element for element, a buffer that several elementwise
    ops write piece by piece (the halves of a concatenation) is computed inside each
    writer, on its piece."""
    ops = list(graph.ops)
    output_buffers = {id(t.buffer) for t in graph.outputs}
    removed: set[int] = set()
    for consumer in ops:
        if consumer.kind != "elementwise" or any(
                ins.opcode == Opcode.IOTA for ins in consumer.attrs["instrs"]):
            continue
        result = consumer.outputs[0]
        for j, read in enumerate(consumer.inputs):
            buffer = read.buffer
            whole = Tensor(result.shape, read.dtype, buffer)
            if (buffer.role is not Role.INTERMEDIATE or id(buffer) in output_buffers
                    or read.offset or read.strides != whole.strides
                    or read.nbytes != buffer.nbytes
                    or sum(t.buffer is buffer for t in consumer.inputs) != 1):
                continue
            at = ops.index(consumer)
            touching = [i for i, op in enumerate(ops)
                        if id(op) not in removed and op is not consumer
                        and any(t.buffer is buffer for t in op.inputs + op.outputs)]
            writers = [ops[i] for i in touching]
            if (not writers or sum(op.outputs[0].size for op in writers) < whole.size
                    or any(op.kind != "elementwise" or i > at
                           or any(t.buffer is buffer for t in op.inputs)
                           for i, op in zip(touching, writers, strict=True))):
                continue
            plans = [_dim_map(w.outputs[0], whole) for w in writers]
            if any(p is None or len(w.attrs["instrs"]) + len(consumer.attrs["instrs"])
                   > MAX_ELEMENTWISE_INSTRS or any(st == 0 and n > 1 for n, st in zip(
                       w.outputs[0].shape, w.outputs[0].strides, strict=True))
                   for p, w in zip(plans, writers, strict=True)):
                continue
            # Whatever the consumer reads besides the buffer must be ready when the first
            # writer runs, and nothing in between may touch what the consumer writes.
            first = touching[0]
            others = [t for t in consumer.inputs if t is not read]
            between = [op for op in ops[first + 1:at] if id(op) not in removed
                       and op not in writers]
            if any(w.overlaps(t) for op in between for w in op.outputs for t in others) or any(
                    t.overlaps(result) for op in between for t in op.inputs + op.outputs):
                continue
            for writer, dims in zip(writers, plans, strict=True):
                _append(writer, consumer, j, dims)
            removed.add(id(consumer))
            break
    graph.ops = [op for op in ops if id(op) not in removed]


def _append(writer: Op, consumer: Op, j: int, dims) -> None:
    """Makes writer compute consumer on writer's piece, consumer's input j being its value."""
    shape = writer.outputs[0].shape
    instrs = list(writer.attrs["instrs"])
    value = len(instrs) - 1
    inputs = list(writer.inputs)
    remap = {}
    for i, ins in enumerate(consumer.attrs["instrs"]):
        if ins.opcode == Opcode.LOAD and ins.imm == j:
            remap[i] = value
            continue
        if ins.opcode == Opcode.LOAD:
            inputs.append(_compose(consumer.inputs[ins.imm], dims, shape))
            ins = ins._replace(imm=len(inputs) - 1)
        else:
            ins = ins._replace(args=tuple(remap[a] for a in ins.args))
        remap[i] = len(instrs)
        instrs.append(ins)
    writer.inputs = inputs
    writer.outputs = [_compose(consumer.outputs[0], dims, shape)]
    writer.attrs["instrs"] = instrs


def _plan(producer: Op, consumer: Op) -> dict | None:
    """For each input of consumer that reads producer's result, how its dims walk the
    result's; None if some read does not compose or the fused program would be too long."""
    if consumer.kind != "elementwise":
        return None
    out = producer.outputs[0]
    dims_of_reads = {}
    for j, t in enumerate(consumer.inputs):
        if t.buffer is out.buffer:
            dims = _dim_map(t, out)
            if dims is None:
                return None
            dim_map, starts, steps = dims
            for ins in producer.attrs["instrs"]:
                if ins.opcode == Opcode.IOTA and dim_map[ins.imm] is not None and (
                        starts[ins.imm] or steps[ins.imm] != 1 or dim_map[ins.imm] < 0
                        or dim_map[ins.imm] + 1 < len(dim_map)
                        and (dim_map[ins.imm + 1] or 0) < 0):
                    return None  # an iota along a sliced, stepped or merged dim needs arithmetic
                if ins.opcode == Opcode.LOAD and not _chains(producer.inputs[ins.imm], dim_map,
                                                             out.shape):
                    return None
            dims_of_reads[j] = dims
    length = (len(consumer.attrs["instrs"])
              + len(dims_of_reads) * len(producer.attrs["instrs"]))
    return dims_of_reads if length <= MAX_ELEMENTWISE_INSTRS else None


def _inline(producer: Op, consumer: Op, dims_of_reads: dict) -> None:
    """Computes producer's result inside consumer, for each read planned by _plan."""
    out = producer.outputs[0]
    inputs = [t for t in consumer.inputs if t.buffer is not out.buffer]
    new_index = {}
    instrs: list[Instr] = []
    for j, t in enumerate(consumer.inputs):
        if t.buffer is not out.buffer:
            new_index[j] = inputs.index(t)
    inlined_result = {}
    for j, dims in dims_of_reads.items():
        dim_map, starts, _ = dims
        base = len(instrs)
        for ins in producer.attrs["instrs"]:
            if ins.opcode == Opcode.LOAD:
                view = _compose(producer.inputs[ins.imm], dims, consumer.outputs[0].shape)
                inputs.append(view)
                instrs.append(ins._replace(imm=len(inputs) - 1))
            elif ins.opcode == Opcode.IOTA:
                dim = dim_map[ins.imm]
                start = const_bits(starts[ins.imm], ins.dtype)
                instrs.append(ins._replace(imm=dim) if dim is not None else
                              Instr(Opcode.CONST, ins.dtype, (), start))
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


class DimMap(NamedTuple):
    """How a view walks a result: dims[d] the view dim that walks result dim d (None where
    none does; -1 - v where dim d is merged with the next ones into view dim v, as a reshape
    does), starts[d] the index where it begins and steps[d] its step (2 for x[..., ::2])."""

    dims: list[int | None]
    starts: list[int]
    steps: list[int]


def _dim_map(view: Tensor, out: Tensor) -> DimMap | None:
    """How a consumer's input `view` walks the producer's result `out`. The view may slice
    out (with a step), transpose it, merge its dims or broadcast it into the consumer's
    shape. None where it does not stay inside out."""
    contiguous = contiguous_strides(out.shape)
    starts, rest = [], view.offset
    for size, stride in zip(out.shape, contiguous, strict=True):
        starts.append(rest // stride % size if size > 1 else 0)
        rest -= starts[-1] * stride
    if rest != 0:
        return None
    dim_map: list[int | None] = [None] * len(out.shape)
    steps = [1] * len(out.shape)
    for v, (size, stride) in enumerate(zip(view.shape, view.strides, strict=True)):
        if size == 1 or stride == 0:
            continue  # a broadcast dim of the consumer
        free = [d for d in range(len(out.shape)) if out.shape[d] > 1 and dim_map[d] is None]
        walked = [d for d in free if contiguous[d] == stride]
        if not walked:
            # A stepped walk of one dim, the smallest step that stays inside it.
            stepped = [d for d in free if stride % contiguous[d] == 0
                       and starts[d] + (size - 1) * (stride // contiguous[d]) < out.shape[d]]
            if not stepped:
                return None
            dim_map[stepped[0]], steps[stepped[0]] = v, stride // contiguous[stepped[0]]
            continue
        d = walked[0]
        if starts[d] + size <= out.shape[d]:
            dim_map[d] = v
            continue
        # Out dims d0..d merged into view dim v: whole, in order, from index 0.
        group, span = [d], out.shape[d]
        while span < size and group[0] > 0:
            group.insert(0, group[0] - 1)
            span *= out.shape[group[0]]
        if span != size or any(starts[g] or dim_map[g] is not None for g in group):
            return None
        for g in group[:-1]:
            dim_map[g] = -1 - v
        dim_map[d] = v
    return DimMap(dim_map, starts, steps)


def _chains(t: Tensor, dim_map, out_shape) -> bool:
    """Whether t's strides chain over each group of out dims merged into one view dim."""
    return all(t.strides[d] == t.strides[d + 1] * out_shape[d + 1]
               for d, v in enumerate(dim_map) if v is not None and v < 0)


def _compose(t: Tensor, dims, shape) -> Tensor:
    """The producer's input t, indexed in the consumer's shape."""
    dim_map, starts, steps = dims
    strides = [0] * len(shape)
    for src_dim, dst_dim in enumerate(dim_map):
        if dst_dim is not None and dst_dim >= 0:
            strides[dst_dim] = t.strides[src_dim] * steps[src_dim]
    return t.view(shape, strides, sum(s * st for s, st in zip(starts, t.strides, strict=True)))
