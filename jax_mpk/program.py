"""The program format, mirrored field by field from kernels/runtime/program_format.h.

A `Program` holds numpy structured arrays, one per section of the blob; `to_bytes`
and `from_bytes` convert to and from the blob the runtime reads.
"""

from __future__ import annotations

import dataclasses
import enum

import numpy as np

MAGIC = 0x4B504D4A
VERSION = 2
MAX_SLOTS = 1024
MAX_EVENTS = 1 << 24
MAX_ITERATIONS = 1 << 16
MAX_TASK_DIMS = 12
SCHEDULERS_PER_BLOCK = 4
TASK_RELAXED_TRIGGERS = 1  # TaskDesc.flags: every consumer runs later on this worker
TASK_PREFETCH = 2  # TaskDesc.flags: static: start loading its read-only operands before its wait
PROGRAM_POISON_RESULTS = 1  # ProgramHeader.flags: NaN bytes in results before each launch
PROGRAM_DEFER_ERRORS = 2  # ProgramHeader.flags: a launch returns once queued (check_launches)
NO_WAIT = 0xFFFFFFFF  # static list entry: every producer ran earlier on this worker
NVSHMEM_EVENT_TAG = 0x80000000  # a trigger id naming a signal word on a PE (see nvshmem_event)
MAX_PES = 8
MAX_SIGNALS = 1 << 24


def nvshmem_event(pe: int, word: int) -> int:
    """The tagged event id of signal word `word` in PE `pe`'s copy of the signal buffer."""
    if not 0 <= pe < MAX_PES or not 0 <= word < MAX_SIGNALS:
        raise ValueError(f"NVSHMEM event (PE {pe}, word {word}) is outside PEs [0, {MAX_PES}) "
                         f"and words [0, {MAX_SIGNALS})")
    return NVSHMEM_EVENT_TAG | pe << 24 | word


def is_nvshmem_event(event: int) -> bool:
    return bool(int(event) & NVSHMEM_EVENT_TAG)


def nvshmem_event_pe(event: int) -> int:
    return (int(event) >> 24) & 0x7F


def nvshmem_event_word(event: int) -> int:
    return int(event) & 0xFFFFFF


class TaskKind(enum.IntEnum):
    NOOP = 0
    COPY = 1
    COMBINE_U32 = 2
    WAIT_VALUE = 3
    # NVSHMEM kinds (kernels/tasks/nvshmem_*.cuh).
    PUT = 8  # dims: bytes (lo, hi), pe; operands: dst (symmetric), src
    SIGNAL_WAIT = 9  # dims: tagged event id (as int32), threshold per iteration, lag (0 or 1)
    # LLM task kinds; dims and operands are documented in jax_mpk/task_kinds.py.
    ELEMENTWISE = 16
    REDUCE = 17
    MATMUL = 18
    GATHER_ROWS = 19
    DYNAMIC_SLICE = 20
    DYNAMIC_UPDATE_SLICE = 21
    SEQUENCE = 22
    DECODE_ATTENTION = 23


class EventKind(enum.IntEnum):
    LAUNCH = 0
    LAUNCH_MASSIVE = 1
    END_OF_GRAPH = 2


class Schedule(enum.IntEnum):
    DYNAMIC = 0
    STATIC = 1


class SlotSource(enum.IntEnum):
    ARG = 0
    RET = 1
    WORKSPACE = 2
    CONSTANT = 3
    SYMMETRIC = 4  # index: symmetric buffer id (jax_mpk.distributed.allocate)
    TASK_COUNTERS = 5  # the control region's task counters, zero at each launch


class ErrorCode(enum.IntEnum):
    OK = 0
    WATCHDOG_WORKER_IDLE = 1
    WATCHDOG_SCHEDULER_IDLE = 2
    WATCHDOG_WORKER_QUEUE_FULL = 3
    WATCHDOG_TASK_WAIT = 4
    SCHED_QUEUE_OVERFLOW = 5
    BAD_TASK_KIND = 6
    WATCHDOG_TASK_INPUTS = 7
    WATCHDOG_SIGNAL_WAIT = 8


HEADER = np.dtype(
    [
        ("magic", "<u4"),
        ("version", "<u4"),
        ("num_tasks", "<u4"),
        ("num_events", "<u4"),
        ("num_triggers", "<u4"),
        ("num_operands", "<u4"),
        ("num_slots", "<u4"),
        ("num_args", "<u4"),
        ("num_rets", "<u4"),
        ("num_workers", "<u4"),
        ("num_schedulers", "<u4"),
        ("worker_queue_capacity", "<u4"),
        ("sched_queue_capacity", "<u4"),
        ("num_iterations", "<u4"),
        ("start_event", "<u4"),
        ("end_event", "<u4"),
        ("watchdog_ns", "<u8"),
        ("control_bytes", "<u8"),
        ("workspace_bytes", "<u8"),
        ("constant_bytes", "<u8"),
        ("schedule", "<u4"),
        ("num_worker_tasks", "<u4"),
        ("profile_capacity", "<u4"),
        ("num_pes", "<u2"),
        ("pe", "<u2"),
        ("signal_slot", "<u4"),
        ("num_signals", "<u4"),
        ("flags", "<u4"),  # PROGRAM_* bits
        ("num_task_counters", "<u4"),
    ]
)
TASK = np.dtype(
    [
        ("kind", "<u2"),
        ("num_operands", "<u2"),
        ("first_operand", "<u4"),
        ("first_trigger", "<u4"),
        ("num_triggers", "<u2"),
        ("flags", "<u2"),
        ("dims", "<i4", (MAX_TASK_DIMS,)),
    ]
)
EVENT = np.dtype(
    [
        ("threshold", "<u4"),
        ("first_task", "<u4"),
        ("last_task", "<u4"),
        ("kind", "<u2"),
        ("scheduler", "<u2"),
    ]
)
OPERAND = np.dtype(
    [
        ("slot", "<u4"),
        ("flags", "<u4"),
        ("offset", "<u8"),
        ("iteration_stride", "<u8"),
        ("bytes", "<u8"),
    ]
)
SLOT = np.dtype([("source", "<u4"), ("index", "<u4"), ("offset", "<u8"), ("bytes", "<u8")])
TRIGGER = np.dtype("<u4")
WORKER_TASK = np.dtype([("task", "<u4"), ("wait_event", "<u4")])
PROFILE_MARKS = 4  # kProfileMarks
PROFILE_ENTRY = np.dtype([("start_ns", "<u8"), ("end_ns", "<u8"), ("task", "<u4"),
                          ("iteration", "<u4"), ("marks", "<u4", (PROFILE_MARKS,))])

