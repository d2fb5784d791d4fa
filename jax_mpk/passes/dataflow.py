"""Passes over buffers: dead-op removal, in-place updates, and result buffers."""

from __future__ import annotations

from jax_mpk.ir import Buffer, Graph, Op, Role, Tensor
from jax_mpk.task_kinds import Opcode


def writes(op: Op) -> list[Tensor]:
    return op.outputs


def reads(op: Op) -> list[Tensor]:
    return op.inputs


def remove_dead_ops(graph: Graph) -> None:
    live = {id(t.buffer) for t in graph.outputs}
    kept = []
    for op in reversed(graph.ops):
        if any(id(t.buffer) in live for t in writes(op)):
            kept.append(op)
            live.update(id(t.buffer) for t in reads(op))
    graph.ops = kept[::-1]


CSE_KINDS = ("elementwise", "reduce", "gather_rows")


def remove_duplicate_ops(graph: Graph) -> None:
    """An op that computes what an earlier op computed (the same kind, attributes and
    input bytes, as RoPE's table lookups for q and for k) goes; its readers read the
    earlier result."""
    writers: dict[int, int] = {}
    for op in graph.ops:
        for t in writes(op):
            writers[id(t.buffer)] = writers.get(id(t.buffer), 0) + 1
    results = {id(t.buffer) for t in graph.outputs}
    version: dict[int, int] = {}  # buffer -> writes so far
    first: dict[tuple, Tensor] = {}
    kept = []
    for op in graph.ops:
        out = op.outputs[0] if len(op.outputs) == 1 else None
        if (op.kind in CSE_KINDS and out is not None and out.buffer.role is Role.INTERMEDIATE
                and writers[id(out.buffer)] == 1 and id(out.buffer) not in results
                and out.offset == 0 and out.nbytes == out.buffer.nbytes):
            key = (op.kind, repr(sorted(op.attrs.items())), out.shape, out.strides, out.dtype,
                   tuple((id(t.buffer), version.get(id(t.buffer), 0), t.shape, t.strides,
                          t.offset, t.dtype) for t in op.inputs))
            earlier = first.get(key)
            if earlier is not None:
                retarget(graph, out.buffer, earlier.buffer, 0)
                continue
            first[key] = out
        kept.append(op)
        for t in writes(op):
            version[id(t.buffer)] = version.get(id(t.buffer), 0) + 1
    graph.ops = kept


def is_plain_copy(op: Op) -> bool:
    instrs = op.attrs.get("instrs")
    return (op.kind == "elementwise" and len(instrs) == 1 and instrs[0].opcode == Opcode.LOAD
            and op.inputs[0].dtype == op.outputs[0].dtype)


def update_in_place(graph: Graph) -> None:
    """Drop the copy before a dynamic_update_slice where the copied buffer is dead after it.

    A donated cache then takes the update in place and the result aliases the argument.
    """
    for at, op in enumerate(graph.ops):
        if op.kind != "dynamic_update_slice":
            continue
        copy = _writer_before(graph.ops, at, op.outputs[0])
        if copy is None or not is_plain_copy(copy):
            continue
        src, dst = copy.inputs[0], copy.outputs[0]
        if (src.buffer.role not in (Role.STATE, Role.INTERMEDIATE) or not src.is_contiguous
                or src.shape != dst.shape or dst.offset != 0 or dst.nbytes != dst.buffer.nbytes
                or _used_after(graph, graph.ops.index(copy), src, skip=copy)):
            continue
        graph.ops.remove(copy)
        retarget(graph, dst.buffer, src.buffer, src.offset)


def _writer_before(ops: list[Op], at: int, t: Tensor) -> Op | None:
    for op in reversed(ops[:at]):
        if any(o.buffer is t.buffer for o in writes(op)):
            return op
    return None


def _used_after(graph: Graph, at: int, t: Tensor, skip: Op) -> bool:
    """Whether anything after ops[at] reads t's bytes other than through the copy's result."""
    if any(out.buffer is t.buffer for out in graph.outputs):
        return True
    return any(x.overlaps(t) for op in graph.ops[at + 1:] if op is not skip
               for x in reads(op) + writes(op))


def retarget(graph: Graph, old: Buffer, new: Buffer, offset: int) -> None:
    """Make every view of old a view of new, old's element 0 at new's element offset."""
    seen = set()
    for t in [t for op in graph.ops for t in op.inputs + op.outputs] + graph.outputs:
        if t.buffer is old and id(t) not in seen:
            seen.add(id(t))
            t.buffer = new
            t.offset += offset


def assign_results(graph: Graph, copy_op) -> None:
    """Give every result its own whole buffer: alias donated arguments, copy where needed."""
    claimed: set[int] = set()
    results = []
    for i, t in enumerate(graph.outputs):
        buffer = t.buffer
        is_whole = t.offset == 0 and t.is_contiguous and t.nbytes == buffer.nbytes
        if is_whole and id(buffer) not in claimed and buffer.role is Role.STATE:
            graph.aliases[i] = buffer.arg_index
        elif not (is_whole and id(buffer) not in claimed and buffer.role is Role.INTERMEDIATE):
            t = copy_op(t)
        t.buffer.role = Role.OUTPUT if i not in graph.aliases else Role.STATE
        claimed.add(id(t.buffer))
        results.append(t)
    graph.outputs = results


