"""From the op graph to a program: buffers to slots, ops to tiles, op order to events.

Each op becomes tasks over tiles of its output, sized so that one op spreads over the
device's workers; every task of an op waits for every task of the ops it depends on
(a read after a write, or a write after a read or write, of overlapping bytes).
"""

from __future__ import annotations

import collections
import dataclasses
import functools

import numpy as np

from jax_mpk import collectives
from jax_mpk.ir import Buffer, Graph, Op, Role, Tensor
from jax_mpk.passes import decode_attention, sequence
from jax_mpk.program import TASK_PREFETCH, TaskKind
from jax_mpk.task_kinds import (
    ATTENTION_MERGE,
    ATTENTION_PARTIAL,
    ATTENTION_WHOLE,
    MATMUL_GATE,
    MATMUL_NORM,
    MATMUL_ROUND_BF16,
    MATMUL_ROUND_F16,
    MATMUL_TENSOR_CORES,
    MAX_ELEMENTWISE_INSTRS,
    MAX_ELEMENTWISE_RANK,
    SEQUENCE_STEP_WORDS,
    ElementwiseProgram,
    Instr,
    Opcode,
    const_bits,
    dtype_code,
)
from jax_mpk.taskgraph import Operand, RuntimeConfig, TaskGraph
from jax_mpk.tensor_parallel import RECEIVE_BUFFER, SIGNAL_BUFFER

# Buffers no task of a launch writes: non-donated arguments and the program's constants.
READ_ONLY_ROLES = (Role.PARAM, Role.INPUT, Role.CONSTANT)

ALIGN = 256


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
    """What tiling needs to know of the device."""

    sm_count: int = 132
    smem_bytes: int = 227 * 1024
    min_tile_elements: int = 256  # elementwise and reduce tiles never get smaller
    matmul_tile_n: int = 16  # output columns of a matmul tile are a multiple of this
    min_split_k: int = 64  # split K only into chunks at least this long ...
    max_split_k: int = 16  # ... and into at most this many
    # The runtime schedule (taskgraph.RuntimeConfig): "static" compiled
    # per-worker lists, the fastest; "dynamic" scheduler warps, the MPK seed.
    schedule: str = "static"
    profile_capacity: int = 0  # timeline entries per worker (jax_mpk.profile)
    poison_results: bool = False  # tests: NaN bytes in results before each launch
    # A launch returns once queued, as jax.jit's do, so the host prepares the next step while
    # this one runs (a 1B decode loop: 1.96 against 2.81 ms a step on an H200). A failure
    # fills its results with NaN and raises from the next launch or runtime.check_launches().
    # False: each call waits for its kernel and raises its own failure.
    defer_errors: bool = True
    # Decode attention as one task kind (passes/decode_attention.py); False keeps the scores
    # matmul, softmax and values matmul (0.5 ms slower a 1B decode step on an H200).
    fused_attention: bool = True
    # RMS norms read only by matmuls are computed in those matmuls (passes/norm_linear.py).
    fold_norms: bool = True
    # So are gatings silu(g) * up read only by matmuls (passes/gating_linear.py) of fewer
    # rows than matmul_tensor_core_rows (any, when that is 0).
    fold_gating: bool = True
    # Cache appends go into the elementwise ops computing what they append, e.g. k's RoPE
    # (passes/cache_append.py): 64 µs less a 1B decode step on an H200.
    fold_cache_appends: bool = True
    # RoPE and the cache appends go into the decode attention that reads them
    # (passes/rope_attention.py): a stage fewer a layer.
    fold_rope: bool = True
    # Matmuls start loading weights no task writes before their inputs are ready
    # (program.TASK_PREFETCH); False for an A/B of that overlap.
    prefetch: bool = True
    # ... this many 16-byte loads a thread (at most 15, its ring's prologue; on the 1B step
    # 8 and 4 were 32 and 56 µs slower than 15, none 58 µs: session 17).
    matmul_prefetch_loads: int = 15
    # Matmuls with at least this many rows of x, bf16 or f16 x and weights of one dtype, run
    # on tensor cores (MATMUL_TENSOR_CORES); 0: never. At batch 1 they were 270 µs slower
    # than CUDA cores on the 1B step (session 18).
    matmul_tensor_core_rows: int = 8
    # The same for weights contiguous along k (a tied LM head: MatmulTask::by_k_mma): the
    # 1B step at batch 8 took 3.66 ms with it against 6.55 on CUDA cores (session 19).
    matmul_tensor_core_rows_along_k: int = 8
    # A decode-attention split's share of the cache is at least this many positions (it runs
    # its share of the live ones); a cache this long or shorter is one task per head group,
    # with no merge.
    attention_split_positions: int = decode_attention.MIN_POSITIONS
    # The last split of a batch index to finish merges the splits (a task counter each),
    # instead of a merge task one hop later.
    attention_merge_in_splits: bool = True
    collective_tile_bytes: int = collectives.DEFAULT_TILE_BYTES  # allreduce/allgather tiles

    @classmethod
    def of_cuda_device(cls, info: dict, **overrides) -> DeviceSpec:
        """From jax_mpk.runtime.device_info()."""
        return cls(sm_count=int(info["sm_count"]),
                   smem_bytes=int(info["shared_memory_per_block"]), **overrides)

    @property
    def runtime_config(self) -> RuntimeConfig:
        return RuntimeConfig.for_sm_count(self.sm_count, schedule=self.schedule,
                                          profile_capacity=self.profile_capacity,
                                          poison_results=self.poison_results,
                                          defer_errors=self.defer_errors)

    @property
    def workers(self) -> int:
        return self.runtime_config.num_workers