assert (HEADER.itemsize, TASK.itemsize, EVENT.itemsize, OPERAND.itemsize, SLOT.itemsize) == (
    128,
    64,
    16,
    32,
    24,
)


def _align(x: int, a: int) -> int:
    return (x + a - 1) // a * a


@dataclasses.dataclass(frozen=True)
class ControlLayout:
    """Byte offsets of the workspace's control region (ControlLayout in C++)."""

    error: int
    task_counters: int
    event_counters: int
    sched_tail: int
    sched_head: int
    sched_queues: int
    worker_consumed: int
    worker_queues: int
    profile_counts: int
    profile: int
    total: int

    @classmethod
    def of(cls, num_events: int, num_workers: int, num_schedulers: int,
           worker_queue_capacity: int, sched_queue_capacity: int,
           profile_capacity: int = 0, num_task_counters: int = 0) -> ControlLayout:
        at = 0
        fields = {}
        for name, size in (
            ("error", 64),
            ("task_counters", 8 * num_task_counters),
            ("event_counters", 8 * num_events),
            ("sched_tail", 8 * num_schedulers),
            ("sched_head", 8 * num_schedulers),
            ("sched_queues", 8 * num_schedulers * sched_queue_capacity),
            ("worker_consumed", 8 * num_workers),
            ("worker_queues", 8 * num_workers * worker_queue_capacity),
            ("profile_counts", 8 * num_workers),
            ("profile", PROFILE_ENTRY.itemsize * num_workers * profile_capacity),
        ):
            fields[name] = at
            at += size
        return cls(total=_align(at, 256), **fields)


@dataclasses.dataclass
class Program:
    header: np.ndarray  # HEADER, shape ()
    tasks: np.ndarray  # TASK[num_tasks]
    events: np.ndarray  # EVENT[num_events]
    triggers: np.ndarray  # uint32[num_triggers]
    operands: np.ndarray  # OPERAND[num_operands]
    slots: np.ndarray  # SLOT[num_slots]
    worker_task_begin: np.ndarray  # uint32[num_workers + 1]
    worker_tasks: np.ndarray  # WORKER_TASK[num_worker_tasks]
    constants: np.ndarray  # uint8[constant_bytes]

    def __getattr__(self, name):
        # Header fields read as attributes: program.num_tasks, program.workspace_bytes, ...
        header = self.__dict__.get("header")
        if header is not None and name in HEADER.names:
            return header[name].item()
        raise AttributeError(name)

    def control_layout(self) -> ControlLayout:
        h = self.header
        return ControlLayout.of(
            int(h["num_events"]),
            int(h["num_workers"]),
            int(h["num_schedulers"]),
            int(h["worker_queue_capacity"]),
            int(h["sched_queue_capacity"]),
            int(h["profile_capacity"]),
            int(h["num_task_counters"]),
        )

    def to_bytes(self) -> bytes:
        parts = []
        for array in self._sections():
            raw = np.ascontiguousarray(array).tobytes()
            parts.append(raw + b"\0" * (_align(len(raw), 8) - len(raw)))
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, blob: bytes) -> Program:
        buf = memoryview(blob)
        if len(buf) < HEADER.itemsize:
            raise ValueError(f"program blob of {len(buf)} bytes is shorter than its header")
        header = np.frombuffer(buf[: HEADER.itemsize], HEADER)[0].copy()
        header = np.array(header, HEADER)
        counts = (
            (TASK, int(header["num_tasks"])),
            (EVENT, int(header["num_events"])),
            (TRIGGER, int(header["num_triggers"])),
            (OPERAND, int(header["num_operands"])),
            (SLOT, int(header["num_slots"])),
            (np.dtype("<u4"), int(header["num_workers"]) + 1),
            (WORKER_TASK, int(header["num_worker_tasks"])),
            (np.dtype(np.uint8), int(header["constant_bytes"])),
        )
        at = HEADER.itemsize
        sections = []
        for dtype, n in counts:
            size = dtype.itemsize * n
            if at + size > len(buf):
                raise ValueError("program blob is truncated")
            sections.append(np.frombuffer(buf[at : at + size], dtype).copy())
            at = _align(at + size, 8)
        return cls(header, *sections)

    def _sections(self):
        return (self.header, self.tasks, self.events, self.triggers, self.operands, self.slots,
                self.worker_task_begin, self.worker_tasks, self.constants)
