"""Sequences: runs of small ops that one task executes back to back.

Every op boundary costs a hop between workers (a counter release, an acquire poll) and a
task's start-up, a few µs, while the ops of a norm, a softmax or a RoPE-and-cache-append
touch a few KiB each. A run of consecutive elementwise, reduce and indexing ops becomes one
`sequence` op whose tasks run the steps in order, a block barrier between them:

- split by rows, when every step's range divides into the same R rows and each step reads
  what an earlier step wrote only within its own row (a norm at batch 8: 8 tasks);
- as one task, when the run is small altogether (a table lookup, its use and a cache update).

Only chains: a step joins the run when it reads what an earlier step of the run wrote, and
only where each task's interpreted work stays small. An interpreted element costs a thread
about 3-5 µs (H200, session 6), so a 2048-wide step in one task (8 elements a thread) takes
longer than the hops it saves; spread over workers as separate ops, the same step takes
one element a thread.

Steps keep their own semantics (the task kinds of jax_mpk/task_kinds.py); only the hops go.
Merging consecutive ops keeps the graph acyclic: whatever the run waits for comes before it.
"""

from __future__ import annotations

import math

from jax_mpk.ir import Graph, Op, Tensor
from jax_mpk.task_kinds import MAX_ELEMENTWISE_RANK

STEP_KINDS = ("elementwise", "reduce", "gather_rows", "dynamic_slice", "dynamic_update_slice")
MAX_STEPS = 16  # descriptor words stay small; a longer run rarely pays
SMALL_WORK = 4096  # elements: a run this small goes to one task
ROW_WORK = 16384  # elements per row of a row-split sequence, summed over its steps
# Elements of one elementwise step a task may interpret: two a thread of a worker's 256.
MAX_INTERPRETED = 512


def fuse_sequences(graph: Graph) -> None:
    """Replaces each longest run of consecutive step ops that forms a sequence."""
    ops, fused, i = graph.ops, [], 0
    written: set[int] = set()  # buffers the ops before the run write
    while i < len(ops):
        best, best_rows = i + 1, None
        j = i
        # A write at a dynamic row (passes/cache_append.py) stays an op: a sequence's merged
        # op would not name the places it may land.
        while (j < len(ops) and j - i < MAX_STEPS and ops[j].kind in STEP_KINDS
               and "dynamic_row" not in ops[j].attrs):
            if j > i and not _continues(ops[j], ops[i:j], written):
                break  # as its own op it runs beside the run, or waits for its own inputs
            j += 1
            rows = sequence_rows(ops[i:j])
            if rows is not None:
                best, best_rows = j, rows
            elif not _may_grow(ops[i:j]):
                break
        fused.append(_sequence(ops[i:best], best_rows) if best - i >= 2 else ops[i])
        written.update(id(t.buffer) for op in ops[i:best] for t in op.outputs)
        i = best
    graph.ops = fused


def _continues(op: Op, run: list[Op], written: set[int]) -> bool:
    """Whether op extends the run as a chain: it reads what a step of the run writes, and
    whatever else it reads that earlier ops write, the run already waits for. Independent
    ops gain more from running on other workers than one task saves in hops, and a step
    with inputs of its own would hold the whole run back until they are ready."""
    if not any(t.overlaps(out) for t in op.inputs for step in run for out in step.outputs):
        return False
    waited = {id(t.buffer) for step in run for t in step.inputs}
    return all(id(t.buffer) not in written or id(t.buffer) in waited for t in op.inputs)


def _may_grow(ops: list[Op]) -> bool:
    """A run of elementwise ops without a reduction may still become a row sequence."""
    return all(op.kind == "elementwise" for op in ops)


def _sequence(steps: list[Op], rows: int) -> Op:
    inputs, outputs = [], []
    for op in steps:
        inputs += [t for t in op.inputs if all(t is not u for u in inputs)]
        outputs += [t for t in op.outputs if all(t is not u for u in outputs)]
    labels = list(dict.fromkeys(op.label for op in steps if op.label))
    return Op("sequence", inputs, outputs, {"steps": list(steps), "rows": rows},
              steps[0].source, "+".join(labels))