def coalesce_copies(graph: Graph) -> None:
    """A buffer written only by copies from the same places of one other buffer becomes
    that buffer: the per-layer caches an unrolled scan stacks back into its result."""
    writers: dict[int, list[Op]] = {}
    for op in graph.ops:
        for t in writes(op):
            writers.setdefault(id(t.buffer), []).append(op)
    for ops in list(writers.values()):
        copies = [op for op in ops if is_plain_copy(op)]
        if len(copies) != len(ops):
            continue
        dst_buffer = copies[0].outputs[0].buffer
        src_buffer = copies[0].inputs[0].buffer
        if (dst_buffer.role is not Role.INTERMEDIATE or dst_buffer.nbytes != src_buffer.nbytes
                or src_buffer.role not in (Role.STATE, Role.INTERMEDIATE)
                or any(t.buffer is src_buffer for t in graph.outputs)):
            continue
        if not all(c.inputs[0].buffer is src_buffer and _same_place(c.inputs[0], c.outputs[0])
                   for c in copies):
            continue
        first = min(graph.ops.index(c) for c in copies)
        later = [op for op in graph.ops[first:] if op not in copies]
        if any(t.buffer is src_buffer for op in later for t in reads(op) + writes(op)):
            continue
        for c in copies:
            graph.ops.remove(c)
        retarget(graph, dst_buffer, src_buffer, 0)


def walks(t: Tensor, strides) -> bool:
    """t's strides are `strides` wherever its dims are longer than 1."""
    return all(s == e for s, e, n in zip(t.strides, strides, t.shape, strict=True) if n > 1)


def same_view(a: Tensor, b: Tensor) -> bool:
    return (a.buffer is b.buffer and a.offset == b.offset and a.shape == b.shape
            and a.dtype == b.dtype and walks(a, b.strides))


def fold_into_matmuls(graph: Graph, fold) -> None:
    """Folds what computes a matmul's x into the matmuls (passes/norm_linear.py,
    passes/gating_linear.py). For each elementwise op read by matmuls alone, `fold(links,
    op, readers)` gives (the ops that go, ending with op; each reader's replacement or None;
    the tensors the replacements read instead) or None. It applies where every reader has a
    replacement and nothing between the first op that goes and the last reader writes those
    tensors."""
    links = Links(graph)
    for op in [o for o in graph.ops if o.kind == "elementwise"]:
        readers = list(links.readers.get(id(op.outputs[0].buffer), []))
        if not readers or any(r.kind != "matmul" for r in readers):
            continue
        found = fold(links, op, readers)
        if found is None:
            continue
        chain, folded, reads = found
        first, last = graph.ops.index(chain[0]), max(graph.ops.index(r) for r in readers)
        between = [o for o in graph.ops[first:last + 1] if all(o is not c for c in chain)]
        if (any(f is None for f in folded)
                or any(w.overlaps(t) for o in between for w in o.outputs for t in reads)):
            continue
        for reader, new in zip(readers, folded, strict=True):
            graph.ops[graph.ops.index(reader)] = new
        for o in chain:
            graph.ops.remove(o)
        links.swap([*chain, *readers], folded)


def _same_place(a: Tensor, b: Tensor) -> bool:
    return a.offset == b.offset and a.shape == b.shape and a.strides == b.strides


class Links:
    """Writers and readers of each buffer."""

    def __init__(self, graph: Graph):
        self.writers: dict[int, list[Op]] = {}
        self.readers: dict[int, list[Op]] = {}
        self.swap([], graph.ops)
        self.results = {id(t.buffer) for t in graph.outputs}

    def swap(self, removed: list[Op], added: list[Op]) -> None:
        """Keeps the index current as `removed` leave the graph and `added` join it."""
        for op in removed:
            for table, tensors in ((self.writers, op.outputs), (self.readers, op.inputs)):
                for t in tensors:
                    ops = table[id(t.buffer)]
                    del ops[next(i for i, o in enumerate(ops) if o is op)]
        for op in added:
            for t in op.outputs:
                self.writers.setdefault(id(t.buffer), []).append(op)
            for t in op.inputs:
                self.readers.setdefault(id(t.buffer), []).append(op)

    def sole_writer(self, t: Tensor, readers: list[Op]) -> Op | None:
        """The op writing t's buffer, whole, read by exactly `readers` (an intermediate)."""
        writers = self.writers.get(id(t.buffer), [])
        if (len(writers) != 1 or t.buffer.role is not Role.INTERMEDIATE
                or id(t.buffer) in self.results
                or {id(o) for o in self.readers.get(id(t.buffer), [])} != {id(o) for o in readers}
                or len(writers[0].outputs) != 1):
            return None
        out = writers[0].outputs[0]
        if out.offset or not out.is_contiguous or out.nbytes != out.buffer.nbytes:
            return None
        return writers[0]