@dataclasses.dataclass
class TaskRecord:
    kind: TaskKind
    op: int  # index of the op in the graph


@dataclasses.dataclass
class CompiledProgram:
    program: object  # jax_mpk.program.Program
    graph: Graph
    tasks: list[TaskRecord]  # by program task index
    op_tasks: list[int]  # tasks per op
    symmetric_buffers: dict[int, int] = dataclasses.field(default_factory=dict)  # id -> bytes


class _Location(collections.namedtuple("_Location", "buffer offset nbytes")):
    """Bytes [offset, offset + nbytes) of a buffer (a Buffer, "const" for descriptors, or
    COUNTERS for the task counters)."""


COUNTERS = "task counters"  # _Location.buffer of ProgramBuilder.task_counters
_UNPLACED = ("const", COUNTERS)


class ProgramBuilder:
    def __init__(self, graph: Graph, device: DeviceSpec, tensor_parallel=None):
        self.graph = graph
        self.device = device
        self.tensor_parallel = tensor_parallel
        self.signal_words = 0  # NVSHMEM signal words the collectives take
        self.receive_bytes = 0  # of the symmetric buffer the collectives receive into
        self.workers = device.workers
        self.constants = bytearray()
        self.const_offsets: dict[int, int] = {}  # id(constant buffer) -> offset in the blob
        self.workspace_bytes = 0
        self.workspace_offsets: dict[int, int] = {}
        self.task_counter_words = 0
        self.tasks: list[tuple] = []  # kind, [locations], dims, op index, stage, flags

    # Memory ------------------------------------------------------------------------
    def descriptor(self, words: np.ndarray) -> _Location:
        raw = np.ascontiguousarray(words, np.int32).tobytes()
        at = _align(len(self.constants), 16)
        self.constants.extend(b"\0" * (at - len(self.constants)) + raw)
        return _Location("const", at, len(raw))

    def task_counters(self, count: int) -> _Location:
        """`count` uint64 arrival counters, zero at each launch (TaskGraph.task_counters)."""
        first = self.task_counter_words
        self.task_counter_words += count
        return _Location(COUNTERS, 8 * first, 8 * count)

    def scratch(self, nbytes: int) -> Buffer:
        return Buffer(nbytes, Role.INTERMEDIATE, "scratch")

    def location(self, t: Tensor) -> _Location:
        lo, hi = t.span()
        return _Location(t.buffer, lo, hi - lo)

    def _place(self, buffer: Buffer) -> tuple[str, int]:
        if buffer.role is Role.CONSTANT:
            if id(buffer) not in self.const_offsets:
                at = _align(len(self.constants), ALIGN)
                raw = np.ascontiguousarray(buffer.value).tobytes()
                self.constants.extend(b"\0" * (at - len(self.constants)) + raw)
                self.const_offsets[id(buffer)] = at
            return "const", self.const_offsets[id(buffer)]
        if buffer.arg_index is not None:
            return "arg", 0
        if buffer.role is Role.OUTPUT:
            return "ret", 0
        if id(buffer) not in self.workspace_offsets:
            self.workspace_offsets[id(buffer)] = self.workspace_bytes
            self.workspace_bytes = _align(self.workspace_bytes + buffer.nbytes, ALIGN)
        return "workspace", self.workspace_offsets[id(buffer)]

    # Tasks ------------------------------------------------------------------------
    def add(self, kind: TaskKind, locations, dims, op_index: int, stage: int = 0, flags: int = 0):
        """A task of op op_index; the tasks of a stage wait for all of the stage before.
        flags: program.TASK_* bits the kernel reads (TASK_PREFETCH)."""
        self.tasks.append((kind, list(locations), [int(d) for d in dims], op_index, stage, flags))

    def add_collective(self, locations, emit, op_index: int):
        """Tasks that emit(task_graph, operand_of_location, deps) adds to the TaskGraph itself
        (jax_mpk.collectives); it returns the tasks that later ops wait for."""
        self.tasks.append((None, list(locations), emit, op_index, 0, 0))

    def build(self) -> CompiledProgram:
        op_deps, ancestors = op_dependencies(self.graph.ops)
        for i, op in enumerate(self.graph.ops):
            TILERS[op.kind](self, op, i)
        if not self.tasks and self.graph.ops:  # every op is empty (zero-size arrays)
            self.add(TaskKind.NOOP, [], [], 0)
        self._plan_workspace(ancestors)
        return self._emit(op_deps)

    def _plan_workspace(self, ancestors: list[int]) -> None:
        """Offsets of intermediates; a buffer reuses the bytes of one whose every access
        happens before each of its own accesses (through the events)."""
        accessors: dict[int, int] = {}  # id(buffer) -> bitset of ops touching it
        buffers: dict[int, Buffer] = {}
        for _, locations, _, op_index, _, _ in self.tasks:
            for loc in locations:
                b = loc.buffer
                if b not in _UNPLACED and b.arg_index is None and b.role not in (Role.OUTPUT,
                                                                         Role.CONSTANT):
                    accessors[id(b)] = accessors.get(id(b), 0) | 1 << op_index
                    buffers[id(b)] = b
        blocks: list[list[int]] = []  # [offset, capacity, accessors of the occupant]
        for key in sorted(buffers, key=lambda k: (accessors[k] & -accessors[k])):
            size = _align(buffers[key].nbytes, ALIGN)
            ops = [i for i in range(accessors[key].bit_length()) if accessors[key] >> i & 1]
            before_all = ~0
            for i in ops:
                before_all &= ancestors[i]
            block = next((b for b in blocks if b[1] >= size
                          and b[2] & before_all == b[2]), None)
            if block is None:
                block = [self.workspace_bytes, size, 0]
                self.workspace_bytes += size
                blocks.append(block)
            block[2] = accessors[key]
            self.workspace_offsets[key] = block[0]

    def _emit(self, op_deps) -> CompiledProgram:
        graph = self.graph
        results = {id(t.buffer): i for i, t in enumerate(graph.outputs)
                   if i not in graph.aliases}
        placed = {}
        for _, locations, _, _, _, _ in self.tasks:
            for loc in locations:
                if loc.buffer not in _UNPLACED and id(loc.buffer) not in placed:
                    placed[id(loc.buffer)] = self._place(loc.buffer)
        tg = TaskGraph()
        tp = self.tensor_parallel
        if tp is not None:
            tg.nvshmem(tp.rank, tp.size)
            if self.signal_words:
                tg.signal_words(SIGNAL_BUFFER, self.signal_words)
        arg_slots = {i: tg.arg(i, b.nbytes) for i, b in enumerate(graph.args)}
        ret_slots = {i: tg.ret(i, t.buffer.nbytes) for i, t in enumerate(graph.outputs)
                     if i not in graph.aliases}
        workspace_slot = tg.workspace(self.workspace_bytes) if self.workspace_bytes else None
        const_slot = (tg.constant(np.frombuffer(bytes(self.constants), np.uint8))
                      if self.constants else None)
        counter_slot = (tg.task_counters(self.task_counter_words)
                        if self.task_counter_words else None)

        @functools.cache  # the tiles of an op share their locations
        def operand(loc: _Location) -> Operand:
            if loc.buffer == "const":
                return Operand(const_slot, loc.offset, loc.nbytes)
            if loc.buffer == COUNTERS:
                return Operand(counter_slot, loc.offset, loc.nbytes)
            where, base = placed[id(loc.buffer)]
            slot = {"arg": lambda: arg_slots[loc.buffer.arg_index],
                    "ret": lambda: ret_slots[results[id(loc.buffer)]],
                    "workspace": lambda: workspace_slot,
                    "const": lambda: const_slot}[where]()
            return Operand(slot, base + loc.offset, loc.nbytes)

        stage_tasks: dict[tuple[int, int], list[int]] = collections.defaultdict(list)
        last_stage: dict[int, int] = {}
        for _, _, _, op_index, stage, _ in self.tasks:
            last_stage[op_index] = max(stage, last_stage.get(op_index, 0))
        records = []
        op_tasks = [0] * len(graph.ops)
        dep_lists: dict[tuple[int, int], list[int]] = {}
        for kind, locations, dims, op_index, stage, flags in self.tasks:
            key = (op_index, stage)
            if key not in dep_lists:
                if stage:
                    dep_lists[key] = list(stage_tasks[(op_index, stage - 1)])
                else:
                    dep_lists[key] = sorted(t for d in op_deps[op_index]
                                            for t in stage_tasks[(d, last_stage[d])])
            if kind is None:  # a collective: dims is its emit function
                first = tg.num_tasks
                stage_tasks[key].extend(dims(tg, operand, dep_lists[key]))
                records.extend(TaskRecord(TaskKind(tg.kind_of(t)), op_index)
                               for t in range(first, tg.num_tasks))
                op_tasks[op_index] += tg.num_tasks - first
                continue
            name = graph.ops[op_index].label or graph.ops[op_index].kind
            task = tg.add_task(kind, [operand(loc) for loc in locations], dims,
                               dep_lists[key], name, flags=flags)
            stage_tasks[key].append(task)
            records.append(TaskRecord(kind, op_index))
            op_tasks[op_index] += 1
        # Result i is FFI result i; a donated one aliases its argument and tasks write that.
        built = tg.build(self.device.runtime_config, len(graph.args), len(graph.outputs))
        ordered = [None] * len(records)
        for user_id, record in enumerate(records):
            ordered[built.task_index[user_id]] = record
        symmetric = {}
        if self.signal_words:
            symmetric[SIGNAL_BUFFER] = 8 * self.signal_words
        if self.receive_bytes:
            symmetric[RECEIVE_BUFFER] = self.receive_bytes
        return CompiledProgram(built.program, graph, ordered, op_tasks, symmetric)