def work(op: Op) -> int:
    """Elements a step touches: its output, or what a reduction reads, or the update."""
    if op.kind == "reduce":
        return op.inputs[0].size
    if op.kind == "dynamic_update_slice":
        return op.inputs[0].size
    return op.outputs[0].size


def _units(op: Op) -> int | None:
    """The range a step's task splits over (output elements, ids), or None if it cannot."""
    if op.kind == "elementwise":
        return op.outputs[0].size
    if op.kind == "reduce":
        return op.attrs["outer"] * op.attrs["inner"]
    if op.kind == "gather_rows":
        return op.inputs[1].size
    return None


def sequence_rows(steps: list[Op]) -> int | None:
    """The rows a run of steps splits into (1: one task), or None if it is no sequence."""
    if not steps or any(op.kind not in STEP_KINDS for op in steps):
        return None
    if any(op.kind == "elementwise" and len(op.outputs[0].shape) > MAX_ELEMENTWISE_RANK
           for op in steps):
        return None
    total = sum(work(op) for op in steps)
    interpreted = max((work(op) for op in steps if op.kind == "elementwise"), default=0)
    reduces = [op for op in steps if op.kind == "reduce"]
    if reduces:
        rows = reduces[0].attrs["outer"]
        if (rows > 1 and total // rows <= ROW_WORK and interpreted // rows <= MAX_INTERPRETED
                and _splits_by_rows(steps, rows)):
            return rows
    return 1 if total <= SMALL_WORK and interpreted <= MAX_INTERPRETED else None


def _splits_by_rows(steps: list[Op], rows: int) -> bool:
    """Whether task r of `rows` can run every step on its row alone."""
    written: dict[int, tuple[Tensor, int]] = {}  # buffer -> (output, elements per row)
    for i, op in enumerate(steps):
        n = _units(op)
        if n is None or n % rows:
            return False
        if op.kind == "reduce" and op.attrs["outer"] % rows:
            return False
        reads = _row_reads(op, rows)
        if reads is None:
            return False
        for t, shape, strides in reads:
            if id(t.buffer) in written and not _same_row(t, shape, strides,
                                                         *written[id(t.buffer)], rows):
                return False
        for t in op.inputs:
            if id(t.buffer) in written and all(t is not r[0] for r in reads):
                return False  # read whole (a gather's table): other rows wrote it
        (out,) = op.outputs
        if not out.is_contiguous or id(out.buffer) in written:
            return False
        if any(out.overlaps(t) for earlier in steps[:i + 1] for t in earlier.inputs):
            return False  # another row may still read what this row overwrites
        written[id(out.buffer)] = (out, out.size // rows)
    return True


def _row_reads(op: Op, rows: int):
    """(tensor, shape, strides) of each read of op, in the shape whose leading dims multiply
    to `rows` and index the row; None if the op has no row structure."""
    if op.kind == "elementwise":
        shape = op.outputs[0].shape
        return [(t, shape, t.strides) for t in op.inputs]
    if op.kind == "reduce":
        (src,) = op.inputs
        per = src.size // rows
        return [(src, (rows, per), (per, 1))]
    if op.kind == "gather_rows":
        ids = op.inputs[1]
        per = ids.size // rows
        return [(ids, (rows, per), (per, 1))]
    return None


def _same_row(read: Tensor, shape, strides, written: Tensor, per_row: int, rows: int) -> bool:
    """Whether element e of a step reading `read` (as `shape`/`strides`, row e // (size /
    rows)) finds, in the contiguous `written`, only the row of the same index."""
    lead, product = 0, 1
    while product < rows and lead < len(shape):
        product *= shape[lead]
        lead += 1
    if product != rows:
        return False
    expected = per_row
    for d in reversed(range(lead)):
        if shape[d] != 1 and strides[d] != expected:
            return False
        expected *= shape[d]
    trailing = sum((n - 1) * s for n, s in zip(shape[lead:], strides[lead:], strict=True)
                   if n > 1)
    if any(s < 0 for n, s in zip(shape[lead:], strides[lead:], strict=True) if n > 1):
        return False
    start = read.offset - written.offset
    return 0 <= start and start + trailing < per_row and math.prod(shape) > 0