def op_dependencies(ops: list[Op]) -> tuple[list[list[int]], list[int]]:
    """For each op, the earlier ops it must wait for, without those implied transitively;
    and as bitsets, all the ops that happen before it."""
    history: dict[int, list[tuple[int, Tensor, bool]]] = collections.defaultdict(list)
    ancestors: list[int] = []  # bitsets
    deps_of = []
    for i, op in enumerate(ops):
        direct = set()
        # A write at a dynamic place (passes/cache_append.py) names every place it may land.
        writes = op.outputs + op.attrs.get("writes_within", [])
        accesses = [(t, False) for t in op.inputs] + [(t, True) for t in writes]
        for t, is_write in accesses:
            for j, other, other_write in history[id(t.buffer)]:
                if (is_write or other_write) and j != i and t.overlaps(other):
                    direct.add(j)
        reach = 0
        for j in direct:
            reach |= ancestors[j]
        deps = sorted(j for j in direct if not (reach >> j) & 1)
        ancestors.append(reach | sum(1 << j for j in direct))
        deps_of.append(deps)
        for t, is_write in accesses:
            history[id(t.buffer)].append((i, t, is_write))
    return deps_of, ancestors


# Tilers: one per op kind -------------------------------------------------------------
def _tiles(total: int, parts: int, multiple: int = 1) -> list[tuple[int, int]]:
    """[start, count) chunks covering total, about `parts` of them, counts a multiple."""
    size = max(multiple, -(-total // max(parts, 1)))
    size = -(-size // multiple) * multiple
    return [(s, min(size, total - s)) for s in range(0, total, size)]


def _collapse(shape, tensors_strides, keep_dims: bool):
    """Merge neighbouring dims whose strides chain in every tensor; drop size-1 dims."""
    if keep_dims:
        return list(shape), [list(s) for s in tensors_strides]
    dims = [d for d in range(len(shape)) if shape[d] != 1]
    new_shape = [shape[d] for d in dims]
    new_strides = [[s[d] for d in dims] for s in tensors_strides]
    d = len(new_shape) - 1
    while d > 0:
        if all(s[d - 1] == s[d] * new_shape[d] for s in new_strides):
            new_shape[d - 1] *= new_shape[d]
            for s in new_strides:
                s[d - 1] = s[d]
                del s[d]
            del new_shape[d]
        d -= 1
    return new_shape, new_strides


@dataclasses.dataclass
class _Step:
    """An op as one task of its kind over the op's whole range: dims[at] and dims[at + 1]
    hold the (first, count) of the range's `units`, which tiles narrow. at None: the task
    has no range and runs whole."""

    kind: TaskKind
    locations: list
    dims: list[int]
    at: int | None = None
    units: int = 1

    def tile(self, first: int, count: int) -> list[int]:
        dims = list(self.dims)
        dims[self.at:self.at + 2] = [first, count]
        return dims


def _elementwise_step(pb: ProgramBuilder, op: Op) -> _Step:
    out = op.outputs[0]
    instrs = op.attrs["instrs"]
    has_iota = any(i.opcode == Opcode.IOTA for i in instrs)
    shape, strides = _collapse(out.shape, [out.strides] + [t.strides for t in op.inputs],
                               has_iota)
    if len(shape) > MAX_ELEMENTWISE_RANK:
        raise NotImplementedError(f"elementwise op of rank {len(shape)} beyond "
                                  f"{MAX_ELEMENTWISE_RANK} after merging dims ({op.source})")
    if len(instrs) > MAX_ELEMENTWISE_INSTRS:
        raise NotImplementedError(f"elementwise op of {len(instrs)} instructions, beyond the "
                                  f"task's {MAX_ELEMENTWISE_INSTRS} ({op.source})")
    dynamic_row = op.attrs.get("dynamic_row")  # passes/cache_append.py
    program = ElementwiseProgram(instrs, len(op.inputs), dynamic_row)
    words = program.encode(shape, strides[0], [t.dtype for t in op.inputs], strides[1:])
    written = pb.location(out)
    if dynamic_row:  # the operand spans every row the output may land on
        _, per_row, rows, rows_written, _ = dynamic_row
        extra = (rows - rows_written) * per_row * out.dtype.itemsize
        written = _Location(written.buffer, written.offset, written.nbytes + extra)
    locations = [written, pb.descriptor(words)] + [pb.location(t) for t in op.inputs]
    return _Step(TaskKind.ELEMENTWISE, locations, [0, out.size], 0, out.size)


def _elementwise_tasks(pb: ProgramBuilder, op: Op, index: int, stage: int = 0,
                       min_tile: int | None = None) -> None:
    if _is_byte_copy(op, op.attrs["instrs"]):
        src = pb.location(op.inputs[0])
        dst = pb.location(op.outputs[0])
        for start, count in _tiles(dst.nbytes, pb.workers, pb.device.min_tile_elements * 4):
            pb.add(TaskKind.COPY, [_Location(dst.buffer, dst.offset + start, count),
                                   _Location(src.buffer, src.offset + start, count)],
                   [count & 0x7FFFFFFF, count >> 31], index, stage)
        return
    step = _elementwise_step(pb, op)
    for start, count in _tiles(step.units, pb.workers, min_tile or pb.device.min_tile_elements):
        pb.add(step.kind, step.locations, step.tile(start, count), index, stage)


def _is_byte_copy(op: Op, instrs) -> bool:
    out = op.outputs[0]
    return (len(instrs) == 1 and instrs[0].opcode == Opcode.LOAD and out.is_contiguous
            and "dynamic_row" not in op.attrs
            and op.inputs[0].is_contiguous and op.inputs[0].dtype == out.dtype)


def _reduce_step(pb: ProgramBuilder, op: Op) -> _Step:
    (src,), (out,) = op.inputs, op.outputs
    a = op.attrs
    total = a["outer"] * a["inner"]
    return _Step(TaskKind.REDUCE, [pb.location(out), pb.location(src)],
                 [a["outer"], a["length"], a["inner"], a["reducer"], dtype_code(src.dtype),
                  dtype_code(out.dtype), 0, total], 6, total)


def _reduce_tasks(pb: ProgramBuilder, op: Op, index: int) -> None:
    step = _reduce_step(pb, op)
    rows = max(1, pb.device.min_tile_elements // max(op.attrs["length"], 1))
    for start, count in _tiles(step.units, pb.workers, rows):
        pb.add(step.kind, step.locations, step.tile(start, count), index)


def _gather_step(pb: ProgramBuilder, op: Op) -> _Step:
    table, ids = op.inputs
    a = op.attrs
    n = ids.size
    return _Step(TaskKind.GATHER_ROWS, [pb.location(op.outputs[0]), pb.location(table),
                                        pb.location(ids)],
                 [n, a["width"], a["rows"], dtype_code(table.dtype), a["mode"], 0, n], 5, n)


def _gather_tasks(pb: ProgramBuilder, op: Op, index: int) -> None:
    step = _gather_step(pb, op)
    per = max(1, pb.device.min_tile_elements // op.attrs["width"])
    for start, count in _tiles(step.units, pb.workers, per):
        pb.add(step.kind, step.locations, step.tile(start, count), index)


def _padded(values, fill=1):
    return list(values) + [fill] * (4 - len(values))


def _dynamic_slice_step(pb: ProgramBuilder, op: Op) -> _Step:
    src, *starts = op.inputs
    (out,) = op.outputs
    a = op.attrs
    return _Step(TaskKind.DYNAMIC_SLICE, [pb.location(out), pb.location(src)]
                 + [pb.location(s) for s in starts],
                 [len(a["src_shape"]), *_padded(a["src_shape"]), *_padded(a["sizes"]),
                  a["wrap_mask"], src.dtype.itemsize])


def _dynamic_update_slice_step(pb: ProgramBuilder, op: Op) -> _Step:
    update, *starts, dst = op.inputs
    a = op.attrs
    return _Step(TaskKind.DYNAMIC_UPDATE_SLICE, [pb.location(dst), pb.location(update)]
                 + [pb.location(s) for s in starts],
                 [len(a["dst_shape"]), *_padded(a["dst_shape"]), *_padded(a["sizes"]),
                  a["wrap_mask"], dst.dtype.itemsize])


def _whole_task(make_step):
    def tiler(pb: ProgramBuilder, op: Op, index: int) -> None:
        step = make_step(pb, op)
        pb.add(step.kind, step.locations, step.dims, index)
    return tiler


STEP_TASK_KINDS = {
    "elementwise": TaskKind.ELEMENTWISE,
    "reduce": TaskKind.REDUCE,
    "gather_rows": TaskKind.GATHER_ROWS,
    "dynamic_slice": TaskKind.DYNAMIC_SLICE,
    "dynamic_update_slice": TaskKind.DYNAMIC_UPDATE_SLICE,
}
STEPS = {
    "elementwise": _elementwise_step,
    "reduce": _reduce_step,
    "gather_rows": _gather_step,
    "dynamic_slice": _dynamic_slice_step,
    "dynamic_update_slice": _dynamic_update_slice_step,
}


def _sequence_tasks(pb: ProgramBuilder, op: Op, index: int) -> None:
    """The steps of a sequence (jax_mpk/passes/sequence.py) as one task per tile of rows."""
    rows = op.attrs["rows"]
    steps = [STEPS[s.kind](pb, s) for s in op.attrs["steps"]]
    words = [len(steps)]
    for s in steps:
        dims = s.dims + [0] * (SEQUENCE_STEP_WORDS - 4 - len(s.dims))
        words += [int(s.kind), len(s.locations), -1 if s.at is None else s.at,
                  0 if s.at is None else s.units // rows, *dims]
    locations = [pb.descriptor(np.array(words, np.int32))]
    locations += [loc for s in steps for loc in s.locations]
    row_work = max(1, sum(sequence.work(s) for s in op.attrs["steps"]) // rows)
    for first, count in _tiles(rows, pb.workers, max(1, pb.device.min_tile_elements // row_work)):
        pb.add(TaskKind.SEQUENCE, locations, [first, count], index)


def _matmul_tasks(pb: ProgramBuilder, op: Op, index: int) -> None:
    x, w = op.inputs[:2]
    (out,) = op.outputs
    a = dict(op.attrs)
    has_residual = "residual" in a
    has_bias = "bias" in a
    norm = a.get("norm")  # passes/norm_linear.py: (eps, offset, dtype), scale after the epilogue
    gate = a.get("gate", False)  # passes/gating_linear.py: up after the epilogue
    rounding = a.get("round")  # passes/patterns.fold_output_casts: the dtype stored as out's
    out_strides = a.get("out_strides", (a["M"] * a["N"], a["N"], 1))
    if _stream_x(a, has_bias):
        x, w, a, out_strides = _transposed(x, w, a, out_strides)
    B, M, N, K = a["B"], a["M"], a["N"], a["K"]
    extra = [op.inputs[2 + i] for i in range(int(has_residual) + int(has_bias))]
    scale_input = op.inputs[2 + len(extra)] if norm else None
    scale = [pb.location(op.inputs[2 + len(extra)])] if norm or gate else []
    extent_axis = EXTENT_AXES[a.get("extent_axis")]
    extent = [pb.location(op.inputs[-1])] if extent_axis else []
    b_tiles = [(b, 1) for b in range(B)]
    eps, offset, norm_dtype = norm or (0.0, 0.0, x.dtype)
    tensor_cores = on_tensor_cores(pb.device, M, x.dtype, w.dtype, a["w_strides"],
                                   np.dtype(norm_dtype) if norm else None)
    if a["w_strides"][3] == 1:
        # Weights contiguous along n: one tile of whole columns per worker where N allows
        # (on an H100 a 32-byte-wide tile streams as fast as a 512-byte one, and needs no
        # split-K combine); else K is split below to give every worker a tile. Sibling
        # matmuls (passes.patterns.group_sibling_matmuls: q, k and v of one x) share the
        # workers: the width comes from the group's columns, and so does the split.
        columns = a.get("group_columns", (N,))
        unit = pb.device.matmul_tile_n
        per_worker = -(-sum(columns) // max(1, pb.workers // B))
        row = max(unit, -(-per_worker // unit) * unit)
        if norm and tensor_cores:  # the kernel's tensor core tiles: 16 to 128 columns
            row = min(row, MMA_TILE_COLUMNS)
        elif row > MAX_TILE_COLUMNS:  # several tiles a worker, of even widths
            waves = -(-row // MAX_TILE_COLUMNS)
            row = min(-(-per_worker // waves // unit) * unit, MAX_TILE_COLUMNS // unit * unit)
        n_tiles = _tiles(N, -(-N // row), unit)
        tiles = B * sum(-(-n // row) for n in columns)  # the group's, this op's among them
    else:
        n_tiles = _tiles(N, max(1, pb.workers // B), pb.device.matmul_tile_n)
        tiles = len(n_tiles) * len(b_tiles)
    splits = 1
    # Too few output tiles to busy the device: split K. Not over a live extent (attention's
    # values over the cache): splits past it would idle, and the combine costs a stage.
    # Nor with a norm (passes/norm_linear.py): each task normalizes whole rows of x.
    if tiles * 2 <= pb.workers and extent_axis != EXTENT_AXES["K"] and not norm:
        splits = max(1, min(pb.workers // tiles, K // pb.device.min_split_k,
                            pb.device.max_split_k))
    k_tiles = _tiles(K, splits)
    # Weights no task writes (parameters, constants) may be loaded before the task's inputs
    # are ready: the kernel starts their first loads while it waits.
    prefetch = (TASK_PREFETCH if pb.device.prefetch and w.buffer.role in READ_ONLY_ROLES
                and not extent_axis else 0)

    norm_words = [const_bits(eps, np.float32), const_bits(offset, np.float32),
                  dtype_code(norm_dtype), dtype_code(scale_input.dtype if norm else x.dtype)]

    def desc(out_dtype, flags, strides=out_strides):
        flags |= ((MATMUL_NORM if norm else 0) | (MATMUL_GATE if gate else 0)
                  | (MATMUL_TENSOR_CORES if tensor_cores else 0))
        return pb.descriptor(np.array(
            [B, a["B1"], M, N, K, dtype_code(x.dtype), dtype_code(w.dtype), dtype_code(out_dtype),
             flags, *a["x_strides"], *a["w_strides"], *strides, extent_axis, *norm_words,
             pb.device.matmul_prefetch_loads], np.int32))

    if len(k_tiles) == 1:
        flags = int(has_residual) | int(has_bias) << 1
        if rounding is not None:
            flags |= {"bfloat16": MATMUL_ROUND_BF16,
                      "float16": MATMUL_ROUND_F16}[np.dtype(rounding).name]
        locations = [pb.location(out), desc(out.dtype, flags), pb.location(x),
                     pb.location(w)] + [pb.location(t) for t in extra] + scale + extent
        for b0, bn in b_tiles:
            for n0, nn in n_tiles:
                pb.add(TaskKind.MATMUL, locations, [b0, bn, n0, nn, 0, K], index,
                       flags=prefetch)
        return
    # Split-K: float32 partial sums, then one elementwise op adds them (and the epilogue).
    partial_bytes = B * M * N * 4
    scratch = pb.scratch(partial_bytes * len(k_tiles))
    # Partials are compact [B, M, N] whatever the output's strides (a folded copy's may
    # spread wider than B x M x N).
    compact = (M * N, N, 1)
    partial_desc = desc(np.dtype(np.float32), 0, compact)
    for s, (k0, kn) in enumerate(k_tiles):
        dst = _Location(scratch, s * partial_bytes, partial_bytes)
        for b0, bn in b_tiles:
            for n0, nn in n_tiles:
                pb.add(TaskKind.MATMUL, [dst, partial_desc, pb.location(x), pb.location(w)]
                       + scale + extent, [b0, bn, n0, nn, k0, kn], index, flags=prefetch)
    f32 = np.dtype(np.float32)
    partials = [Tensor((B * M * N,), f32, scratch, s * B * M * N) for s in range(len(k_tiles))]
    instrs = [Instr(Opcode.LOAD, f32, (), s) for s in range(len(k_tiles))]
    acc = 0
    for s in range(1, len(k_tiles)):
        instrs.append(Instr(Opcode.ADD, f32, (acc, s)))
        acc = len(instrs) - 1
    inputs = list(partials)
    flat_out = out.view((B, M, N), out_strides)
    for t in extra:
        inputs.append(t)
        instrs.append(Instr(Opcode.LOAD, t.dtype, (), len(inputs) - 1))
        if t.dtype != f32:
            instrs.append(Instr(Opcode.CONVERT, f32, (len(instrs) - 1,)))
        instrs.append(Instr(Opcode.ADD, f32, (acc, len(instrs) - 1)))
        acc = len(instrs) - 1
    if rounding is not None:
        instrs.append(Instr(Opcode.CONVERT, np.dtype(rounding), (acc,)))
        acc = len(instrs) - 1
    instrs.append(Instr(Opcode.CONVERT, out.dtype, (acc,)))
    shaped = [p.view((B, M, N), compact) for p in partials]
    if has_residual:
        shaped.append(extra[0].view((B, M, N), out_strides))
    if has_bias:
        shaped.append(extra[-1].view((B, M, N), (0, 0, 1)))
    combine = Op("elementwise", shaped, [flat_out], {"instrs": instrs}, op.source)
    # Small tiles: the sum sits on the critical path between two matmuls.
    _elementwise_tasks(pb, combine, index, stage=1, min_tile=256)


EXTENT_AXES = {None: 0, "M": 1, "N": 2, "K": 3}

def _decode_attention_tasks(pb: ProgramBuilder, op: Op, index: int) -> None:
    """Splits of the cache for each batch index, spread over the workers, merged by the last
    split of each batch index to finish or by a merge task per batch index
    (passes/decode_attention.py; DECODE_ATTENTION in task_kinds.py)."""
    q, k, v, extent, *rope = op.inputs
    (out,) = op.outputs
    a = op.attrs
    B, G, T, D = a["B"], a["G"], a["T"], a["D"]
    splits = max(1, min(pb.workers // B, -(-T // pb.device.attention_split_positions)))
    length = -(-T // splits)
    while G * (D + a["Dv"] + length) > decode_attention.SHARED_FLOATS:
        length = -(-length // 2)
    splits = -(-T // length)
    words = [B, a["B1"], G, T, D, a["Dv"], *(dtype_code(t.dtype) for t in (q, k, v, out)),
             dtype_code(a["scores_dtype"]), *a["q_strides"], *a["k_strides"], *a["v_strides"],
             *a["out_strides"], int(np.float32(a["scale"]).view(np.int32)), splits]
    if rope:  # passes/rope_attention.py: new k, new v, cos, sin, pos[, the norms'] after the others
        new_k, new_v, cos = rope[:3]
        words += [int(a["rope"]["wrap"]), dtype_code(a["rope"]["q_dtype"]),
                  dtype_code(new_k.dtype), dtype_code(new_v.dtype), dtype_code(cos.dtype),
                  cos.strides[0], *new_k.strides, *new_v.strides]
    words += [0] * (decode_attention.STAGED_WORDS - len(words))
    if "norm" in a.get("rope", {}):
        norm, (q_scale, k_scale) = a["rope"]["norm"], rope[5:]
        words += [dtype_code(norm["dtype"]), dtype_code(q_scale.dtype),
                  *(int(np.float32(norm[c]).view(np.int32)) for c in ("n", "eps", "c")),
                  q_scale.strides[0], k_scale.strides[0]]
    locations = [pb.location(out), pb.descriptor(np.array(words, np.int32)), pb.location(q),
                 pb.location(k), pb.location(v), pb.location(extent)]
    tail = [pb.location(t) for t in rope]
    if splits == 1:
        for b in range(B):
            pb.add(TaskKind.DECODE_ATTENTION, locations + tail,
                   [b, 1, 0, T, ATTENTION_WHOLE, 0, len(tail)], index)
        return
    record = G * (2 + a["Dv"]) * 4
    partials = pb.scratch(B * splits * record)
    locations.append(_Location(partials, 0, B * splits * record))
    merge_in_splits = pb.device.attention_merge_in_splits
    if merge_in_splits:  # a counter per batch index: its last split to finish merges
        locations.append(pb.task_counters(B))
    for b in range(B):
        for s in range(splits):
            pb.add(TaskKind.DECODE_ATTENTION, locations + tail,
                   [b, 1, s * length, min(length, T - s * length), ATTENTION_PARTIAL, s, len(tail)],
                   index)
    if merge_in_splits:
        return
    for b in range(B):
        pb.add(TaskKind.DECODE_ATTENTION, locations, [b, 1, 0, T, ATTENTION_MERGE, 0], index,
               stage=1)


# kernels/tasks/matmul.cuh: tensor core tiles of by_columns_mma (16 to 128 columns) and what
# their x stages at once (kPairWords words of 16-bit pairs, rows k / 2 + 4 words apart, k
# padded to the ring stage's rows: at most 128).
MMA_TILE_COLUMNS = 128
# by_columns (CUDA cores) stores a round's sums one column a thread of the block's 256: a
# tile of weights contiguous along n has at most this many columns.
MAX_TILE_COLUMNS = 256
MMA_PAIR_WORDS = 10240
MMA_MAX_ROWS = 64


def on_tensor_cores(device: DeviceSpec, M: int, x_dtype, w_dtype, w_strides,
                    norm_dtype=None) -> bool:
    """Whether a matmul's tasks ask for tensor cores (MATMUL_TENSOR_CORES): rows from the
    device's threshold (one for weights contiguous along n, one along k), 16-bit x and
    weights of one dtype, and a folded norm only where it rounds to that dtype."""
    rows = (device.matmul_tensor_core_rows if w_strides[3] == 1
            else device.matmul_tensor_core_rows_along_k)
    return (0 < rows <= M and x_dtype == w_dtype
            and np.dtype(x_dtype).name in ("bfloat16", "float16")
            and (norm_dtype is None or norm_dtype == x_dtype))


def tensor_cores_normalize(device: DeviceSpec, M: int, K: int, N: int, dtype, w_strides) -> bool:
    """Whether a matmul of M rows on tensor cores can normalize its x (passes/norm_linear.py):
    all of K in one staged chunk of its rows (MatmulTask::mma_norm_fits), weights along n
    in tiles of whole 16-column blocks."""
    rows = -(-min(M, MMA_MAX_ROWS) // 8) * 8
    fit = (MMA_PAIR_WORDS // rows - 4) * 2 // MMA_TILE_COLUMNS * MMA_TILE_COLUMNS
    return (on_tensor_cores(device, M, dtype, dtype, w_strides, np.dtype(dtype))
            and w_strides[3] == 1 and M <= MMA_MAX_ROWS and K <= fit and K % 8 == 0
            and N % 16 == 0 and device.matmul_tile_n % 16 == 0)


def _stream_x(a: dict, has_bias: bool) -> bool:
    """Whether x is the operand to stream (many rows against few columns, as the scores
    of attention over a cache are): the kernels stream w, so then the tiles swap roles."""
    return not has_bias and a["M"] >= 64 and a["M"] >= 4 * a["N"]


def _transposed(x: Tensor, w: Tensor, a: dict, out_strides):
    """out^T = w^T x^T: w becomes x and x becomes w; the output is written transposed."""
    xs, ws = a["x_strides"], a["w_strides"]
    swapped = dict(a, M=a["N"], N=a["M"], x_strides=(ws[0], ws[1], ws[3], ws[2]),
                   w_strides=(xs[0], xs[1], xs[3], xs[2]),
                   extent_axis={"M": "N", "N": "M"}.get(a.get("extent_axis"), a.get("extent_axis")))
    return w, x, swapped, (out_strides[0], out_strides[2], out_strides[1])


def _collective_tasks(pb: ProgramBuilder, op: Op, index: int) -> None:
    """allreduce (sum) or allgather over the tensor-parallel ranks: rank r's x lands in row
    r of a region of the receive buffer on every rank (jax_mpk/collectives.py)."""
    (x,), (out,) = op.inputs, op.outputs
    tp, tile = pb.tensor_parallel, pb.device.collective_tile_bytes
    if tp is None:
        raise NotImplementedError(f"{op.kind} outside a tensor-parallel program ({op.source})")
    offset = pb.receive_bytes
    pb.receive_bytes = _align(offset + tp.size * x.nbytes, ALIGN)
    pb.signal_words += collectives.signal_words_needed(x.nbytes, x.dtype, tile)
    build = collectives.allreduce if op.kind == "allreduce" else collectives.allgather
    src, dst = pb.location(x), pb.location(out)

    def emit(g, operand, deps):
        return build(g, operand(src), operand(dst), x.dtype, RECEIVE_BUFFER, tile, deps, offset)

    pb.add_collective([dst, src], emit, index)


TILERS = {
    "elementwise": _elementwise_tasks,
    "reduce": _reduce_tasks,
    "matmul": _matmul_tasks,
    "gather_rows": _gather_tasks,
    "dynamic_slice": _whole_task(_dynamic_slice_step),
    "dynamic_update_slice": _whole_task(_dynamic_update_slice_step),
    "sequence": _sequence_tasks,
    "decode_attention": _decode_attention_tasks,
    "allreduce": _collective_tasks,
    "allgather": _collective_tasks,
}


def compile_graph(graph: Graph, device: DeviceSpec, tensor_parallel=None) -> CompiledProgram:
    return ProgramBuilder(graph, device, tensor_parallel).build()


def _align(x: int, a: int) -> int:
    return (x + a - 1) // a * a

